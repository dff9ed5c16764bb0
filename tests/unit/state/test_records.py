"""The task view's records: each task's state, times, error and history, in bounded memory."""

from __future__ import annotations

from typing import Any

import pytest

from celery_exporter.state import ClusterState, Settings, WorkerQueues, handlers
from celery_exporter.state.queries import TaskQuery, exception_message
from celery_exporter.state.records import MAX_HISTORY, MAX_TEXT_LENGTH, MAX_TRACEBACK_BYTES
from tests.support.clock import ManualClock
from tests.support.events import (
    PRODUCER,
    T0,
    W1,
    W2,
    failed,
    iso,
    progress,
    received,
    rejected,
    retried,
    revoked,
    sent,
    started,
    succeeded,
)


def make(**settings: Any) -> tuple[ClusterState, ManualClock]:
    clock = ManualClock(T0 + 100)
    return ClusterState(Settings(**settings), clock=clock), clock


def detail(state: ClusterState, task_id: str) -> dict[str, Any]:
    found = state.task_detail(task_id)
    assert found is not None
    return found


def ids(state: ClusterState, **query: Any) -> list[str]:
    rows, _ = state.find_tasks(TaskQuery(**query))
    return [row["id"] for row in rows]


def test_a_succeeded_task_has_every_field() -> None:
    """A task sent, received, started and succeeded shows each time, its worker and runtime."""
    state, _ = make()
    state.handle_batch(
        [
            sent("t1", name="app.add", queue="fast", at=T0, eta=iso(T0 + 5)),
            received("t1", at=T0 + 1),
            started("t1", at=T0 + 6),
            succeeded("t1", runtime=2.5, at=T0 + 8.5),
        ]
    )
    assert detail(state, "t1") == {
        "id": "t1", "name": "app.add", "state": "succeeded", "queue": "fast", "worker": W1,
        "sent": T0, "received": T0 + 1, "started": T0 + 6, "finished": T0 + 8.5,
        "runtime": 2.5, "retries": 0, "exception": None, "eta": T0 + 5, "progress": None,
        "exception_message": None, "traceback": None, "parent_id": None, "root_id": "t1",
        "retried_as": None,
        "history": [
            {"type": "task-sent", "timestamp": T0, "worker": None},
            {"type": "task-received", "timestamp": T0 + 1, "worker": W1},
            {"type": "task-started", "timestamp": T0 + 6, "worker": W1},
            {"type": "task-succeeded", "timestamp": T0 + 8.5, "worker": W1},
        ],
    }  # fmt: skip


def test_a_failed_task_keeps_its_exception_message_and_traceback() -> None:
    """task-failed gives the class, the message from the repr and the traceback; runtime from the start."""
    state, _ = make()
    state.handle_batch(
        [received("t1"), started("t1", at=T0 + 1), failed("t1", "KeyError('k1')", at=T0 + 4)]
    )
    got = detail(state, "t1")
    assert (got["state"], got["exception"], got["exception_message"], got["runtime"]) == (
        "failed", "KeyError", "k1", 3.0,
    )  # fmt: skip
    assert got["traceback"] == "Traceback (most recent call last):\n  ...\nKeyError('k1')\n"


def test_a_retried_task_counts_its_retries_and_runs_again() -> None:
    """A retry sets state retried with the error; the next run moves it on, the history keeps all."""
    state, _ = make()
    state.handle_batch(
        [
            received("t1", at=T0), started("t1", at=T0 + 1),
            sent("t1", at=T0 + 2), retried("t1", "ValueError('again')", at=T0 + 2),
        ]
    )  # fmt: skip
    got = detail(state, "t1")
    assert (got["state"], got["retries"], got["exception"]) == ("retried", 1, "ValueError")
    assert got["exception_message"] == "again"
    state.handle_batch(
        [received("t1", host=W2, at=T0 + 5, retries=1), started("t1", host=W2, at=T0 + 6)]
    )
    state.handle_batch([succeeded("t1", runtime=1.0, host=W2, at=T0 + 7)])
    got = detail(state, "t1")
    assert (got["state"], got["retries"], got["worker"]) == ("succeeded", 1, W2)
    assert [h["type"] for h in got["history"]] == [
        "task-received", "task-started", "task-sent", "task-retried", "task-received",
        "task-started", "task-succeeded",
    ]  # fmt: skip


