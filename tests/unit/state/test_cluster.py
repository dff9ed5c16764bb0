"""The event state machine, driven by scripted Celery 5.7 event sequences and a hand-run clock."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from celery_exporter.events.envelope import decode_envelope
from celery_exporter.state import ClusterState, Settings, Snapshot, WorkerQueues
from celery_exporter.state.handlers import TaskHandlers
from tests.support.clock import ManualClock
from tests.support.events import (
    HARD_LIMIT_TRACEBACK,
    PRODUCER,
    T0,
    W1,
    W2,
    encode_envelope,
    failed,
    heartbeat,
    iso,
    received,
    rejected,
    retried,
    revoked,
    sent,
    started,
    succeeded,
    worker_event,
)
from tests.support.logs import captured_logs

ADD = ("app.add", "celery")


def make(**settings: Any) -> tuple[ClusterState, ManualClock]:
    clock = ManualClock(T0)
    return ClusterState(Settings(**settings), clock=clock), clock


def counts(snap: Snapshot, kind: str) -> dict[tuple[str, ...], int]:
    return snap.counters[kind]


def busy_reserved(snap: Snapshot, host: str) -> tuple[int, int]:
    worker = snap.workers[host][1]
    return worker.busy, worker.reserved


# -- task lifecycles ---------------------------------------------------------------------------


def test_full_lifecycle_counts_each_step_once() -> None:
    """sent, received, started, succeeded (as task.multi envelopes) count one of each and untrack."""
    state, _ = make()
    producer = encode_envelope(sent("u1"), routing_key="task.sent", hostname=PRODUCER)
    worker = encode_envelope(
        [received("u1", at=T0 + 1), started("u1", at=T0 + 2), succeeded("u1", 0.4, at=T0 + 2.4)],
        routing_key="task.multi",
        hostname=W1,
    )
    state.handle_batch(decode_envelope(producer))
    state.handle_batch(decode_envelope(worker))
    snap = state.snapshot()
    for kind in ("sent", "received", "started", "succeeded"):
        assert counts(snap, kind) == {ADD: 1}, kind
    for kind in ("failed", "retried", "revoked", "rejected"):
        assert counts(snap, kind) == {}, kind
    assert snap.tracked_tasks == 0
    assert snap.events == {
        "task-sent": 1,
        "task-received": 1,
        "task-started": 1,
        "task-succeeded": 1,
    }
    assert busy_reserved(snap, W1) == (0, 0)
    assert snap.active == {ADD: (0, 0.0)}
    assert list(snap.workers) == [W1]
    assert snap.last_event == T0


def test_name_and_queue_come_from_task_sent() -> None:
    """With a task-sent, worker-side events count under its name and queue."""
    state, _ = make(default_queue="work")
    state.handle(sent("u1", name="app.mail", queue="priority"))
    state.handle_batch([received("u1", name="app.mail"), started("u1"), succeeded("u1", 0.1)])
    snap = state.snapshot()
    key = ("app.mail", "priority")
    for kind in ("sent", "received", "started", "succeeded"):
        assert counts(snap, kind) == {key: 1}, kind


def test_sent_without_queue_uses_routing_key() -> None:
    """A task-sent without queue falls back to its routing_key."""
    state, _ = make()
    event = sent("u1", queue=None)
    event["routing_key"] = "emails"
    state.handle(event)
    assert counts(state.snapshot(), "sent") == {("app.add", "emails"): 1}


def test_queue_is_default_queue_without_task_sent() -> None:
    """Without a task-sent, worker-side events count under --default-queue."""
    state, _ = make(default_queue="work")
    state.handle_batch([received("u1", name="app.mail"), started("u1"), succeeded("u1", 0.1)])
    snap = state.snapshot()
    key = ("app.mail", "work")
    for kind in ("received", "started", "succeeded"):
        assert counts(snap, kind) == {key: 1}, kind
    assert counts(snap, "sent") == {}


def test_failed_counted_by_exception_class() -> None:
    """task-failed counts under the exception class named by the repr."""
    state, _ = make()
    state.handle_batch([received("u1"), started("u1"), failed("u1", "ValueError('bad')")])
    state.handle_batch([received("u2"), started("u2"), failed("u2", "KeyError('k')")])
    state.handle_batch([received("u3"), started("u3"), failed("u3", "ValueError('worse')")])
    snap = state.snapshot()
    assert counts(snap, "failed") == {(*ADD, "KeyError"): 1, (*ADD, "ValueError"): 2}
    assert snap.timeouts == {}
    assert snap.failures_per_minute == {ADD: 3}
    assert snap.tracked_tasks == 0


def test_hard_time_limit_double_failure_counted_once() -> None:
    """A hard limit's two task-failed count one failure, one hard timeout and one duplicate."""
    state, clock = make()
    state.handle_batch([received("u1", name="app.slow"), started("u1", at=T0)])
    clock.advance(1)
    twice = [
        failed("u1", "ExceptionWithTraceback()", HARD_LIMIT_TRACEBACK, at=T0 + 1),
        failed("u1", "ExceptionWithTraceback()", HARD_LIMIT_TRACEBACK, at=T0 + 1.01),
    ]
    state.handle_batch(twice)
    snap = state.snapshot()
    key = ("app.slow", "celery")
    assert counts(snap, "failed") == {(*key, "TimeLimitExceeded"): 1}
    assert snap.timeouts == {(*key, "hard"): 1}
    assert snap.duplicates == 1
    assert snap.events["task-failed"] == 2
    assert snap.failures_per_minute == {key: 1}
    assert snap.runtime[(*key, "failed")].total == 1.0
    assert sum(snap.runtime[(*key, "failed")].counts) == 1
    assert busy_reserved(snap, W1) == (0, 0)


