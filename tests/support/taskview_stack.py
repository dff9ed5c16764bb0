"""The task view's end-to-end tests: a private stack, the JSON API, and a known workload.

:func:`task_view_stack` starts a private Redis, the exporter (inspect and queue collectors
polling every second), a prefork worker with events on queue :data:`QUEUE`, and a client.
:func:`run_workload` sends :data:`WORKLOAD` and waits until the API shows every task of it
finished.
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import taskapp
from tests.support.client import Client
from tests.support.launchers import RedisServer
from tests.support.processes import EVENT_TIMEOUT, ExporterProcess, WorkerProcess
from tests.support.stack import connected_client, running_exporter, running_worker
from tests.support.waiting import wait_for

#: The queue the task view's worker consumes and every task is sent to.
QUEUE = "taskview"
#: Pool processes of the worker: the workload never waits for a free one.
CONCURRENCY = 4
#: Exporter flags that make the inspect and queue collectors report within seconds.
QUICK_POLLS = ("--inspect-interval", "1s", "--queue-interval", "1s")
#: The keys of every TASK object of the API (without --web.show-task-args).
TASK_KEYS = frozenset(
    {"id", "name", "state", "queue", "worker", "sent", "received", "started", "finished"}
    | {"runtime", "retries", "exception", "eta", "progress"}
)
#: The keys ``/api/v1/tasks/{id}`` adds.
DETAIL_KEYS = frozenset(
    {"exception_message", "traceback", "parent_id", "root_id", "retried_as", "history"}
)

SUCCEED = taskapp.succeed.name
FAIL_VALUE = taskapp.fail_value.name
FAIL_KEY = taskapp.fail_key.name
FAIL_HTML = taskapp.fail_html.name
RETRY = taskapp.retry_once.name
NAME_IMG = taskapp.HTML_NAME_IMG
NAME_SCRIPT = taskapp.HTML_NAME_SCRIPT

#: What the workload sends: (task name, how many).
WORKLOAD = (
    (SUCCEED, 2),
    (FAIL_VALUE, 2),
    (FAIL_KEY, 1),
    (FAIL_HTML, 1),
    (NAME_IMG, 1),
    (NAME_SCRIPT, 1),
    (RETRY, 1),
)
#: The exception class each failing task of the workload ends with.
FAILS_WITH = {
    FAIL_VALUE: "ValueError",
    FAIL_KEY: "KeyError",
    FAIL_HTML: "ValueError",
    NAME_SCRIPT: "ValueError",
}


@dataclass
class Stack:
    """A private Redis with the exporter, one worker and a client on it."""

    redis: RedisServer
    exporter: ExporterProcess
    worker: WorkerProcess
    client: Client
    logdir: Path


@contextlib.contextmanager
def task_view_stack(logdir: Path, exporter_args: Sequence[str] = ()) -> Iterator[Stack]:
    """A private Redis, the exporter, a worker on :data:`QUEUE` it reports up, and a client."""
    with (
        RedisServer() as redis,
        running_exporter(redis.url(), logdir, [*QUICK_POLLS, *exporter_args]) as exporter,
        running_worker(
            WorkerProcess(
                redis.url(), "view", logdir, queues=(QUEUE,), options=("-c", str(CONCURRENCY))
            ),
            exporter,
        ) as worker,
        connected_client(redis.url()) as client,
    ):
        yield Stack(redis, exporter, worker, client, logdir)


def api(exporter: ExporterProcess, path: str, **params: str | float) -> Any:
    """GET ``/api/v1/<path>`` with query ``params``; return the JSON of a 200 answer."""
    url = f"/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    status, body = exporter.get(url)
    assert status == 200, f"GET {url} answered {status}: {body[:500]!r}"
    return json.loads(body)


def page_path(path: str, **params: str | float) -> str:
    """A path with its query, quoted."""
    return path + ("?" + urllib.parse.urlencode(params) if params else "")


def wait_api(
    exporter: ExporterProcess,
    path: str,
    reached: Callable[[Any], bool],
    what: str,
    timeout: float = EVENT_TIMEOUT,
    **params: str | float,
) -> Any:
    """Poll ``/api/v1/<path>`` until ``reached`` holds for its answer; return that answer.

    On timeout the error shows the last answer.
    """
    last: list[Any] = [None]

    def check() -> bool:
        last[0] = api(exporter, path, **params)
        return reached(last[0])

    try:
        wait_for(check, timeout, 0.2, what)
    except TimeoutError:
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what}; last answer of {path} {params}:\n"
            f"{json.dumps(last[0], indent=1)[:4000]}"
        ) from None
    return last[0]


def wait_task(
    exporter: ExporterProcess, task_id: str, reached: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """Poll ``/api/v1/tasks/{task_id}`` until ``reached`` holds for it; return it."""
    last: list[Any] = [None]

    def check() -> bool:
        status, body = exporter.get(f"/api/v1/tasks/{task_id}")
        if status == 404:
            return False
        assert status == 200, f"GET /api/v1/tasks/{task_id} answered {status}: {body[:500]!r}"
        last[0] = json.loads(body)
        return reached(last[0])

    try:
        wait_for(check, EVENT_TIMEOUT, 0.2, what)
    except TimeoutError:
        raise AssertionError(
            f"timed out after {EVENT_TIMEOUT}s waiting for {what}; last answer:\n"
            f"{json.dumps(last[0], indent=1)[:4000]}"
        ) from None
    detail: dict[str, Any] = last[0]
    return detail


@dataclass
class Workload:
    """The ids of the tasks the workload sent, by name, in the order sent."""

    ids: dict[str, list[str]] = field(default_factory=dict)

    def failed(self) -> dict[str, str]:
        """The id of each failed task and the exception class it failed with."""
        return {i: cls for name, cls in FAILS_WITH.items() for i in self.ids[name]}

    def one(self, name: str) -> str:
        """The id of the only task named ``name``."""
        (task_id,) = self.ids[name]
        return task_id


def run_workload(stack: Stack) -> Workload:
    """Send :data:`WORKLOAD` to :data:`QUEUE`; return once the API shows all of it finished."""
    sent = Workload()
    # Held, so every task-sent is in before the worker starts a task (see Client.held).
    with stack.client.held(stack.worker, QUEUE):
        for name, count in WORKLOAD:
            sent.ids[name] = [
                stack.client.send(name, queue=QUEUE, args=(i,) if name == SUCCEED else ())
                for i in range(count)
            ]
    failed = len(sent.failed())
    succeeded = sum(c for _, c in WORKLOAD) - failed

    def finished(answer: Any) -> bool:
        states = [t["state"] for t in answer["tasks"]]
        return states.count("failed") == failed and states.count("succeeded") == succeeded

    wait_api(
        stack.exporter,
        "tasks",
        finished,
        f"{failed} failed and {succeeded} succeeded tasks",
        state="failed,succeeded",
    )
    return sent
