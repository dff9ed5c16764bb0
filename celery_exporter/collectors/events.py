"""The ``events`` collector: task, worker and ingest families from the event stream.

:class:`EventCollector` renders them at scrape time from one
:meth:`~celery_exporter.state.ClusterState.snapshot`; :func:`task_families` also serves the
in-worker exporter. Task families carry the cluster state's task labels (``name``,
``queue_name``, and ``hostname`` with ``--worker-label``) before their own.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping, Sequence

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ..events.envelope import MALFORMED_REASONS
from ..state import TASK_COUNTERS, ClusterState, Histogram, LabelKey, Snapshot
from .base import Family, describe

_TASK_HELP = {
    "sent": "Tasks published by producers (task-sent events).",
    "received": "Tasks received by workers (task-received events).",
    "started": "Tasks started by workers (task-started events).",
    "succeeded": "Tasks that succeeded (task-succeeded events).",
    "failed": "Tasks that failed, by exception class (task-failed events).",
    "retried": "Tasks retried, by exception class (task-retried events).",
    "revoked": "Tasks revoked (task-revoked events).",
    "rejected": "Tasks rejected by workers (task-rejected events).",
}
_WITH_EXCEPTION = frozenset({"failed", "retried"})

# Task families: their labels follow the task labels.
TASK_COUNTER_FAMILIES = {
    kind: Family(
        f"celery_task_{kind}",
        "counter",
        _TASK_HELP[kind],
        ("exception",) if kind in _WITH_EXCEPTION else (),
    )
    for kind in TASK_COUNTERS
}
TASK_TIMEOUTS = Family(
    "celery_task_timeouts",
    "counter",
    "Tasks stopped by their soft or hard time limit, by kind.",
    ("kind",),
)
TASK_RUNTIME = Family(
    "celery_task_runtime_seconds",
    "histogram",
    "Time tasks ran, from start to success or failure, by final state.",
    ("state",),
)
TASK_QUEUE_WAIT = Family(
    "celery_task_queue_wait_seconds",
    "histogram",
    "Time from task-sent (or the ETA, if later) to task-started; tasks with a task-sent event.",
)
TASK_PREFETCH_WAIT = Family(
    "celery_task_prefetch_wait_seconds",
    "histogram",
    "Time from task-received (or the ETA, if later) to task-started.",
)
TASK_FAILURES_PER_MINUTE = Family(
    "celery_task_failures_per_minute", "gauge", "Task failures in the last 60 seconds."
)
TASKS_ACTIVE = Family("celery_tasks_active", "gauge", "Tasks started and not yet finished.")
TASKS_ACTIVE_OLDEST = Family(
    "celery_tasks_active_oldest_start_timestamp_seconds",
    "gauge",
    "Start time of the oldest task started and not yet finished.",
)
TASK_FAMILIES = (
    *TASK_COUNTER_FAMILIES.values(),
    TASK_TIMEOUTS,
    TASK_RUNTIME,
    TASK_QUEUE_WAIT,
    TASK_PREFETCH_WAIT,
    TASK_FAILURES_PER_MINUTE,
    TASKS_ACTIVE,
    TASKS_ACTIVE_OLDEST,
)

_HOST = ("hostname",)
WORKER_UP = Family(
    "celery_worker_up", "gauge", "1 while the worker sends heartbeats, else 0.", _HOST
)
WORKER_SHUTDOWN = Family(
    "celery_worker_shutdown_timestamp_seconds",
    "gauge",
    "When the worker announced its shutdown (worker-offline); absent while it is up and for "
    "a worker lost without one.",
    _HOST,
)
WORKER_HEARTBEAT = Family(
    "celery_worker_last_heartbeat_timestamp_seconds",
    "gauge",
    "When the exporter last received a heartbeat from the worker.",
    _HOST,
)
WORKER_TASKS_ACTIVE = Family(
    "celery_worker_tasks_active",
    "gauge",
    "Tasks the worker executes, from its last heartbeat.",
    _HOST,
)
WORKER_POOL_BUSY = Family(
    "celery_worker_pool_busy",
    "gauge",
    "Tasks executing in the worker's pool, from task events.",
    _HOST,
)
WORKER_TASKS_RESERVED = Family(
    "celery_worker_tasks_reserved",
    "gauge",
    "Tasks the worker received and has not started.",
    _HOST,
)
WORKER_TASKS_PROCESSED = Family(
    "celery_worker_tasks_processed",
    "counter",
    "Tasks the worker processed since it started.",
    _HOST,
)
WORKER_LOADS = tuple(
    Family(f"celery_worker_load{n}", "gauge", f"The worker host's {n}-minute load average.", _HOST)
    for n in (1, 5, 15)
)
WORKER_INFO = Family("celery_worker", "info", "Software the worker runs.", _HOST)
WORKER_FAMILIES = (
    WORKER_UP,
    WORKER_SHUTDOWN,
    WORKER_HEARTBEAT,
    WORKER_TASKS_ACTIVE,
    WORKER_POOL_BUSY,
    WORKER_TASKS_RESERVED,
    WORKER_TASKS_PROCESSED,
    *WORKER_LOADS,
    WORKER_INFO,
)

EVENTS = Family(
    "celery_exporter_events",
    "counter",
    "Events received, by type (unknown types as 'other').",
    ("type",),
)
EVENTS_MALFORMED = Family(
    "celery_exporter_events_malformed",
    "counter",
    "Messages on the event exchange that could not be decoded, by reason.",
    ("reason",),
)
EVENTS_DUPLICATE = Family(
    "celery_exporter_events_duplicate",
    "counter",
    "Final task events repeated for a task already counted (e.g. two task-failed for one hard "
    "time limit); counted here and not again in celery_task_*.",
)
LAST_EVENT = Family(
    "celery_exporter_last_event_timestamp_seconds",
    "gauge",
    "When the exporter last received an event.",
)
TRACKED_TASKS = Family("celery_exporter_tracked_tasks", "gauge", "Tasks in the in-flight table.")
TRACKED_TASKS_EVICTED = Family(
    "celery_exporter_tracked_tasks_evicted",
    "counter",
    "Tasks dropped from the full in-flight table, oldest first (see --max-tracked-tasks).",
)
LABEL_OVERFLOW = Family(
    "celery_exporter_label_overflow",
    "counter",
    "Events whose label value was replaced by 'other' because the label's cap was reached.",
    ("label",),
)
EVENT_SELF_FAMILIES = (
    EVENTS,
    EVENTS_MALFORMED,
    EVENTS_DUPLICATE,
    LAST_EVENT,
    TRACKED_TASKS,
    TRACKED_TASKS_EVICTED,
    LABEL_OVERFLOW,
)


class EventCollector(Collector):
    """Task and worker metrics from the event stream."""

    name = "events"

    def __init__(self, state: ClusterState) -> None:
        self.state = state

    def describe(self) -> Iterator[Metric]:
        """Yield every task, worker and ingest family without samples."""
        return describe((*TASK_FAMILIES, *WORKER_FAMILIES, *EVENT_SELF_FAMILIES))

    def collect(self) -> Iterator[Metric]:
        """Yield every task and worker family."""
        snap = self.state.snapshot()
        yield from task_families(snap)
        yield from worker_families(snap)
        yield from event_self_families(snap)


def task_families(snap: Snapshot) -> Iterator[Metric]:
    """Yield the ``celery_task_*`` families."""
    labels = snap.task_labels
    for kind in TASK_COUNTERS:
        yield _counter(TASK_COUNTER_FAMILIES[kind], labels, snap.counters[kind])
    yield _counter(TASK_TIMEOUTS, labels, snap.timeouts)
    yield _histogram(TASK_RUNTIME, labels, snap.runtime)
    yield _histogram(TASK_QUEUE_WAIT, labels, snap.queue_wait)
    yield _histogram(TASK_PREFETCH_WAIT, labels, snap.prefetch_wait)
    yield _gauge(TASK_FAILURES_PER_MINUTE, labels, snap.failures_per_minute)
    active = TASKS_ACTIVE.gauge(labels)
    oldest = TASKS_ACTIVE_OLDEST.gauge(labels)
    for key, (count, started) in sorted(snap.active.items()):
        active.add_metric(key, count)
        if count:
            oldest.add_metric(key, started)
    yield active
    yield oldest


def worker_families(snap: Snapshot) -> Iterator[Metric]:
    """Yield the ``celery_worker_*`` families."""
    up = WORKER_UP.gauge()
    shutdown = WORKER_SHUTDOWN.gauge()
    heartbeat = WORKER_HEARTBEAT.gauge()
    active = WORKER_TASKS_ACTIVE.gauge()
    busy = WORKER_POOL_BUSY.gauge()
    reserved = WORKER_TASKS_RESERVED.gauge()
    processed = WORKER_TASKS_PROCESSED.counter()
    loads = [spec.gauge() for spec in WORKER_LOADS]
    info = WORKER_INFO.info()
    for name, (is_up, w) in sorted(snap.workers.items()):
        label = [name]
        up.add_metric(label, 1 if is_up else 0)
        if not w.online and w.offline_since is not None:
            shutdown.add_metric(label, w.offline_since)
        if w.last_heartbeat is not None:
            heartbeat.add_metric(label, w.last_heartbeat)
        active.add_metric(label, w.active if is_up else 0)
        busy.add_metric(label, w.busy if is_up else 0)
        reserved.add_metric(label, w.reserved if is_up else 0)
        processed.add_metric(label, w.processed)
        if w.loadavg is not None:
            for family, value in zip(loads, w.loadavg, strict=True):
                family.add_metric(label, value)
        if w.sw_ident or w.sw_ver or w.sw_sys:
            info.add_metric(label, {"sw_ident": w.sw_ident, "sw_ver": w.sw_ver, "sw_sys": w.sw_sys})
    yield from (up, shutdown, heartbeat, active, busy, reserved, processed, *loads, info)


def event_self_families(snap: Snapshot) -> Iterator[Metric]:
    """Yield the self-metrics about event ingest."""
    events = EVENTS.counter()
    for etype, count in sorted(snap.events.items()):
        events.add_metric([etype], count)
    yield events
    malformed = EVENTS_MALFORMED.counter()
    # Every known reason starts at 0, so a healthy cluster shows a flat line, not "No data".
    counts = dict.fromkeys(MALFORMED_REASONS, 0) | snap.malformed
    for reason, count in sorted(counts.items()):
        malformed.add_metric([reason], count)
    yield malformed
    yield EVENTS_DUPLICATE.value(snap.duplicates)
    if snap.last_event is not None:
        yield LAST_EVENT.value(snap.last_event)
    yield TRACKED_TASKS.value(snap.tracked_tasks)
    yield TRACKED_TASKS_EVICTED.value(snap.tasks_evicted)
    overflow = LABEL_OVERFLOW.counter()
    for label, count in sorted(snap.overflow.items()):
        overflow.add_metric([label], count)
    yield overflow


def _counter(
    spec: Family, labels: Sequence[str], values: Mapping[LabelKey, int]
) -> CounterMetricFamily:
    family = spec.counter(labels)
    for key, value in sorted(values.items()):
        family.add_metric(key, value)
    return family


def _gauge(
    spec: Family, labels: Sequence[str], values: Mapping[LabelKey, float]
) -> GaugeMetricFamily:
    family = spec.gauge(labels)
    for key, value in sorted(values.items()):
        family.add_metric(key, value)
    return family


def _histogram(
    spec: Family, labels: Sequence[str], hists: Mapping[LabelKey, Histogram]
) -> HistogramMetricFamily:
    family = spec.histogram(labels)
    for key, hist in sorted(hists.items()):
        buckets = []
        cumulative = 0
        for bound, count in zip((*hist.bounds, math.inf), hist.counts, strict=True):
            cumulative += count
            buckets.append((_le(bound), cumulative))
        family.add_metric(key, buckets, hist.total)
    return family


@functools.cache
def _le(bound: float) -> str:
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]