def test_soft_time_limit_counts_soft_timeout() -> None:
    """SoftTimeLimitExceeded() counts a failure and a soft timeout."""
    state, _ = make()
    state.handle_batch([received("u1"), started("u1"), failed("u1", "SoftTimeLimitExceeded()")])
    snap = state.snapshot()
    assert counts(snap, "failed") == {(*ADD, "SoftTimeLimitExceeded"): 1}
    assert snap.timeouts == {(*ADD, "soft"): 1}
    assert snap.duplicates == 0


def test_retry_then_success() -> None:
    """A retry counts retried{exception}, and the rerun counts a second receive and start."""
    state, _ = make()
    state.handle(sent("u1"))
    state.handle_batch([received("u1", at=T0 + 1), started("u1", at=T0 + 2)])
    state.handle(retried("u1", "ConnectionError('refused')", at=T0 + 3))
    mid = state.snapshot()
    assert mid.tracked_tasks == 1
    assert busy_reserved(mid, W1) == (0, 0)
    assert mid.active == {ADD: (0, 0.0)}
    state.handle_batch(
        [
            received("u1", host=W2, at=T0 + 10, retries=1, eta=iso(T0 + 13)),
            started("u1", host=W2, at=T0 + 13),
            succeeded("u1", 0.2, host=W2, at=T0 + 13.2),
        ]
    )
    snap = state.snapshot()
    assert counts(snap, "retried") == {(*ADD, "ConnectionError"): 1}
    assert counts(snap, "succeeded") == {ADD: 1}
    assert counts(snap, "started") == {ADD: 2}
    assert counts(snap, "received") == {ADD: 2}
    assert counts(snap, "sent") == {ADD: 1}
    assert counts(snap, "failed") == {}
    assert snap.tracked_tasks == 0
    # the first run waited from task-sent; the rerun has no task-sent of its own
    assert snap.queue_wait[ADD].total == 2.0
    assert sum(snap.queue_wait[ADD].counts) == 1
    # prefetch waits: 1 s the first time, 0 s the second (started at its ETA)
    assert snap.prefetch_wait[ADD].total == 1.0
    assert sum(snap.prefetch_wait[ADD].counts) == 2


def test_reject_after_failure_counted_in_both() -> None:
    """Reject(requeue=False) counts the task-failed and the task-rejected, with no duplicate."""
    state, _ = make()
    state.handle_batch(
        [
            received("u1"),
            started("u1"),
            failed("u1", "Reject('bad input', False)"),
            rejected("u1", requeue=False),
        ]
    )
    snap = state.snapshot()
    assert counts(snap, "failed") == {(*ADD, "Reject"): 1}
    assert counts(snap, "rejected") == {ADD: 1}
    assert snap.duplicates == 0
    assert snap.tracked_tasks == 0


def test_repeated_rejection_is_a_duplicate() -> None:
    """A second task-rejected for a task already rejected counts as a duplicate only."""
    state, _ = make()
    state.handle_batch([received("u1"), rejected("u1", requeue=False)])
    state.handle(rejected("u1", requeue=False))
    snap = state.snapshot()
    assert counts(snap, "rejected") == {ADD: 1}
    assert snap.duplicates == 1


def test_requeue_rejection_leaves_task_waiting() -> None:
    """Reject(requeue=True) counts a rejection and keeps the task tracked, off the worker."""
    state, _ = make()
    state.handle_batch([received("u1"), started("u1"), rejected("u1", requeue=True)])
    snap = state.snapshot()
    assert counts(snap, "rejected") == {ADD: 1}
    assert snap.tracked_tasks == 1
    assert busy_reserved(snap, W1) == (0, 0)
    assert snap.active == {ADD: (0, 0.0)}
    state.handle_batch([received("u1", host=W2), started("u1", host=W2), succeeded("u1", 0.1, W2)])
    snap = state.snapshot()
    assert counts(snap, "started") == {ADD: 2}
    assert counts(snap, "succeeded") == {ADD: 1}
    assert snap.tracked_tasks == 0
    assert snap.duplicates == 0


def test_only_boolean_requeue_requeues() -> None:
    """A requeue field that is not the JSON boolean true retires the task like requeue=False."""
    state, _ = make()
    event = rejected("u1", requeue=False)
    event["requeue"] = "true"
    state.handle_batch([received("u1"), started("u1"), event])
    snap = state.snapshot()
    assert counts(snap, "rejected") == {ADD: 1}
    assert snap.tracked_tasks == 0


