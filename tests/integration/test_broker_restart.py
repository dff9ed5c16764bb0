"""The exporter rides out a broker restart: not ready while it is down, then back, counts kept.

This module has a Redis, a worker and an exporter of its own, since it stops the broker.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import taskapp
from tests.support.client import Client
from tests.support.expect import wait_heartbeat_after, wait_metrics, wait_worker_up
from tests.support.launchers import RedisServer
from tests.support.processes import (
    EVENT_TIMEOUT,
    START_TIMEOUT,
    ExporterProcess,
    WorkerProcess,
    now,
)
from tests.support.scrape import Sample, sample, value
from tests.support.stack import connected_client, running_exporter, running_worker
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

Q = "celery"
SUCCEED = taskapp.succeed.name
FAIL = taskapp.fail_value.name
PROBE = taskapp.sleep.name


@pytest.fixture(scope="module")
def broker() -> Iterator[RedisServer]:
    """A Redis this module may stop and start again on the same port."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def own_exporter(broker: RedisServer, logdir: Path) -> Iterator[ExporterProcess]:
    """An exporter following :func:`broker`."""
    with running_exporter(broker.url(), logdir) as proc:
        yield proc


@pytest.fixture(scope="module")
def own_worker(
    broker: RedisServer, own_exporter: ExporterProcess, logdir: Path
) -> Iterator[WorkerProcess]:
    """A worker on :func:`broker`."""
    with running_worker(WorkerProcess(broker.url(), "restart", logdir), own_exporter) as proc:
        yield proc


@pytest.fixture(scope="module")
def own_client(broker: RedisServer) -> Iterator[Client]:
    """Sends tasks to :func:`broker`."""
    with connected_client(broker.url()) as c:
        yield c


def run_tasks(
    exporter: ExporterProcess, worker: WorkerProcess, client: Client, succeed: int, fail: int
) -> dict[Sample, float]:
    """Send tasks, wait until their events are counted and the worker is quiet; scrape."""
    before = exporter.metrics()
    with client.held(worker):
        for i in range(succeed):
            client.send(SUCCEED, args=(i,))
        for _ in range(fail):
            client.send(FAIL)
    wait_metrics(
        exporter,
        {
            sample("celery_task_succeeded_total", name=SUCCEED, queue_name=Q): succeed,
            sample("celery_task_failed_total", name=FAIL, queue_name=Q, exception="ValueError"): (
                fail
            ),
        },
        before,
        worker=worker,
    )
    wait_heartbeat_after(exporter, worker.nodename, now())
    return exporter.metrics()


def task_samples(samples: dict[Sample, float]) -> dict[Sample, float]:
    """The task counters and histogram counts of a scrape."""
    return {
        key: v
        for key, v in samples.items()
        if key[0].startswith("celery_task_") and key[0].endswith(("_total", "_count"))
    }


def test_broker_restart(
    broker: RedisServer,
    own_exporter: ExporterProcess,
    own_worker: WorkerProcess,
    own_client: Client,
) -> None:
    """Down: broker_up 0 and /readyz 503; back: one reconnect, counts kept, new tasks on top."""
    exporter = own_exporter
    first = run_tasks(exporter, own_worker, own_client, succeed=2, fail=1)
    assert value(first, "celery_exporter_broker_up") == 1
    assert value(first, "celery_exporter_reconnects_total") == 0

    broker.stop()
    wait_for(
        lambda: value(exporter.metrics(), "celery_exporter_broker_up") == 0,
        EVENT_TIMEOUT,
        0.1,
        "broker_up to read 0",
    )
    status, body = exporter.get("/readyz")
    assert status == 503
    assert body.decode().startswith("not ready: broker connection failed: "), body
    down = exporter.metrics()
    assert task_samples(down) == task_samples(first)
    assert value(down, "celery_exporter_reconnects_total") == 1

    broker.start()
    restarted = now()
    exporter.wait_ready(START_TIMEOUT)
    back = exporter.metrics()
    assert value(back, "celery_exporter_broker_up") == 1
    assert value(back, "celery_exporter_reconnects_total") == 1
    assert task_samples(back) == task_samples(first)

    # The worker reconnects on its own: wait until its heartbeats come again and it runs a
    # probe task (sent without task-sent, so its events are all the worker's).
    wait_heartbeat_after(exporter, own_worker.nodename, restarted)
    wait_worker_up(exporter, own_worker)
    own_client.send_quietly(PROBE, args=(0,))
    wait_metrics(
        exporter,
        {sample("celery_task_succeeded_total", name=PROBE, queue_name=Q): 1},
        back,
        worker=own_worker,
    )
    final = run_tasks(exporter, own_worker, own_client, succeed=3, fail=1)

    expected = {
        sample(f"celery_task_{kind}_total", name=SUCCEED, queue_name=Q): 5
        for kind in ("sent", "received", "started", "succeeded")
    }
    expected |= {
        sample(f"celery_task_{kind}_total", name=FAIL, queue_name=Q): 2
        for kind in ("sent", "received", "started")
    }
    expected[
        sample("celery_task_failed_total", name=FAIL, queue_name=Q, exception="ValueError")
    ] = 2
    expected[
        sample("celery_task_runtime_seconds_count", name=SUCCEED, queue_name=Q, state="succeeded")
    ] = 5
    expected[
        sample("celery_task_runtime_seconds_count", name=FAIL, queue_name=Q, state="failed")
    ] = 2
    for family in (
        "celery_task_queue_wait_seconds_count",
        "celery_task_prefetch_wait_seconds_count",
    ):
        expected[sample(family, name=SUCCEED, queue_name=Q)] = 5
        expected[sample(family, name=FAIL, queue_name=Q)] = 2
    # The probe: no task-sent, so no queue wait; everything else once.
    for kind in ("received", "started", "succeeded"):
        expected[sample(f"celery_task_{kind}_total", name=PROBE, queue_name=Q)] = 1
    expected[
        sample("celery_task_runtime_seconds_count", name=PROBE, queue_name=Q, state="succeeded")
    ] = 1
    expected[sample("celery_task_prefetch_wait_seconds_count", name=PROBE, queue_name=Q)] = 1
    assert task_samples(final) == expected
    assert value(final, "celery_exporter_reconnects_total") == 1
    assert value(final, "celery_exporter_broker_up") == 1
    assert value(final, "celery_worker_up", hostname=own_worker.nodename) == 1
    assert value(final, "celery_exporter_tracked_tasks") == 0
