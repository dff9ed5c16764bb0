"""A worker that dies without saying goodbye is reported down once its heartbeats stop; one that
shuts down warm is reported down at once, with the time it announced its shutdown."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.launchers import RedisServer
from tests.support.processes import ExporterProcess, WorkerProcess, group_alive
from tests.support.scrape import value
from tests.support.stack import running_worker
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

#: Celery's default heartbeat interval; the exporter's default timeout is three of them.
HEARTBEAT_SECONDS = 2.0
#: Room for a scrape, a late heartbeat and a busy machine.
SLACK_SECONDS = 4.0


@pytest.fixture
def victim(
    redis_server: RedisServer, exporter: ExporterProcess, logdir: Path
) -> Iterator[WorkerProcess]:
    """A second worker, on a queue of its own so it takes none of the other tests' tasks."""
    victim = WorkerProcess(redis_server.url(), "victim", logdir, queues=("victim",))
    with running_worker(victim, exporter) as proc:
        yield proc


def test_killed_worker_goes_down(exporter: ExporterProcess, victim: WorkerProcess) -> None:
    """kill -9 of a worker's main process turns celery_worker_up to 0 within 3 heartbeats."""
    host = victim.nodename
    assert value(exporter.metrics(), "celery_worker_up", hostname=host) == 1
    children = [pid for pid in group_alive(victim.pid) if pid != victim.pid]
    assert len(children) >= 2, f"expected 2 pool processes, found {children}"

    os.kill(victim.pid, signal.SIGKILL)
    wait_for(
        lambda: value(exporter.metrics(), "celery_worker_up", hostname=host) == 0,
        3 * HEARTBEAT_SECONDS + SLACK_SECONDS,
        0.2,
        f"celery_worker_up{{hostname={host!r}}} to be 0",
    )
    after = exporter.metrics()
    # The series stays (until --worker-purge-after) and its gauges read 0.
    assert ("celery_worker_up", frozenset({("hostname", host)})) in after
    assert value(after, "celery_worker_pool_busy", hostname=host) == 0
    # It never announced a shutdown: this is the worker CeleryWorkerDown is for.
    shutdown = ("celery_worker_shutdown_timestamp_seconds", frozenset({("hostname", host)}))
    assert shutdown not in after

    # The orphaned pool processes see their parent gone and exit; none is left in the group.
    wait_for(lambda: not group_alive(victim.pid), 15, 0.1, f"pool processes {children} to exit")
    victim.kill_group()
    assert group_alive(victim.pid) == []


def test_warm_shutdown_is_announced(exporter: ExporterProcess, victim: WorkerProcess) -> None:
    """A warm shutdown (SIGTERM) reads down at once and records when the worker announced it."""
    host = victim.nodename
    before = time.time()
    os.kill(victim.pid, signal.SIGTERM)
    shutdown = ("celery_worker_shutdown_timestamp_seconds", frozenset({("hostname", host)}))
    after = wait_for(
        lambda: (s := exporter.metrics()).get(shutdown) and s,
        3 * HEARTBEAT_SECONDS + SLACK_SECONDS,
        0.2,
        f"the shutdown of {host} to be recorded",
    )
    assert value(after, "celery_worker_up", hostname=host) == 0
    assert before <= after[shutdown] <= time.time()