def test_revoked_running_task() -> None:
    """Revoking a started task counts it once and frees the worker's pool slot."""
    state, _ = make()
    state.handle_batch([received("u1"), started("u1")])
    assert busy_reserved(state.snapshot(), W1) == (1, 0)
    state.handle(revoked("u1"))
    snap = state.snapshot()
    assert counts(snap, "revoked") == {ADD: 1}
    assert busy_reserved(snap, W1) == (0, 0)
    assert snap.active == {ADD: (0, 0.0)}
    assert snap.tracked_tasks == 0


def test_revoked_before_receive_keeps_sent_labels() -> None:
    """A task revoked before any worker received it counts under its task-sent labels."""
    state, _ = make()
    state.handle(sent("u1", name="app.mail", queue="priority"))
    state.handle(revoked("u1"))
    assert counts(state.snapshot(), "revoked") == {("app.mail", "priority"): 1}


# -- histograms --------------------------------------------------------------------------------


def test_runtime_bucket_placement() -> None:
    """Runtimes land in the first bucket whose bound is >= the value (0.3 -> le=0.5)."""
    state, _ = make(runtime_buckets=(0.1, 0.5, 1.0))
    for uuid, runtime in (("a", 0.3), ("b", 0.5), ("c", 0.05), ("d", 7.0)):
        state.handle_batch([received(uuid), started(uuid), succeeded(uuid, runtime)])
    hist = state.snapshot().runtime[(*ADD, "succeeded")]
    assert hist.bounds == (0.1, 0.5, 1.0)
    assert hist.counts == [1, 2, 0, 1]
    assert hist.total == pytest.approx(7.85)


def test_runtime_with_default_buckets() -> None:
    """With the default buckets a runtime of 0.3 is counted in the le=0.5 bucket only."""
    state, _ = make()
    state.handle_batch([received("u1"), started("u1"), succeeded("u1", 0.3)])
    hist = state.snapshot().runtime[(*ADD, "succeeded")]
    index = hist.bounds.index(0.5)
    assert hist.counts[index] == 1
    assert sum(hist.counts) == 1
    assert hist.total == 0.3


def test_failed_runtime_from_started_timestamp() -> None:
    """A failure's runtime is its timestamp minus the task-started timestamp."""
    state, _ = make(runtime_buckets=(1.0, 5.0))
    state.handle_batch(
        [received("u1"), started("u1", at=T0 + 10), failed("u1", "ValueError('x')", at=T0 + 12.5)]
    )
    hist = state.snapshot().runtime[(*ADD, "failed")]
    assert hist.counts == [0, 1, 0]
    assert hist.total == 2.5


def test_failed_without_start_has_no_runtime() -> None:
    """A task that failed without a task-started observes no runtime."""
    state, _ = make()
    state.handle_batch([received("u1"), failed("u1", "ValueError('x')")])
    snap = state.snapshot()
    assert snap.runtime == {}
    assert counts(snap, "failed") == {(*ADD, "ValueError"): 1}


@pytest.mark.parametrize(
    "runtime",
    [None, -1, float("nan"), float("inf"), "0.5", True, pytest.param(10**400, id="10**400")],
)
def test_succeeded_runtime_falls_back_to_timestamps(runtime: Any) -> None:
    """An unusable runtime field is replaced by succeeded minus started timestamps."""
    state, _ = make(runtime_buckets=(1.0, 5.0))
    state.handle_batch(
        [received("u1"), started("u1", at=T0 + 1), succeeded("u1", runtime, at=T0 + 4)]
    )
    hist = state.snapshot().runtime[(*ADD, "succeeded")]
    assert hist.counts == [0, 1, 0]
    assert hist.total == 3.0


def test_queue_wait_from_sent_and_prefetch_wait_from_received() -> None:
    """Queue wait runs from task-sent and prefetch wait from task-received, to task-started."""
    state, _ = make(wait_buckets=(1.0, 5.0))
    state.handle(sent("u1", at=T0))
    state.handle_batch([received("u1", at=T0 + 4), started("u1", at=T0 + 4.5)])
    snap = state.snapshot()
    assert snap.queue_wait[ADD].counts == [0, 1, 0]
    assert snap.queue_wait[ADD].total == 4.5
    assert snap.prefetch_wait[ADD].counts == [1, 0, 0]
    assert snap.prefetch_wait[ADD].total == 0.5


def test_waits_run_from_eta_when_later() -> None:
    """With an ETA later than sent and received, both waits run from the ETA."""
    state, _ = make(wait_buckets=(1.0, 5.0))
    eta = iso(T0 + 60)
    state.handle(sent("u1", at=T0, eta=eta))
    state.handle_batch([received("u1", at=T0 + 1, eta=eta), started("u1", at=T0 + 62)])
    snap = state.snapshot()
    assert snap.queue_wait[ADD].total == 2.0
    assert snap.prefetch_wait[ADD].total == 2.0


def test_eta_earlier_than_sent_is_ignored() -> None:
    """An ETA already past when the task was sent does not shorten the queue wait."""
    state, _ = make()
    state.handle(sent("u1", at=T0, eta=iso(T0 - 100)))
    state.handle_batch([received("u1", at=T0 + 1), started("u1", at=T0 + 3)])
    snap = state.snapshot()
    assert snap.queue_wait[ADD].total == 3.0
    assert snap.prefetch_wait[ADD].total == 2.0