def test_a_final_state_is_kept_against_late_events() -> None:
    """A task-sent or a second final event after the end adds history, never a new state."""
    state, _ = make()
    state.handle_batch(
        [
            received("t1"), started("t1"), succeeded("t1", runtime=1.0, at=T0 + 1),
            sent("t1", at=T0 - 1), revoked("t1", at=T0 + 2),
        ]
    )  # fmt: skip
    got = detail(state, "t1")
    assert (got["state"], got["sent"], got["finished"]) == ("succeeded", T0 - 1, T0 + 1)
    assert len(got["history"]) == 5


def test_rejected_with_requeue_stays_in_flight() -> None:
    """A rejected task going back to its queue is not finished; one dropped is."""
    state, _ = make()
    state.handle_batch([received("t1"), rejected("t1", requeue=True)])
    state.handle_batch([received("t2"), rejected("t2", requeue=False, at=T0 + 3)])
    assert (detail(state, "t1")["state"], detail(state, "t1")["finished"]) == ("rejected", None)
    assert (detail(state, "t2")["state"], detail(state, "t2")["finished"]) == ("rejected", T0 + 3)
    assert list(state.tasks.tasks) == ["t1"]


def test_progress_shows_the_latest_report() -> None:
    """task-progress events replace the progress; bad fields become null; no history entry."""
    state, clock = make()
    state.handle_batch([received("t1"), started("t1"), progress("t1", 1, 10, "start")])
    clock.advance(2)
    state.handle_batch([progress("t1", current=3, total="ten", message=["x"])])
    got = detail(state, "t1")
    assert got["progress"] == {
        "current": 3.0, "total": None, "message": None, "updated": T0 + 102,
    }  # fmt: skip
    assert [h["type"] for h in got["history"]] == ["task-received", "task-started"]
    state.handle_batch([progress("t1", 4, 10, "m" * (MAX_TEXT_LENGTH + 10))])
    assert detail(state, "t1")["progress"]["message"] == "m" * MAX_TEXT_LENGTH


def test_arguments_only_with_the_flag() -> None:
    """args and kwargs appear only with --web.show-task-args."""
    state, _ = make()
    state.handle_batch([received("t1")])
    assert "args" not in detail(state, "t1")
    assert state.tasks.find("t1").detail is None  # type: ignore[union-attr]
    state, _ = make(web_show_task_args=True)
    state.handle_batch([received("t1")])
    got = detail(state, "t1")
    assert (got["args"], got["kwargs"]) == ("(1, 2)", "{}")
    assert (state.find_tasks(TaskQuery())[0][0]["args"]) == "(1, 2)"


def test_off_keeps_no_records() -> None:
    """With --no-web.task-api the state keeps no records and answers nothing."""
    state, _ = make(web_task_api=False)
    state.handle_batch([received("t1"), failed("t1", "KeyError('k')")])
    assert state.records is None
    assert state.find_tasks(TaskQuery()) == ([], 0)
    assert state.task_detail("t1") is None
    assert state.failures(3600) == []


def test_queue_comes_from_the_workers_only_queue() -> None:
    """Without a queue in the events, a worker consuming one queue names it, else the default."""
    queues = WorkerQueues()
    queues.replace({W1: ("images",), W2: ("a", "b")})
    state = ClusterState(Settings(), clock=ManualClock(T0), worker_queues=queues)
    state.handle_batch([received("t1", host=W1), received("t2", host=W2)])
    assert (detail(state, "t1")["queue"], detail(state, "t2")["queue"]) == ("images", "celery")


def test_in_flight_records_are_capped_oldest_first() -> None:
    """Past --max-tracked-tasks the oldest in-flight record goes; finished ones are capped apart."""
    state, _ = make(max_tracked_tasks=2, max_finished_tasks=2)
    state.handle_batch([received(f"r{i}") for i in range(3)])
    state.handle_batch([failed(f"f{i}", "KeyError('k')") for i in range(3)])
    assert (list(state.tasks.tasks), list(state.tasks.finished)) == (["r1", "r2"], ["f1", "f2"])
    assert state.tasks.evicted == 1
    assert state.task_detail("r0") is None


