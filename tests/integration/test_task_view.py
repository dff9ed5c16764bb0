"""The task view's JSON API on a real exporter, following a real prefork worker on a real Redis.

The workload and the stack are :mod:`tests.support.taskview_stack`'s; each test here reads what
the API answers about tasks the worker really ran.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import taskapp
from tests.support.stack import running_exporter
from tests.support.taskview_stack import (
    CONCURRENCY,
    DETAIL_KEYS,
    FAIL_HTML,
    FAIL_KEY,
    FAIL_VALUE,
    FAILS_WITH,
    NAME_IMG,
    NAME_SCRIPT,
    QUEUE,
    RETRY,
    SUCCEED,
    TASK_KEYS,
    Stack,
    Workload,
    api,
    run_workload,
    task_view_stack,
    wait_api,
    wait_task,
)
from tests.tls import bcrypt_hash

pytestmark = pytest.mark.integration

SLEEP = taskapp.sleep.name
PROGRESS = taskapp.progress.name
#: How long the sleeping and the progress task run: long enough to be seen started on a busy
#: machine, short enough for the worker's warm shutdown at the end.
RUNNING_SECONDS = 15.0
USER, PASSWORD = "viewer", "correct horse"


@pytest.fixture(scope="module")
def stack(logdir: Path) -> Iterator[Stack]:
    """A private Redis, the exporter with the task API on (its default) and one worker."""
    with task_view_stack(logdir) as s:
        yield s


@pytest.fixture(scope="module")
def workload(stack: Stack) -> Workload:
    """The known workload, every task of it finished in the API's view."""
    return run_workload(stack)


def ids_of(answer: dict[str, Any]) -> list[str]:
    """The task ids of a ``/api/v1/tasks`` answer, in its order."""
    return [t["id"] for t in answer["tasks"]]


def test_failed_tasks_listed_with_their_exceptions(stack: Stack, workload: Workload) -> None:
    """state=failed lists exactly the failed tasks, each with its exception class and worker."""
    answer = api(stack.exporter, "tasks", state="failed")
    assert {t["id"]: t["exception"] for t in answer["tasks"]} == workload.failed()
    assert answer["total"] == len(workload.failed()) == 5
    for task in answer["tasks"]:
        assert set(task) == TASK_KEYS
        assert (task["state"], task["queue"], task["worker"]) == (
            "failed",
            QUEUE,
            stack.worker.nodename,
        )
        assert task["started"] <= task["finished"]
        assert task["runtime"] >= 0
        assert task["progress"] is None
    names = {t["id"]: t["name"] for t in answer["tasks"]}
    assert names == {i: n for n in FAILS_WITH for i in workload.ids[n]}


def test_filters_by_name_state_and_limit(stack: Stack, workload: Workload) -> None:
    """name (an HTML payload too), state and limit filter the list; total counts all matches."""
    answer = api(stack.exporter, "tasks", name=NAME_IMG)
    assert (ids_of(answer), answer["total"]) == ([workload.one(NAME_IMG)], 1)
    assert (answer["tasks"][0]["name"], answer["tasks"][0]["state"]) == (NAME_IMG, "succeeded")
    answer = api(stack.exporter, "tasks", name=NAME_SCRIPT, state="failed")
    assert (ids_of(answer), answer["total"]) == ([workload.one(NAME_SCRIPT)], 1)
    answer = api(stack.exporter, "tasks", name=FAIL_VALUE, limit=1)
    assert answer["total"] == 2
    (only,) = ids_of(answer)
    assert only in workload.ids[FAIL_VALUE]
    answer = api(stack.exporter, "tasks", name=SUCCEED, state="failed")
    assert answer == {"tasks": [], "total": 0}
    answer = api(stack.exporter, "tasks", queue=QUEUE, state="succeeded")
    assert sorted(ids_of(answer)) == sorted(
        [*workload.ids[SUCCEED], workload.one(NAME_IMG), workload.one(RETRY)]
    )