def test_start_before_eta_counts_zero_wait() -> None:
    """A task started before its ETA (clock skew) observes a wait of 0, never negative."""
    state, _ = make(wait_buckets=(1.0,))
    state.handle(sent("u1", at=T0, eta=iso(T0 + 10)))
    state.handle_batch([received("u1", at=T0), started("u1", at=T0 + 5)])
    snap = state.snapshot()
    assert snap.queue_wait[ADD].counts == [1, 0]
    assert snap.queue_wait[ADD].total == 0.0


def test_started_without_sent_has_no_queue_wait() -> None:
    """Without a task-sent, a start observes a prefetch wait but no queue wait."""
    state, _ = make()
    state.handle_batch([received("u1", at=T0), started("u1", at=T0 + 1)])
    snap = state.snapshot()
    assert snap.queue_wait == {}
    assert snap.prefetch_wait[ADD].total == 1.0


# -- failures per minute and active tasks ----------------------------------------------------


def test_failures_per_minute_rolls_off_after_60_seconds() -> None:
    """A failure counts in failures_per_minute for 60 seconds and then drops out."""
    state, clock = make()
    state.handle_batch([received("u1"), failed("u1", "ValueError('x')")])
    clock.advance(30)
    state.handle_batch([received("u2"), failed("u2", "ValueError('x')")])
    assert state.snapshot().failures_per_minute == {ADD: 2}
    clock.now = T0 + 59
    assert state.snapshot().failures_per_minute == {ADD: 2}
    clock.now = T0 + 60
    assert state.snapshot().failures_per_minute == {ADD: 1}
    clock.now = T0 + 90
    assert state.snapshot().failures_per_minute == {ADD: 0}


def test_tasks_active_and_oldest_start() -> None:
    """tasks_active counts started tasks and reports the oldest start timestamp."""
    state, _ = make()
    state.handle_batch([received("a"), started("a", at=T0 + 5)])
    state.handle_batch([received("b", host=W2), started("b", host=W2, at=T0 + 2)])
    assert state.snapshot().active == {ADD: (2, T0 + 2)}
    state.handle(succeeded("b", 1.0, host=W2))
    assert state.snapshot().active == {ADD: (1, T0 + 5)}
    state.handle(succeeded("a", 1.0))
    assert state.snapshot().active == {ADD: (0, 0.0)}


def test_pool_busy_and_reserved_per_worker() -> None:
    """Received tasks are reserved and started tasks busy, per worker, until they finish."""
    state, _ = make()
    state.handle_batch([received("a"), received("b"), received("c"), started("a")])
    state.handle_batch([received("d", host=W2)])
    snap = state.snapshot()
    assert busy_reserved(snap, W1) == (1, 2)
    assert busy_reserved(snap, W2) == (0, 1)
    state.handle_batch([succeeded("a", 0.1), started("b")])
    snap = state.snapshot()
    assert busy_reserved(snap, W1) == (1, 1)
    assert snap.tracked_tasks == 3


def test_task_sent_after_task_started_does_not_leak_active() -> None:
    """A task-sent that arrives after task-started still lets the task leave tasks_active."""
    state, _ = make(worker_label=True)
    state.handle_batch([received("u1"), started("u1", at=T0 + 1)])
    state.handle(sent("u1", queue="priority"))
    state.handle(succeeded("u1", 0.1))
    snap = state.snapshot()
    assert snap.active == {(*ADD, W1): (0, 0.0)}
    assert counts(snap, "sent") == {("app.add", "priority", ""): 1}
    assert counts(snap, "succeeded") == {("app.add", "priority", W1): 1}
    assert busy_reserved(snap, W1) == (0, 0)


# -- workers -------------------------------------------------------------------------------------


def up(state: ClusterState, host: str = W1) -> bool:
    return state.snapshot().workers[host][0]


def test_heartbeat_fields() -> None:
    """A heartbeat records freq, active, processed, loadavg and software of the worker."""
    state, _ = make()
    state.handle(heartbeat(freq=5.0, active=3, processed=120))
    worker = state.snapshot().workers[W1][1]
    assert (worker.freq, worker.active, worker.processed) == (5.0, 3, 120)
    assert worker.loadavg == (0.5, 0.25, 0.1)
    assert (worker.sw_ident, worker.sw_ver, worker.sw_sys) == ("py-celery", "5.7.0", "Linux")
    assert worker.last_heartbeat == T0


def test_worker_down_after_three_heartbeat_intervals() -> None:
    """A worker is up for 3x its heartbeat freq after its last event, then down."""
    state, clock = make()
    state.handle(heartbeat(freq=5.0))
    clock.now = T0 + 15
    assert up(state) is True
    clock.now = T0 + 15.01
    assert up(state) is False
    state.handle(heartbeat(freq=5.0))
    assert up(state) is True


def test_task_events_keep_worker_up() -> None:
    """Any event from the worker, not just heartbeats, counts as a sign of life."""
    state, clock = make()
    state.handle(heartbeat(freq=2.0))
    clock.now = T0 + 5
    state.handle(received("u1"))
    clock.now = T0 + 11
    assert up(state) is True
    clock.now = T0 + 11.5
    assert up(state) is False


