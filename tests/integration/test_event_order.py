"""A client's task-sent can arrive after the worker's events for the same task.

Celery publishes task-sent after the task message, from the client's process: a quick worker
(or a client descheduled between the two publishes, as on a busy machine) starts, and may even
finish, the task before its task-sent is out. These tests make that order deterministic by
sending the task without its task-sent and publishing the same task-sent (Celery's own event
dispatcher, the client's fields and send time) once the worker's events are in.
"""

from __future__ import annotations

import time

import pytest

from tests.support import taskapp
from tests.support.client import Client
from tests.support.expect import wait_heartbeat_after, wait_metrics
from tests.support.processes import ExporterProcess, WorkerProcess, now
from tests.support.scrape import sample, value

pytestmark = pytest.mark.integration

Q = "celery"
SLEEP = taskapp.sleep.name
SUCCEED = taskapp.succeed.name


def test_task_sent_after_start_gives_queue_wait(
    exporter: ExporterProcess, worker: WorkerProcess, client: Client
) -> None:
    """A task-sent that arrives while its task runs still gives one queue wait observation."""
    before = exporter.metrics()
    sent_at = time.time()
    task_id = client.send_quietly(SLEEP, args=(2.0,))
    wait_metrics(
        exporter, {sample("celery_task_started_total", name=SLEEP, queue_name=Q): 1}, before
    )
    client.publish_task_sent(task_id, SLEEP, sent_at)
    after = wait_metrics(
        exporter,
        {
            sample("celery_task_sent_total", name=SLEEP, queue_name=Q): 1,
            sample("celery_task_succeeded_total", name=SLEEP, queue_name=Q): 1,
        },
        before,
    )
    assert value(after, "celery_tasks_active", name=SLEEP, queue_name=Q) == 0
    count = "celery_task_queue_wait_seconds_count"
    assert (
        value(after, count, name=SLEEP, queue_name=Q)
        - value(before, count, name=SLEEP, queue_name=Q)
        == 1
    )


def test_task_sent_after_finish_not_tracked(
    exporter: ExporterProcess, worker: WorkerProcess, client: Client
) -> None:
    """A task-sent that arrives after its task finished is counted and leaves nothing in flight."""
    before = exporter.metrics()
    sent_at = time.time()
    task_id = client.send_quietly(SUCCEED, args=(0,))
    wait_metrics(
        exporter, {sample("celery_task_succeeded_total", name=SUCCEED, queue_name=Q): 1}, before
    )
    client.publish_task_sent(task_id, SUCCEED, sent_at)
    wait_metrics(
        exporter, {sample("celery_task_sent_total", name=SUCCEED, queue_name=Q): 1}, before
    )
    wait_heartbeat_after(exporter, worker.nodename, now())
    after = exporter.metrics()
    assert value(after, "celery_exporter_tracked_tasks") == value(
        before, "celery_exporter_tracked_tasks"
    )