def test_long_texts_are_capped() -> None:
    """Tracebacks keep their last 16 KiB, exception reprs and history their caps."""
    state, _ = make()
    tb = "x" * 40_000 + "\nKeyError('end')\n"
    state.handle_batch([received("t1"), failed("t1", "KeyError('" + "k" * 9000 + "')", tb)])
    got = detail(state, "t1")
    assert len(got["traceback"].encode()) == MAX_TRACEBACK_BYTES
    assert got["traceback"].startswith("[... cut ...]\nxxx")
    assert got["traceback"].endswith("\nKeyError('end')\n")
    assert got["exception_message"] == "KeyError('" + "k" * (MAX_TEXT_LENGTH - 10)
    state.handle_batch([received("t2")] + [rejected("t2", requeue=True)] * (MAX_HISTORY + 5))
    history = detail(state, "t2")["history"]
    assert len(history) == MAX_HISTORY
    assert history[0]["type"] == "task-received"


@pytest.mark.parametrize(
    ("text", "exception", "message"),
    [
        ("ValueError('bad')", "ValueError", "bad"),
        ('KeyError("it\'s")', "KeyError", "it's"),
        ("Exception('a', 1)", "Exception", "'a', 1"),
        ("RuntimeError()", "RuntimeError", ""),
        ("reject requeue=False: no", "Reject", "reject requeue=False: no"),
        ("ValueError('x' + __import__('os').system('true'))", "ValueError",
         "'x' + __import__('os').system('true')"),
    ],
)  # fmt: skip
def test_exception_message_from_the_repr(text: str, exception: str, message: str) -> None:
    """The message is the repr's one string argument, else the text inside, else the repr."""
    assert exception_message(text, exception) == message


def test_every_filter() -> None:
    """state, name, queue, worker and older_than select tasks; newest activity first; total."""
    state, clock = make()
    clock.now = T0
    state.handle_batch([sent("a", name="app.a", queue="q1"), received("a", "app.a", W1)])
    clock.now = T0 + 10
    state.handle_batch([sent("b", name="app.b", queue="q2"), received("b", "app.b", W2)])
    state.handle_batch([started("b", host=W2, at=T0 + 10)])
    clock.now = T0 + 20
    state.handle_batch([received("c", name="app.a", host=W2, at=T0 + 20)])
    state.handle_batch([failed("c", "KeyError('k')", host=W2, at=T0 + 21)])
    clock.now = T0 + 30
    assert ids(state) == ["c", "b", "a"]
    assert ids(state, states=frozenset({"received", "failed"})) == ["c", "a"]
    assert ids(state, name="app.a") == ["c", "a"]
    assert ids(state, queue="q2") == ["b"]
    assert ids(state, worker=W2) == ["c", "b"]
    assert ids(state, older_than=25) == ["a"]
    assert ids(state, older_than=5) == ["c", "b", "a"]
    assert ids(state, older_than=15) == ["b", "a"]
    rows, total = state.find_tasks(TaskQuery(limit=1))
    assert ([r["id"] for r in rows], total) == (["c"], 3)
    assert ids(state, name="nope") == []


def test_failures_are_grouped_by_name_and_exception() -> None:
    """Failures count per (name, exception) within the window, the largest count first."""
    state, clock = make()
    clock.now = T0
    state.handle_batch(
        [received(f"old{i}", name="app.x", at=T0) for i in range(3)]
        + [failed(f"old{i}", "KeyError('k')", at=T0) for i in range(3)]
    )
    clock.now = T0 + 7200
    batch: list[dict[str, Any]] = []
    for i in range(2):
        batch += [received(f"k{i}", name="app.x"), failed(f"k{i}", f"KeyError('k{i}')")]
    batch += [received("v", name="app.y"), failed("v", "ValueError('v')", at=T0 + 7199)]
    batch += [failed("lost", "OSError('o')")]
    state.handle_batch(batch)
    assert state.failures(3600) == [
        {"name": "app.x", "exception": "KeyError", "count": 2, "last_seen": T0,
         "last_task_id": "k1", "last_message": "k1"},
        {"name": "app.y", "exception": "ValueError", "count": 1, "last_seen": T0 + 7199,
         "last_task_id": "v", "last_message": "v"},
        {"name": "unknown", "exception": "OSError", "count": 1, "last_seen": T0,
         "last_task_id": "lost", "last_message": "o"},
    ]  # fmt: skip
    assert [row["count"] for row in state.failures(86_400)] == [5, 1, 1]