def test_custom_worker_timeout() -> None:
    """--worker-timeout replaces 3x freq as the silence after which a worker is down."""
    state, clock = make(worker_timeout=30.0)
    state.handle(heartbeat(freq=2.0))
    clock.now = T0 + 30
    assert up(state) is True
    clock.now = T0 + 30.5
    assert up(state) is False


def test_timed_out_worker_keeps_its_task_counts() -> None:
    """A worker down by timeout is reported down but keeps its busy count until it returns."""
    state, clock = make()
    state.handle_batch([heartbeat(), received("u1"), started("u1")])
    clock.now = T0 + 7
    up_flag, worker = state.snapshot().workers[W1]
    assert up_flag is False
    assert worker.busy == 1


def test_worker_offline() -> None:
    """worker-offline marks the worker down at once and takes its tasks off the gauges."""
    state, _ = make()
    state.handle_batch([heartbeat(), received("u1"), received("u2"), started("u1")])
    state.handle(worker_event("offline"))
    snap = state.snapshot()
    assert snap.workers[W1][0] is False
    assert busy_reserved(snap, W1) == (0, 0)
    assert snap.tracked_tasks == 2
    assert snap.active == {ADD: (0, 0.0)}


def test_worker_back_online() -> None:
    """A worker-online after worker-offline makes the worker up again."""
    state, clock = make()
    state.handle(worker_event("offline"))
    assert up(state) is False
    clock.advance(100)
    state.handle(worker_event("online"))
    assert up(state) is True


def test_worker_online_releases_tasks_of_previous_run() -> None:
    """A restarted worker (worker-online) no longer counts the tasks its previous run held."""
    state, _ = make()
    state.handle_batch([worker_event("online"), received("u1"), started("u1")])
    state.handle(worker_event("online"))
    snap = state.snapshot()
    assert busy_reserved(snap, W1) == (0, 0)
    assert snap.active == {ADD: (0, 0.0)}
    assert snap.tracked_tasks == 1


def test_worker_purged_after_worker_purge_after() -> None:
    """A down worker disappears from the snapshot once down for worker_purge_after."""
    state, clock = make(worker_purge_after=100.0, max_workers=1)
    state.handle(heartbeat())
    clock.now = T0 + 99.9
    assert state.purge() == []
    assert list(state.snapshot().workers) == [W1]
    clock.now = T0 + 100
    assert list(state.snapshot().workers) == [W1]  # a snapshot never purges
    assert state.purge() == [W1]
    assert state.snapshot().workers == {}
    assert state.workers.workers == {}
    # its hostname slot is free again
    state.handle(heartbeat(W2))
    assert list(state.snapshot().workers) == [W2]


def test_offline_worker_purged_from_offline_time() -> None:
    """After worker-offline, the purge delay runs from the offline event."""
    state, clock = make(worker_purge_after=100.0)
    state.handle(heartbeat())
    clock.now = T0 + 50
    state.handle(worker_event("offline"))
    clock.now = T0 + 149
    assert state.purge() == []
    clock.now = T0 + 150
    assert state.purge() == [W1]
    assert state.snapshot().workers == {}


def test_recovered_worker_is_not_purged_for_an_old_gap() -> None:
    """A worker that was briefly silent long ago is not purged on its next brief silence."""
    state, clock = make(worker_purge_after=100.0)
    state.handle(heartbeat())
    clock.now = T0 + 10
    assert up(state) is False
    assert state.purge() == []
    for second in range(11, 500, 2):
        clock.now = T0 + second
        state.handle(heartbeat())
    clock.now += 7
    assert state.purge() == []
    snap = state.snapshot()
    assert list(snap.workers) == [W1]
    assert snap.workers[W1][0] is False


# -- bounds ------------------------------------------------------------------------------------


def test_max_tracked_tasks_evicts_oldest() -> None:
    """Past max_tracked_tasks the oldest task is evicted, counted, and its reservation freed."""
    state, _ = make(max_tracked_tasks=2)
    state.handle_batch([received("a"), received("b")])
    state.handle(received("c"))
    snap = state.snapshot()
    assert snap.tracked_tasks == 2
    assert snap.tasks_evicted == 1
    assert set(state.tasks.tasks) == {"b", "c"}
    assert busy_reserved(snap, W1) == (0, 2)


def test_task_name_cap() -> None:
    """Past max_task_names, new task names count as 'other' and as name overflow."""
    state, _ = make(max_task_names=2)
    for uuid, name in (("a", "t.one"), ("b", "t.two"), ("c", "t.three"), ("d", "t.four")):
        state.handle(received(uuid, name=name))
    snap = state.snapshot()
    assert counts(snap, "received") == {
        ("t.one", "celery"): 1,
        ("t.two", "celery"): 1,
        ("other", "celery"): 2,
    }
    assert snap.overflow == {"name": 2, "exception": 0, "queue_name": 0, "hostname": 0}


def test_exception_cap() -> None:
    """Past max_exceptions, new exception classes count as 'other'."""
    state, _ = make(max_exceptions=1)
    state.handle_batch([received("a"), failed("a", "ValueError('x')")])
    state.handle_batch([received("b"), failed("b", "KeyError('x')")])
    state.handle_batch([received("c"), retried("c", "OSError('x')")])
    snap = state.snapshot()
    assert counts(snap, "failed") == {(*ADD, "ValueError"): 1, (*ADD, "other"): 1}
    assert counts(snap, "retried") == {(*ADD, "other"): 1}
    assert snap.overflow["exception"] == 2


