"""A known workload through a real prefork worker gives exactly the expected metrics.

The workload, and what Celery 5.7 publishes for it, are in :mod:`tests.support.workload`.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping

import celery
import pytest

from tests.support import taskapp
from tests.support.client import Client
from tests.support.expect import wait_heartbeat_after, wait_metrics
from tests.support.processes import EVENT_TIMEOUT, ExporterProcess, WorkerProcess, now
from tests.support.scrape import Sample, sample, value
from tests.support.workload import (
    COUNTERS,
    EVENTS,
    FAIL_KEY,
    FAIL_VALUE,
    FAILED,
    HARD,
    REJECT,
    RETRY,
    REVOKE_COUNTDOWN,
    REVOKED,
    RUNS,
    SOFT,
    SUCCEED,
    WORKLOAD,
    Q,
    send_workload,
)

pytestmark = pytest.mark.integration


class Workload:
    """Scrapes before and after the workload, and the deltas between them."""

    def __init__(self, before: Mapping[Sample, float], after: Mapping[Sample, float]) -> None:
        self.before = before
        self.after = after

    def delta(self, metric: str, /, **labels: str) -> float:
        """Increase of one sample."""
        return value(self.after, metric, **labels) - value(self.before, metric, **labels)

    def deltas(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Every non-zero increase of the samples named ``name`` of the workload's tasks."""
        out = {}
        for key in {k for k in (*self.before, *self.after) if k[0] == name}:
            labels = dict(key[1])
            if labels.get("name") not in WORKLOAD:
                continue
            change = self.after.get(key, 0.0) - self.before.get(key, 0.0)
            if change:
                out[tuple(sorted(labels.items()))] = change
        return out


def _sorted(expected: Mapping[tuple[tuple[str, str], ...], int]) -> dict[tuple, int]:
    return {tuple(sorted(k)): v for k, v in expected.items()}


@pytest.fixture(scope="module")
def workload(exporter: ExporterProcess, worker: WorkerProcess, client: Client) -> Workload:
    """Run the workload on the shared worker; scrape once every event of it is in."""
    before = exporter.metrics()
    with client.held(worker):
        revoked_id = send_workload(client, WORKLOAD)
    assert revoked_id is not None
    # Revoke once the worker holds the task, so it is received (and reserved) first.
    wait_metrics(
        exporter, {sample("celery_task_received_total", name=REVOKED, queue_name=Q): 1}, before
    )
    replies = client.revoke(revoked_id, worker.nodename)
    assert replies, f"no reply to revoke from {worker.nodename}:\n{worker.log_tail()}"
    wait_metrics(
        exporter,
        {sample("celery_exporter_events_total", type=t): n for t, n in EVENTS.items()},
        before,
        timeout=EVENT_TIMEOUT + REVOKE_COUNTDOWN,
    )
    wait_heartbeat_after(exporter, worker.nodename, now())
    return Workload(before, exporter.metrics())


def test_task_counters(workload: Workload) -> None:
    """Each task counter grows by exactly what the workload did, by name, queue and exception."""
    for family, expected in COUNTERS.items():
        assert workload.deltas(family) == _sorted(expected), family
    failed = workload.deltas("celery_task_failed_total")
    reject_failed = {k: v for k, v in failed.items() if ("name", REJECT) in k}
    others = {k: v for k, v in failed.items() if ("name", REJECT) not in k}
    assert others == _sorted(FAILED)
    # Celery sends task-failed and then task-rejected for Reject(requeue=False): both count.
    assert sum(reject_failed.values()) == 1, reject_failed


def test_time_limits_count_once(workload: Workload) -> None:
    """A soft and a hard time limit count once each, the hard one's repeated task-failed aside."""
    assert workload.deltas("celery_task_timeouts_total") == {
        (("kind", "soft"), ("name", SOFT), ("queue_name", Q)): 1,
        (("kind", "hard"), ("name", HARD), ("queue_name", Q)): 1,
    }
    assert workload.delta("celery_exporter_events_duplicate_total") == 1
    assert workload.delta("celery_exporter_events_total", type="task-failed") == 7