def test_worker_rows() -> None:
    """Each worker with liveness, heartbeat figures and what events say it runs."""
    state, clock = make()
    clock.now = T0
    state.handle_batch(
        [
            {"type": "worker-heartbeat", "hostname": W1, "freq": 2.0, "active": 1,
             "processed": 7, "loadavg": [0.5, 0.25, 0.1], "sw_ver": "5.7.0",
             "timestamp": T0},
            received("t1"), started("t1"), received("t2"),
        ]
    )  # fmt: skip
    assert state.worker_rows() == [
        {"hostname": W1, "up": True, "last_heartbeat": T0, "active": 1, "reserved": 1,
         "processed": 7, "pool_busy": 1, "load": [0.5, 0.25, 0.1], "sw_ver": "5.7.0"},
    ]  # fmt: skip


def test_a_bug_in_the_view_is_an_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception in the view's part is counted as task_view; the series still count."""
    state, _ = make()
    assert state.records is not None

    def boom(*args: Any) -> None:
        raise RuntimeError("bug")

    # task-received's part, inline in its series handler, for a call with a parent.
    monkeypatch.setattr(handlers, "call_detail", boom)
    monkeypatch.setattr(state.records, "_error", boom)  # task-failed's, through its update
    child = [{**received(uuid), "parent_id": "p1"} for uuid in ("t1", "t2")]
    state.handle_batch([*child, failed("t2", "KeyError('k')")])
    assert state.errors.counts() == {"task_view": 3}
    snap = state.snapshot()
    assert snap.counters["received"] == {("app.add", "celery"): 2}
    assert snap.counters["failed"] == {("app.add", "celery", "KeyError"): 1}
    assert snap.malformed == {}


def test_producer_hostname_is_not_the_worker() -> None:
    """task-sent's hostname is the producer's and never shows as the task's worker."""
    state, _ = make()
    state.handle_batch([sent("t1")])
    got = detail(state, "t1")
    assert (got["worker"], got["state"]) == (None, "sent")
    assert PRODUCER not in str(got)


def test_tasks_are_listed_by_their_latest_events_time() -> None:
    """The task whose latest event happened last comes first, whatever the batches."""
    state, _ = make()
    state.handle_batch(
        [received("a", at=T0), received("b", at=T0 + 1), failed("b", "KeyError('k')", at=T0 + 2)]
    )
    state.handle_batch(
        [
            received("c", at=T0 + 3), failed("c", "KeyError('k')", at=T0 + 4),
            failed("a", "KeyError('k')", at=T0 + 5),
        ]
    )  # fmt: skip
    assert ids(state) == ["a", "c", "b"]
    assert ids(state, states=frozenset({"failed"})) == ["a", "c", "b"]


def test_failures_of_one_line_of_code_share_their_frames() -> None:
    """Tracebacks that differ only in their last line keep one copy of the frames, and read whole."""
    state, _ = make()
    frames = "Traceback (most recent call last):\n" + '  File "app.py", line 9, in f\n' * 50
    state.handle_batch(
        [failed("t1", "KeyError('a')", frames + "KeyError: 'a'\n"),
         failed("t2", "KeyError('b')", frames + "KeyError: 'b'\n")]
    )  # fmt: skip
    assert detail(state, "t2")["traceback"] == frames + "KeyError: 'b'\n"
    one, two = state.tasks.find("t1"), state.tasks.find("t2")
    assert one is not None and two is not None
    assert one.detail.traceback[0] is two.detail.traceback[0]
    assert (one.detail.traceback[1], two.detail.traceback[1]) == (
        "KeyError: 'a'\n",
        "KeyError: 'b'\n",
    )