def test_queue_cap() -> None:
    """Past max_queues, new queues count as 'other'."""
    state, _ = make(max_queues=1)
    state.handle(sent("a", queue="q1"))
    state.handle(sent("b", queue="q2"))
    snap = state.snapshot()
    assert counts(snap, "sent") == {("app.add", "q1"): 1, ("app.add", "other"): 1}
    assert snap.overflow["queue_name"] == 1


def test_hostname_cap() -> None:
    """Past max_workers, new hostnames become the single worker 'other'."""
    state, _ = make(max_workers=1, worker_label=True)
    state.handle(heartbeat(W1))
    state.handle_batch([received("a", host=W2), heartbeat("celery@w3")])
    snap = state.snapshot()
    assert sorted(snap.workers) == [W1, "other"]
    assert counts(snap, "received") == {(*ADD, "other"): 1}
    assert snap.overflow["hostname"] == 2


def test_worker_label_adds_hostname() -> None:
    """With worker_label, task series carry the worker's hostname ('' for task-sent)."""
    state, _ = make(worker_label=True)
    state.handle(sent("u1"))
    state.handle_batch([received("u1"), started("u1"), failed("u1", "ValueError('x')")])
    snap = state.snapshot()
    assert snap.task_labels == ("name", "queue_name", "hostname")
    assert counts(snap, "sent") == {(*ADD, ""): 1}
    assert counts(snap, "started") == {(*ADD, W1): 1}
    assert counts(snap, "failed") == {(*ADD, W1, "ValueError"): 1}
    assert snap.failures_per_minute == {(*ADD, W1): 1}


def test_task_labels_without_worker_label() -> None:
    """By default task series are labelled by name and queue_name only."""
    state, _ = make()
    assert state.snapshot().task_labels == ("name", "queue_name")


# -- robustness ----------------------------------------------------------------------------------


def test_unknown_event_types_counted_as_other() -> None:
    """Event types the exporter does not know count as 'other' and change nothing else."""
    state, _ = make()
    state.handle_batch([{"type": "task-custom", "uuid": "x"}, {"type": "foo"}, heartbeat()])
    snap = state.snapshot()
    assert snap.events == {"other": 2, "worker-heartbeat": 1}
    assert snap.tracked_tasks == 0


def test_cancelled_task_goes_back_to_waiting() -> None:
    """task-cancelled takes a started task off the worker without counting anything."""
    state, _ = make()
    state.handle_batch([received("u1"), started("u1"), {"type": "task-cancelled", "uuid": "u1"}])
    snap = state.snapshot()
    assert snap.events["task-cancelled"] == 1
    assert busy_reserved(snap, W1) == (0, 0)
    assert snap.tracked_tasks == 1
    assert all(not c for kind, c in snap.counters.items() if kind not in ("received", "started"))


def test_count_malformed() -> None:
    """Malformed messages are counted by reason."""
    state, _ = make()
    state.count_malformed("json")
    state.count_malformed("json")
    state.count_malformed("schema")
    assert state.snapshot().malformed == {"json": 2, "schema": 1}


def test_bad_timestamp_falls_back_to_clock() -> None:
    """A timestamp that is not a number, or out of range, is replaced by the exporter's clock."""
    state, clock = make()
    clock.now = T0 + 7
    state.handle_batch(
        [
            received("a"),
            {**started("a"), "timestamp": "x"},
            received("b"),
            {**started("b"), "timestamp": 10**400},
        ]
    )
    assert state.snapshot().active == {ADD: (2, T0 + 7)}


def test_bad_heartbeat_fields_are_ignored() -> None:
    """Heartbeat fields of the wrong type or shape leave the previous values in place."""
    state, _ = make()
    state.handle(heartbeat(freq=5.0, active=2, processed=10))
    garbage = [
        heartbeat(freq="x", active=-1, processed="many", loadavg=[1, 2]),
        heartbeat(freq=float("nan"), active=1.5, processed=None, loadavg="0.1 0.2 0.3"),
        heartbeat(freq=0, active=None, processed=-5, loadavg=[float("nan"), 1, 1]),
        heartbeat(
            freq=10**400,
            active="2",
            processed=1.5,
            loadavg=[10**400, 1, 1],
            sw_ver=7,
            sw_sys=None,
            sw_ident=["x"],
        ),
    ]
    state.handle_batch(garbage)
    worker = state.snapshot().workers[W1][1]
    assert worker.freq == 5.0
    assert worker.active == 2
    assert worker.processed == 10
    assert worker.loadavg == (0.5, 0.25, 0.1)
    assert (worker.sw_ident, worker.sw_ver, worker.sw_sys) == ("py-celery", "5.7.0", "Linux")


