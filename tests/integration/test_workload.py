"""A known workload through a real prefork worker gives exactly the expected metrics.

What Celery 5.7 really publishes for the workload (watched on the broker):

* every task sent gets task-sent (from the client) and task-received;
* a retry publishes the new message (task-sent, from the pool process, and task-received with an
  ETA) before the worker's task-retried for the first run;
* the soft time limit ends in one task-failed ``SoftTimeLimitExceeded()``;
* the hard time limit ends in two task-failed ``ExceptionWithTraceback()`` (pool and request),
  the class being on the traceback's last line;
* the revoked ETA task gets task-received, then task-revoked when its ETA comes, no task-started;
* ``Reject(requeue=False)`` with ``acks_late`` gives task-failed (exception text
  ``reject requeue=False: not wanted``, the class on the traceback's last line) then
  task-rejected with ``requeue: false``.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from typing import Any

import celery
import pytest

from tests.integration import taskapp
from tests.integration.conftest import (
    EVENT_TIMEOUT,
    Client,
    ExporterProcess,
    WorkerProcess,
    get,
    now,
    sample,
    wait_heartbeat_after,
    wait_metrics,
)
from tests.support import Sample, value

pytestmark = pytest.mark.integration

Q = "celery"
SUCCEED = taskapp.succeed.name
FAIL_VALUE = taskapp.fail_value.name
FAIL_KEY = taskapp.fail_key.name
RETRY = taskapp.retry_once.name
SOFT = taskapp.soft_timeout.name
HARD = taskapp.hard_timeout.name
REVOKED = taskapp.revoked.name
REJECT = taskapp.reject.name
#: How far ahead the revoked task is due: long enough to revoke it first, on a busy machine too.
REVOKE_COUNTDOWN = 8

#: How many of each task the workload sends.
WORKLOAD = {
    SUCCEED: 5,
    FAIL_VALUE: 2,
    FAIL_KEY: 1,
    RETRY: 1,
    SOFT: 1,
    HARD: 1,
    REVOKED: 1,
    REJECT: 1,
}
#: Tasks that run (all but the revoked one); the retried one runs twice.
RUNS = {SUCCEED: 5, FAIL_VALUE: 2, FAIL_KEY: 1, RETRY: 2, SOFT: 1, HARD: 1, REJECT: 1}
#: Each message published, the retry's included, is sent and received once.
MESSAGES = {**RUNS, REVOKED: 1}

#: Raw events the worker and client publish for the workload, by type.
EVENTS = {
    "task-sent": sum(MESSAGES.values()),
    "task-received": sum(MESSAGES.values()),
    "task-started": sum(RUNS.values()),
    "task-succeeded": 6,
    "task-failed": 7,  # 2 ValueError, 1 KeyError, 1 soft, 2 hard, 1 Reject
    "task-retried": 1,
    "task-revoked": 1,
    "task-rejected": 1,
}

#: Expected increase of each task counter, by label set.
COUNTERS: dict[str, dict[tuple[tuple[str, str], ...], int]] = {
    "celery_task_sent_total": {(("name", n), ("queue_name", Q)): c for n, c in MESSAGES.items()},
    "celery_task_received_total": {
        (("name", n), ("queue_name", Q)): c for n, c in MESSAGES.items()
    },
    "celery_task_started_total": {(("name", n), ("queue_name", Q)): c for n, c in RUNS.items()},
    "celery_task_succeeded_total": {
        (("name", SUCCEED), ("queue_name", Q)): 5,
        (("name", RETRY), ("queue_name", Q)): 1,
    },
    "celery_task_retried_total": {
        (("name", RETRY), ("queue_name", Q), ("exception", "RuntimeError")): 1,
    },
    "celery_task_revoked_total": {(("name", REVOKED), ("queue_name", Q)): 1},
    "celery_task_rejected_total": {(("name", REJECT), ("queue_name", Q)): 1},
}
#: Expected increase of celery_task_failed_total, Reject aside (see test_reject_failure_labelled_with_class).
FAILED = {
    (("name", FAIL_VALUE), ("queue_name", Q), ("exception", "ValueError")): 2,
    (("name", FAIL_KEY), ("queue_name", Q), ("exception", "KeyError")): 1,
    (("name", SOFT), ("queue_name", Q), ("exception", "SoftTimeLimitExceeded")): 1,
    (("name", HARD), ("queue_name", Q), ("exception", "TimeLimitExceeded")): 1,
}


def send_workload(client: Client, workload: Mapping[str, int], **options: Any) -> str | None:
    """Send every task of ``workload`` (the revoked one with a countdown); return that one's id."""
    for name, count in workload.items():
        if name != REVOKED:
            for i in range(count):
                client.send(name, args=(i,) if name == SUCCEED else (), **options)
    if REVOKED not in workload:
        return None
    return client.send(REVOKED, countdown=REVOKE_COUNTDOWN, **options)


class Workload:
    """Scrapes before and after the workload, and the deltas between them."""

    def __init__(self, before: Mapping[Sample, float], after: Mapping[Sample, float]) -> None:
        self.before = before
        self.after = after

    def delta(self, metric: str, /, **labels: str) -> float:
        """Increase of one sample."""
        return get(self.after, metric, **labels) - get(self.before, metric, **labels)

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
        assert get(after, "celery_tasks_active", name=name, queue_name=Q) == 0, name
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
        get(workload.after, "celery_task_failures_per_minute", name=FAIL_VALUE, queue_name=Q) == 2
    )
    assert get(workload.after, "celery_task_failures_per_minute", name=HARD, queue_name=Q) == 1
