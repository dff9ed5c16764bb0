"""The task view's flags on a real exporter, seen through the API or /tasks after real tasks ran.

--web.show-task-args, --max-finished-tasks and --web.stuck-after, on a private stack of
:mod:`tests.support.taskview_stack`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import taskapp
from tests.support.browser import Dom, Element, parse_dom
from tests.support.expect import wait_metrics
from tests.support.processes import EVENT_TIMEOUT
from tests.support.scrape import sample
from tests.support.taskview_stack import (
    QUEUE,
    SUCCEED,
    TASK_KEYS,
    Stack,
    api,
    page_path,
    task_view_stack,
    wait_api,
    wait_task,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

#: How many finished tasks the exporter keeps here.
MAX_FINISHED = 3
#: How long a started task runs before the page marks it stuck.
STUCK_AFTER = 1.0
SLEEP = taskapp.sleep.name
#: How long the stuck task sleeps: long enough to be seen stuck on a busy machine.
SLEEP_SECONDS = 15.0


@pytest.fixture(scope="module")
def stack(logdir: Path) -> Iterator[Stack]:
    """A private stack whose exporter shows arguments, keeps 3 finished tasks, stuck after 1 s."""
    args = [
        "--web.show-task-args",
        "--max-finished-tasks", str(MAX_FINISHED),
        "--web.stuck-after", f"{STUCK_AFTER:g}s",
    ]  # fmt: skip
    with task_view_stack(logdir, args) as s:
        yield s


def finished(task: dict[str, Any]) -> bool:
    """Whether the task ended."""
    return task["finished"] is not None


def test_show_task_args(stack: Stack) -> None:
    """With --web.show-task-args a task carries the reprs of its args and kwargs."""
    task_id = stack.client.send(SUCCEED, args=(7,), kwargs={}, queue=QUEUE)
    detail = wait_task(stack.exporter, task_id, finished, "the task to finish")
    assert (detail["state"], detail["args"], detail["kwargs"]) == ("succeeded", "(7,)", "{}")
    (row,) = api(stack.exporter, "tasks", name=SUCCEED)["tasks"]
    assert set(row) == TASK_KEYS | {"args", "kwargs"}
    assert (row["id"], row["args"], row["kwargs"]) == (task_id, "(7,)", "{}")


def test_max_finished_tasks(stack: Stack) -> None:
    """--max-finished-tasks keeps only the tasks that finished last; older ones are gone."""
    wait_api(stack.exporter, "tasks", lambda a: a["total"] == 0, "no task running", state="started")
    before = stack.exporter.metrics()
    # Held, so every task-sent is in before the worker starts a task (see Client.held).
    with stack.client.held(stack.worker, QUEUE):
        ids = [stack.client.send(SUCCEED, args=(i,), queue=QUEUE) for i in range(5)]
    succeeded = sample("celery_task_succeeded_total", name=SUCCEED, queue_name=QUEUE)
    wait_metrics(stack.exporter, {succeeded: len(ids)}, before, worker=stack.worker)
    answer = api(stack.exporter, "tasks")
    assert answer["total"] == MAX_FINISHED
    assert [t["state"] for t in answer["tasks"]] == ["succeeded"] * MAX_FINISHED
    kept = [t["id"] for t in answer["tasks"]]
    assert set(kept) <= set(ids)
    for task_id in set(ids) - set(kept):
        assert stack.exporter.get(f"/api/v1/tasks/{task_id}")[0] == 404


def tasks_page(stack: Stack, **params: str) -> Dom:
    """The /tasks page, parsed."""
    path = page_path("/tasks", **params)
    status, body = stack.exporter.get(path)
    assert status == 200, f"GET {path} answered {status}: {body[:500]!r}"
    return parse_dom(body.decode())


def row_of(dom: Dom, task_id: str) -> Element | None:
    """The table row listing ``task_id``, if any."""
    rows = [e for e in dom.find("tr") if task_id in e.content]
    return rows[0] if rows else None


def test_stuck_after(stack: Stack) -> None:
    """A task started longer than --web.stuck-after ago is marked stuck on /tasks; finished ones not."""
    task_id = stack.client.send(SLEEP, args=(SLEEP_SECONDS,), queue=QUEUE)
    wait_task(stack.exporter, task_id, lambda t: t["state"] == "started", "the task to start")

    def marked() -> bool:
        row = row_of(tasks_page(stack, name=SLEEP), task_id)
        return row is not None and row.attrs.get("class") == "stuck"

    wait_for(marked, EVENT_TIMEOUT, 0.2, "the sleeping task to be marked stuck")
    dom = tasks_page(stack)
    row = row_of(dom, task_id)
    assert row is not None
    assert row.attrs.get("class") == "stuck"
    assert "started stuck" in " ".join(row.content.split())
    for task in api(stack.exporter, "tasks", state="succeeded")["tasks"]:
        other = row_of(dom, task["id"])
        assert other is not None
        assert "class" not in other.attrs, task["id"]