WRONG_TYPES: list[dict[str, Any]] = [
    {"type": "task-sent", "uuid": 5, "name": ["x"], "queue": {"a": 1}, "eta": 12},
    {"type": "task-sent", "uuid": "s", "eta": "not a date", "timestamp": float("nan")},
    {"type": "task-sent", "uuid": "s2", "eta": "9999-12-31T23:59:59-23:59"},
    {"type": "task-received", "uuid": None, "hostname": 3, "eta": ["x"], "timestamp": "x"},
    {"type": "task-started", "uuid": [1], "hostname": {"h": 1}, "timestamp": -5},
    {"type": "task-succeeded", "uuid": "s", "runtime": float("nan"), "timestamp": float("inf")},
    {"type": "task-succeeded", "uuid": "z", "runtime": -1, "hostname": None},
    {"type": "task-failed", "uuid": "y", "exception": 5, "traceback": ["t"]},
    {"type": "task-retried", "uuid": "y2", "exception": None, "traceback": 7},
    {"type": "task-revoked", "uuid": {}, "terminated": "yes"},
    {"type": "task-rejected", "uuid": "r", "requeue": "true"},
    {"type": "task-cancelled"},
    {"type": "worker-online", "hostname": None, "freq": "2", "loadavg": None},
    {"type": "worker-heartbeat", "hostname": W1, "freq": -1, "loadavg": [1, "2", 3]},
    {"type": "worker-offline", "hostname": ["a"], "timestamp": True},
]


def unusable_uuid(event: dict[str, Any]) -> bool:
    """Whether a task event's uuid cannot identify a task (so the event is malformed)."""
    uuid = event.get("uuid")
    usable = isinstance(uuid, str) and 0 < len(uuid) <= 200
    return str(event["type"]).startswith("task-") and not usable


@pytest.mark.parametrize("event", WRONG_TYPES)
def test_wrong_field_types_never_raise(event: dict[str, Any]) -> None:
    """Wrong-typed fields are applied as absent; only an unusable uuid is malformed; no handler raises."""
    state, _ = make()
    state.handle_batch([event, heartbeat(W2)])
    snap = state.snapshot()
    assert snap.events == dict(Counter([event["type"], "worker-heartbeat"]))
    assert snap.malformed == ({"schema": 1} if unusable_uuid(event) else {})
    assert state.errors.counts() == {}
    assert snap.workers[W2][0] is True


