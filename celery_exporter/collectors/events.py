"""Metric families rendered at scrape time from a :class:`~celery_exporter.state.Snapshot`."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping, Sequence

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ..state import TASK_COUNTERS, ClusterState, Histogram, LabelKey, Snapshot
from ..web.health import Health

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


class EventCollector(Collector):
    """Task and worker metrics from the event stream."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        """Yield every task and worker family."""
        snap = self.state.snapshot()
        yield from task_families(snap)
        yield from worker_families(snap)
        yield from event_self_families(snap)


class HealthCollector(Collector):
    """Broker connection and build facts about the exporter itself."""

    def __init__(self, health: Health, build: Mapping[str, str]) -> None:
        self.health = health
        self.build = dict(build)

    def collect(self) -> Iterator[Metric]:
        """Yield build info, broker up and reconnects."""
        view = self.health.view()
        info = InfoMetricFamily(
            "celery_exporter_build", "Version of the exporter and its libraries."
        )
        info.add_metric([], self.build)
        yield info
        yield GaugeMetricFamily(
            "celery_exporter_broker_up",
            "1 when the exporter is connected to the broker and consuming events.",
            value=1 if view.broker_up else 0,
        )
        yield CounterMetricFamily(
            "celery_exporter_reconnects",
            "Times the broker connection was lost and the exporter reconnected or tried to.",
            value=view.reconnects,
        )
        yield CounterMetricFamily(
            "celery_exporter_event_stream_gaps",
            "Times a live event subscription was cut (events published until it was back are lost).",
            value=view.gaps,
        )
        if view.last_gap is not None:
            yield GaugeMetricFamily(
                "celery_exporter_event_stream_last_gap_timestamp_seconds",
                "When the event subscription was last cut.",
                value=view.last_gap,
            )


def task_families(snap: Snapshot) -> Iterator[Metric]:
    """Yield the ``celery_task_*`` families."""
    labels = list(snap.task_labels)
    for kind in TASK_COUNTERS:
        extra = ["exception"] if kind in _WITH_EXCEPTION else []
        yield _counter(f"celery_task_{kind}", _TASK_HELP[kind], labels + extra, snap.counters[kind])
    yield _counter(
        "celery_task_timeouts",
        "Tasks stopped by their soft or hard time limit, by kind.",
        [*labels, "kind"],
        snap.timeouts,
    )
    yield _histogram(
        "celery_task_runtime_seconds",
        "Time tasks ran, from start to success or failure, by final state.",
        [*labels, "state"],
        snap.runtime,
    )
    yield _histogram(
        "celery_task_queue_wait_seconds",
        "Time from task-sent (or the ETA, if later) to task-started; tasks with a task-sent event.",
        labels,
        snap.queue_wait,
    )
    yield _histogram(
        "celery_task_prefetch_wait_seconds",
        "Time from task-received (or the ETA, if later) to task-started.",
        labels,
        snap.prefetch_wait,
    )
    yield _gauge(
        "celery_task_failures_per_minute",
        "Task failures in the last 60 seconds.",
        labels,
        snap.failures_per_minute,
    )
    active = GaugeMetricFamily(
        "celery_tasks_active", "Tasks started and not yet finished.", labels=labels
    )
    oldest = GaugeMetricFamily(
        "celery_tasks_active_oldest_start_timestamp_seconds",
        "Start time of the oldest task started and not yet finished.",
        labels=labels,
    )
    for key, (count, started) in sorted(snap.active.items()):
        active.add_metric(key, count)
        if count:
            oldest.add_metric(key, started)
    yield active
    yield oldest


def worker_families(snap: Snapshot) -> Iterator[Metric]:
    """Yield the ``celery_worker_*`` families."""
    host = ["hostname"]
    up = GaugeMetricFamily(
        "celery_worker_up", "1 while the worker sends heartbeats, else 0.", labels=host
    )
    shutdown = GaugeMetricFamily(
        "celery_worker_shutdown_timestamp_seconds",
        "When the worker announced its shutdown (worker-offline); absent while it is up and for "
        "a worker lost without one.",
        labels=host,
    )
    heartbeat = GaugeMetricFamily(
        "celery_worker_last_heartbeat_timestamp_seconds",
        "When the exporter last received a heartbeat from the worker.",
        labels=host,
    )
    active = GaugeMetricFamily(
        "celery_worker_tasks_active",
        "Tasks the worker executes, from its last heartbeat.",
        labels=host,
    )
    busy = GaugeMetricFamily(
        "celery_worker_pool_busy",
        "Tasks executing in the worker's pool, from task events.",
        labels=host,
    )
    reserved = GaugeMetricFamily(
        "celery_worker_tasks_reserved",
        "Tasks the worker received and has not started.",
        labels=host,
    )
    processed = CounterMetricFamily(
        "celery_worker_tasks_processed", "Tasks the worker processed since it started.", labels=host
    )
    loads = [
        GaugeMetricFamily(
            f"celery_worker_load{n}", f"The worker host's {n}-minute load average.", labels=host
        )
        for n in (1, 5, 15)
    ]
    info = InfoMetricFamily("celery_worker", "Software the worker runs.", labels=["hostname"])
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
    events = CounterMetricFamily(
        "celery_exporter_events",
        "Events received, by type (unknown types as 'other').",
        labels=["type"],
    )
    for etype, count in sorted(snap.events.items()):
        events.add_metric([etype], count)
    yield events
    malformed = CounterMetricFamily(
        "celery_exporter_events_malformed",
        "Messages on the event exchange that could not be decoded, by reason.",
        labels=["reason"],
    )
    for reason, count in sorted(snap.malformed.items()):
        malformed.add_metric([reason], count)
    yield malformed
    yield CounterMetricFamily(
        "celery_exporter_events_duplicate",
        "Final task events repeated for a task already counted (e.g. two task-failed for one hard "
        "time limit); counted here and not again in celery_task_*.",
        value=snap.duplicates,
    )
    if snap.last_event is not None:
        yield GaugeMetricFamily(
            "celery_exporter_last_event_timestamp_seconds",
            "When the exporter last received an event.",
            value=snap.last_event,
        )
    yield GaugeMetricFamily(
        "celery_exporter_tracked_tasks", "Tasks in the in-flight table.", value=snap.tracked_tasks
    )
    yield CounterMetricFamily(
        "celery_exporter_tracked_tasks_evicted",
        "Tasks dropped from the full in-flight table, oldest first (see --max-tracked-tasks).",
        value=snap.tasks_evicted,
    )
    overflow = CounterMetricFamily(
        "celery_exporter_label_overflow",
        "Events whose label value was replaced by 'other' because the label's cap was reached.",
        labels=["label"],
    )
    for label, count in sorted(snap.overflow.items()):
        overflow.add_metric([label], count)
    yield overflow


def _counter(
    name: str, doc: str, labels: Sequence[str], values: Mapping[LabelKey, int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(key, value)
    return family


def _gauge(
    name: str, doc: str, labels: Sequence[str], values: Mapping[LabelKey, float]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(key, value)
    return family


def _histogram(
    name: str, doc: str, labels: Sequence[str], hists: Mapping[LabelKey, Histogram]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
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