def test_failed_task_detail(stack: Stack, workload: Workload) -> None:
    """A failed task's detail has its exception message, traceback and history."""
    task_id = workload.one(FAIL_HTML)
    detail = api(stack.exporter, f"tasks/{task_id}")
    assert set(detail) == TASK_KEYS | DETAIL_KEYS
    assert (detail["id"], detail["name"], detail["state"]) == (task_id, FAIL_HTML, "failed")
    assert (detail["exception"], detail["exception_message"]) == (
        "ValueError",
        taskapp.HTML_MESSAGE,
    )
    assert detail["traceback"].rstrip().endswith(f"ValueError: {taskapp.HTML_MESSAGE}")
    assert (detail["parent_id"], detail["root_id"]) == (None, task_id)
    types = [h["type"] for h in detail["history"]]
    assert sorted(types) == ["task-failed", "task-received", "task-sent", "task-started"]
    assert types.index("task-received") < types.index("task-started") < types.index("task-failed")
    workers = {h["type"]: h["worker"] for h in detail["history"]}
    for event in ("task-received", "task-started", "task-failed"):
        assert workers[event] == stack.worker.nodename, event


def test_unknown_task_answers_404(stack: Stack, workload: Workload) -> None:
    """A task id the exporter never saw answers 404 with a JSON error."""
    status, body = stack.exporter.get("/api/v1/tasks/no-such-task")
    assert status == 404
    assert body.startswith(b'{"error":')


def test_retried_task_history(stack: Stack, workload: Workload) -> None:
    """The retried task counts its retry, keeps the retry's error and lists task-retried then success."""
    task_id = workload.one(RETRY)
    detail = api(stack.exporter, f"tasks/{task_id}")
    assert (detail["name"], detail["state"], detail["worker"]) == (
        RETRY,
        "succeeded",
        stack.worker.nodename,
    )
    assert detail["retries"] >= 1
    types = [h["type"] for h in detail["history"]]
    runs = ["task-sent", "task-received", "task-started"] * 2
    assert sorted(types) == sorted([*runs, "task-retried", "task-succeeded"])
    assert types.index("task-retried") < types.index("task-succeeded"), types
    assert detail["exception_message"] == "try again"
    assert "Retry in" in detail["traceback"], detail["traceback"]


def test_failures_grouped_by_name_and_exception(stack: Stack, workload: Workload) -> None:
    """/api/v1/failures counts each (name, exception) pair exactly, with its last task."""
    answer = api(stack.exporter, "failures", since=3600)
    groups = {(f["name"], f["exception"]): f["count"] for f in answer["failures"]}
    assert groups == {
        (FAIL_VALUE, "ValueError"): 2,
        (FAIL_KEY, "KeyError"): 1,
        (FAIL_HTML, "ValueError"): 1,
        (NAME_SCRIPT, "ValueError"): 1,
    }
    rows = {f["name"]: f for f in answer["failures"]}
    assert rows[FAIL_HTML]["last_task_id"] == workload.one(FAIL_HTML)
    assert rows[FAIL_HTML]["last_message"] == taskapp.HTML_MESSAGE
    assert rows[FAIL_KEY]["last_task_id"] == workload.one(FAIL_KEY)
    assert rows[FAIL_VALUE]["last_task_id"] in workload.ids[FAIL_VALUE]


def test_workers_list_the_worker_and_its_queue(stack: Stack, workload: Workload) -> None:
    """/api/v1/workers lists the worker up, with the queue and pool size inspect reports."""

    def inspected(answer: dict[str, Any]) -> bool:
        return any(w["queues"] and w["pool_size"] for w in answer["workers"])

    answer = wait_api(stack.exporter, "workers", inspected, "the worker's inspect report")
    (row,) = answer["workers"]
    assert (row["hostname"], row["up"], row["queues"], row["pool_size"]) == (
        stack.worker.nodename,
        True,
        [QUEUE],
        CONCURRENCY,
    )
    assert row["last_heartbeat"] > time.time() - 600


def test_queues_name_the_queue(stack: Stack, workload: Workload) -> None:
    """/api/v1/queues names the worker's queue, empty once the workload is done."""

    def measured(answer: dict[str, Any]) -> bool:
        return any(q["name"] == QUEUE and q["length"] == 0 for q in answer["queues"])

    answer = wait_api(stack.exporter, "queues", measured, f"queue {QUEUE} measured empty")
    rows = {q["name"]: q for q in answer["queues"]}
    assert rows[QUEUE]["length"] == 0
    assert answer["updated"] is not None