def test_runtime_and_wait_histograms(workload: Workload) -> None:
    """Runtime counts one per finished run by final state, wait histograms one per start."""
    runtime = workload.deltas("celery_task_runtime_seconds_count")
    assert runtime == _sorted(
        {
            (("name", SUCCEED), ("queue_name", Q), ("state", "succeeded")): 5,
            (("name", RETRY), ("queue_name", Q), ("state", "succeeded")): 1,
            (("name", FAIL_VALUE), ("queue_name", Q), ("state", "failed")): 2,
            (("name", FAIL_KEY), ("queue_name", Q), ("state", "failed")): 1,
            (("name", SOFT), ("queue_name", Q), ("state", "failed")): 1,
            (("name", HARD), ("queue_name", Q), ("state", "failed")): 1,
            (("name", REJECT), ("queue_name", Q), ("state", "failed")): 1,
        }
    )
    # The time limits bound the runtime of the tasks they stopped from below.
    soft = workload.delta(
        "celery_task_runtime_seconds_sum", name=SOFT, queue_name=Q, state="failed"
    )
    hard = workload.delta(
        "celery_task_runtime_seconds_sum", name=HARD, queue_name=Q, state="failed"
    )
    assert taskapp.SOFT_LIMIT * 0.9 <= soft < 5.0
    assert 0.9 <= hard < 5.0
    # One observation per start; the retried task is checked in test_retried_task_waits_observed_per_start.
    once_each = {(("name", n), ("queue_name", Q)): c for n, c in RUNS.items() if n != RETRY}
    for family in (
        "celery_task_queue_wait_seconds_count",
        "celery_task_prefetch_wait_seconds_count",
    ):
        observed = {k: v for k, v in workload.deltas(family).items() if ("name", RETRY) not in k}
        assert observed == _sorted(once_each), family


def test_gauges_settle(workload: Workload, worker: WorkerProcess) -> None:
    """Once every task is done nothing is active, busy, reserved or tracked; the worker is up."""
    after = workload.after
    for name in RUNS:
        assert value(after, "celery_tasks_active", name=name, queue_name=Q) == 0, name
        assert (("celery_tasks_active", frozenset({("name", name), ("queue_name", Q)}))) in after
    host = worker.nodename
    assert value(after, "celery_worker_pool_busy", hostname=host) == 0
    assert value(after, "celery_worker_tasks_reserved", hostname=host) == 0
    assert value(after, "celery_worker_tasks_active", hostname=host) == 0
    tracked = workload.delta("celery_exporter_tracked_tasks")
    assert tracked == 0, "tasks left in the in-flight table"
    assert value(after, "celery_worker_up", hostname=host) == 1
    info = {
        "hostname": host,
        "sw_ident": "py-celery",
        "sw_ver": celery.__version__,
        "sw_sys": platform.system(),
    }
    assert value(after, "celery_worker_info", **info) == 1
    processed = workload.delta("celery_worker_tasks_processed_total", hostname=host)
    assert processed == sum(RUNS.values())  # Celery counts each run it accepted


def test_retried_task_waits_observed_per_start(workload: Workload) -> None:
    """A retried task's second start is observed in the queue and prefetch wait histograms too."""
    for family in (
        "celery_task_queue_wait_seconds_count",
        "celery_task_prefetch_wait_seconds_count",
    ):
        assert workload.delta(family, name=RETRY, queue_name=Q) == 2, family


def test_reject_failure_labelled_with_class(workload: Workload) -> None:
    """The task-failed Celery sends for Reject(requeue=False) counts under exception="Reject"."""
    assert workload.deltas("celery_task_failed_total") == _sorted(
        {**FAILED, (("name", REJECT), ("queue_name", Q), ("exception", "Reject")): 1}
    )


def test_failures_per_minute(workload: Workload) -> None:
    """Right after the workload, the failures of the last minute are counted per task."""
    assert (
        value(workload.after, "celery_task_failures_per_minute", name=FAIL_VALUE, queue_name=Q) == 2
    )
    assert value(workload.after, "celery_task_failures_per_minute", name=HARD, queue_name=Q) == 1