def test_a_handler_that_raises_is_an_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A handler's exception is logged at error level with the event type, counted as ours, never as malformed."""

    def broken(*args: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(TaskHandlers, "_new_task", broken)
    state, _ = make()
    with captured_logs() as logs:
        state.handle_batch([received("u1"), heartbeat(W2), sent("u2")])
    snap = state.snapshot()
    assert state.errors.counts() == {"event_handler": 1}
    assert snap.malformed == {}
    assert snap.events == {"task-received": 1, "worker-heartbeat": 1, "task-sent": 1}
    assert counts(snap, "sent") == {ADD: 1}
    assert snap.workers[W2][0] is True
    assert [(e["event"], e["log_level"], e["event_type"]) for e in logs] == [
        ("event_handler_failed", "error", "task-received")
    ]


def test_garbage_batch_keeps_state_consistent() -> None:
    """After every wrong-typed event in one batch, gauges stay non-negative and counted."""
    state, _ = make()
    state.handle_batch(WRONG_TYPES)
    snap = state.snapshot()
    assert sum(snap.events.values()) == len(WRONG_TYPES)
    assert snap.malformed == {"schema": sum(map(unusable_uuid, WRONG_TYPES))} == {"schema": 5}
    assert state.errors.counts() == {}
    assert all(w.busy >= 0 and w.reserved >= 0 for _, w in snap.workers.values())
    assert counts(snap, "failed") == {("unknown", "celery", "unknown"): 1}
    assert counts(snap, "retried") == {("unknown", "celery", "unknown"): 1}


def test_heartbeat_summary() -> None:
    """heartbeat_summary adds up workers' active and processed and counts task events."""
    state, _ = make()
    state.handle_batch([heartbeat(W1, active=2, processed=5), heartbeat(W2, active=1, processed=7)])
    state.handle(received("u1"))
    assert state.heartbeat_summary() == {
        "workers": 2,
        "active": 3,
        "processed": 12,
        "task_events": 1,
    }


def test_event_without_uuid_is_malformed_and_the_batch_goes_on() -> None:
    """A task event with no usable uuid is counted as malformed; the rest of its batch counts."""
    state, _ = make()
    no_uuid = started("u1")
    del no_uuid["uuid"]
    long_uuid = started("x" * 201)
    state.handle_batch([received("u1"), no_uuid, long_uuid, started("u1"), succeeded("u1", 0.1)])
    snap = state.snapshot()
    assert snap.malformed == {"schema": 2}
    assert counts(snap, "started") == {ADD: 1}
    assert counts(snap, "succeeded") == {ADD: 1}
    assert snap.tracked_tasks == 0


def test_failure_repeated_after_rejection_is_a_duplicate() -> None:
    """task-failed, task-rejected, then task-failed again counts one failure and one duplicate."""
    state, _ = make()
    state.handle_batch([received("u1"), started("u1"), failed("u1", "Reject('x', False)")])
    state.handle_batch([rejected("u1", requeue=False), failed("u1", "Reject('x', False)")])
    snap = state.snapshot()
    assert counts(snap, "failed") == {(*ADD, "Reject"): 1}
    assert counts(snap, "rejected") == {ADD: 1}
    assert snap.duplicates == 1


def test_finished_table_forgets_the_oldest_beyond_its_size() -> None:
    """Only the last max_finished_tasks finished tasks are remembered for spotting repeats."""
    state, _ = make(max_finished_tasks=2)
    for uuid in ("u1", "u2", "u3"):
        state.handle_batch([received(uuid), started(uuid), succeeded(uuid, 0.1)])
    assert sorted(state.tasks.finished) == ["u2", "u3"]
    state.handle_batch([succeeded("u3", 0.1), succeeded("u1", 0.1)])
    snap = state.snapshot()
    assert snap.duplicates == 1
    assert counts(snap, "succeeded") == {ADD: 3, ("unknown", "celery"): 1}


def test_purged_worker_takes_its_task_series_with_worker_label() -> None:
    """With worker_label, purging a worker removes the task series labelled with its hostname."""
    state, clock = make(worker_label=True, worker_purge_after=100.0)
    state.handle_batch([heartbeat(W1), heartbeat(W2)])
    state.handle_batch(
        [received("u1", host=W1), started("u1", host=W1), succeeded("u1", 0.1, host=W1)]
    )
    state.handle_batch(
        [received("u2", host=W2), started("u2", host=W2), failed("u2", "KeyError('k')", host=W2)]
    )
    clock.now = T0 + 50
    state.handle(heartbeat(W2))
    clock.now = T0 + 101
    assert state.purge() == [W1]
    snap = state.snapshot()
    assert list(snap.workers) == [W2]
    assert counts(snap, "succeeded") == {}
    assert counts(snap, "started") == {(*ADD, W2): 1}
    assert counts(snap, "failed") == {(*ADD, W2, "KeyError"): 1}
    assert list(snap.runtime) == [(*ADD, W2, "failed")]


def test_task_events_after_worker_offline_keep_it_down() -> None:
    """Task events a worker sends after worker-offline (warm shutdown) do not bring it back up."""
    state, _ = make()
    state.handle_batch([heartbeat(), received("u1"), started("u1")])
    state.handle_batch([worker_event("offline"), succeeded("u1", 0.5)])
    snap = state.snapshot()
    assert snap.workers[W1][0] is False
    assert counts(snap, "succeeded") == {ADD: 1}
    state.handle(heartbeat())
    assert state.snapshot().workers[W1][0] is True


def test_retry_keeps_the_new_runs_sent_and_received() -> None:
    """A retry's own task-sent and task-received, arriving before task-retried, time its 2nd run."""
    state, _ = make()
    state.handle_batch([received("u1", at=T0), started("u1", at=T0 + 1)])
    state.handle(sent("u1", at=T0 + 1.5, eta=iso(T0 + 2)))
    state.handle_batch(
        [
            received("u1", at=T0 + 1.6, eta=iso(T0 + 2), retries=1),
            retried("u1", "KeyError('k')", at=T0 + 1.7),
            started("u1", at=T0 + 2.5),
            succeeded("u1", 0.1, at=T0 + 2.6),
        ]
    )
    snap = state.snapshot()
    assert sum(snap.queue_wait[ADD].counts) == 1
    assert snap.queue_wait[ADD].total == 0.5
    assert sum(snap.prefetch_wait[ADD].counts) == 2
    assert snap.prefetch_wait[ADD].total == 1.5
    assert busy_reserved(snap, W1) == (0, 0)
    assert snap.tracked_tasks == 0


def test_task_sent_after_start_observes_queue_wait() -> None:
    """A task-sent that arrives after task-started still gives the task's queue wait."""
    state, _ = make()
    state.handle_batch([received("u1", at=T0), started("u1", at=T0 + 1)])
    state.handle(sent("u1", at=T0 - 0.5))
    snap = state.snapshot()
    assert sum(snap.queue_wait[ADD].counts) == 1
    assert snap.queue_wait[ADD].total == 1.5
    assert counts(snap, "sent") == {ADD: 1}


def test_task_sent_after_finish_is_counted_and_not_tracked() -> None:
    """A task-sent that arrives after its task finished is counted without tracking the task."""
    state, _ = make()
    state.handle_batch([received("u1", at=T0), started("u1", at=T0 + 1), succeeded("u1", 0.2)])
    state.handle(sent("u1", at=T0 - 1))
    snap = state.snapshot()
    assert snap.tracked_tasks == 0
    assert counts(snap, "sent") == {ADD: 1}
    assert snap.queue_wait[ADD].total == 2.0


def test_collector_accessors() -> None:
    """The inspect collector's worker queues steer attribution; sent times and queues are readable."""
    queues = WorkerQueues()
    state = ClusterState(Settings(), clock=ManualClock(T0), worker_queues=queues)
    queues.replace({W1: ("images",)})
    state.handle_batch([sent("u1", queue="mail", at=T0 - 2), received("u2", at=T0)])
    assert state.sent_timestamp("u1") == T0 - 2
    assert state.sent_timestamp("u2") is None
    assert state.sent_timestamp("nope") is None
    assert state.sent_queues() == {"mail"}
    assert counts(state.snapshot(), "received") == {("app.add", "images"): 1}