def test_sleeping_task_started_and_older_than(stack: Stack, workload: Workload) -> None:
    """A running task is started on its worker; older_than lists it once it ran that long."""
    task_id = stack.client.send(SLEEP, args=(RUNNING_SECONDS,), queue=QUEUE)
    detail = wait_task(
        stack.exporter, task_id, lambda t: t["state"] == "started", "the sleeping task to start"
    )
    assert (detail["name"], detail["queue"], detail["worker"]) == (
        SLEEP,
        QUEUE,
        stack.worker.nodename,
    )
    assert detail["started"] is not None
    assert (detail["finished"], detail["runtime"], detail["exception"]) == (None, None, None)
    # Its start is the newest activity: it leads the list.
    assert ids_of(api(stack.exporter, "tasks"))[0] == task_id
    # Not an hour old.
    answer = api(stack.exporter, "tasks", state="started", older_than=3600)
    assert task_id not in ids_of(answer)
    # A second old, soon.
    answer = wait_api(
        stack.exporter,
        "tasks",
        lambda a: task_id in ids_of(a),
        "the sleeping task to be started a second ago",
        state="started",
        older_than=1,
        name=SLEEP,
    )
    (row,) = answer["tasks"]
    assert (row["id"], row["state"], row["worker"]) == (task_id, "started", stack.worker.nodename)
    assert row["started"] <= time.time() - 1
    assert answer["total"] == 1
    answer = api(stack.exporter, "tasks", state="started", older_than=3600, name=SLEEP)
    assert answer == {"tasks": [], "total": 0}


def test_progress_reported(stack: Stack, workload: Workload) -> None:
    """task-progress events show as the running task's latest progress, exactly as sent."""
    task_id = stack.client.send(PROGRESS, args=(RUNNING_SECONDS,), queue=QUEUE)
    current, of, message = taskapp.PROGRESS_STEPS[-1]

    def reported(task: dict[str, Any]) -> bool:
        return (
            task["state"] == "started"
            and task["progress"] is not None
            and task["progress"]["current"] == current
        )

    detail = wait_task(stack.exporter, task_id, reported, "the last progress report")
    progress = detail["progress"]
    assert set(progress) == {"current", "total", "message", "updated"}
    assert (progress["current"], progress["total"], progress["message"]) == (current, of, message)
    assert progress["updated"] >= detail["sent"]
    # Progress reports update the task; they are not events of its history.
    types = sorted(h["type"] for h in detail["history"])
    assert types == ["task-received", "task-sent", "task-started"]
    answer = api(stack.exporter, "tasks", name=PROGRESS)
    (row,) = answer["tasks"]
    assert row["progress"] == progress


def get_with(url: str, auth: tuple[str, str] | None) -> int:
    """The status of a GET of ``url``, with basic auth when ``auth`` is given."""
    request = urllib.request.Request(url)
    if auth is not None:
        token = b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_task_api_off_answers_404(stack: Stack, logdir: Path) -> None:
    """With --no-web.task-api the API and the pages answer 404 while /metrics still answers."""
    with running_exporter(stack.redis.url(), logdir, ["--no-web.task-api"]) as exporter:
        for path in ("/api/v1/tasks", "/api/v1/workers", "/api/v1/failures", "/tasks"):
            assert exporter.get(path)[0] == 404, path
        assert exporter.get("/metrics")[0] == 200


def test_basic_auth_guards_the_api(stack: Stack, logdir: Path, tmp_path: Path) -> None:
    """With basic auth in --web.config.file the API and pages answer 401 without credentials."""
    config = tmp_path / "web.yml"
    config.write_text(f"basic_auth_users:\n  {USER}: {bcrypt_hash(PASSWORD)}\n")
    args = ["--web.config.file", str(config), "--web.healthz-unauthenticated"]
    with running_exporter(stack.redis.url(), logdir, args, ready=False) as exporter:
        for path in ("/api/v1/tasks", "/api/v1/tasks/x", "/api/v1/failures", "/tasks"):
            assert get_with(exporter.base + path, None) == 401, path
            assert get_with(exporter.base + path, (USER, "wrong")) == 401, path
        assert get_with(exporter.base + "/api/v1/tasks", (USER, PASSWORD)) == 200
        assert get_with(exporter.base + "/tasks", (USER, PASSWORD)) == 200
