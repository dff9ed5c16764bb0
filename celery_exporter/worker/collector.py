"""The in-worker exporter's families: tasks from its signals, and what only the worker knows."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from ..collectors.base import Family, describe
from ..collectors.events import TASK_FAMILIES, task_families
from ..collectors.exporter import BUILD, build_info
from .signals import ERROR_KINDS

if TYPE_CHECKING:
    from .exporter import WorkerExporter

_HOST = ("hostname",)
UP = Family("celery_worker_up", "gauge", "1 while the worker serves its metrics.", _HOST)
POOL_BUSY = Family(
    "celery_worker_pool_busy", "gauge", "Tasks executing in the worker's pool now.", _HOST
)
POOL_SIZE = Family("celery_worker_pool_size", "gauge", "The pool's maximum concurrency.", _HOST)
TASKS_RESERVED = Family(
    "celery_worker_tasks_reserved", "gauge", "Tasks the worker received and has not started.", _HOST
)
PREFETCH_COUNT = Family(
    "celery_worker_prefetch_count", "gauge", "The worker's current prefetch count.", _HOST
)
TASK_ERRORS = Family(
    "celery_worker_task_errors",
    "counter",
    "Messages the worker could not run, by kind (unknown_task, invalid_message, internal_error).",
    ("hostname", "kind"),
)
EVENTS_DROPPED = Family(
    "celery_exporter_worker_events_dropped",
    "counter",
    "Signal events a pool process could not hand to the main process (not counted).",
)
FAMILIES = (UP, POOL_BUSY, POOL_SIZE, TASKS_RESERVED, PREFETCH_COUNT, TASK_ERRORS, EVENTS_DROPPED)


class WorkerCollector:
    """Task families from the worker's signals, and the pool figures only the worker knows."""

    name = "worker"

    def __init__(self, exporter: WorkerExporter) -> None:
        # Imported here, on the worker's main thread as it starts: a first import of a Celery
        # module from the HTTP thread while the main thread imports others can fail (Celery's
        # lazy modules), which made early scrapes fail.
        from celery.worker import state as worker_state

        self.worker_state = worker_state
        self.exporter = exporter
        self.build = dict(build_info())

    def describe(self) -> Iterable[Metric]:
        """Yield every family ``collect()`` yields, without samples."""
        return describe((*TASK_FAMILIES, *FAMILIES, BUILD))

    def collect(self) -> Iterator[Metric]:
        """Yield the task families, the worker gauges and the exporter's build."""
        worker_state = self.worker_state
        exp = self.exporter
        if exp.state is not None:
            yield from task_families(exp.state.snapshot())
        label = [exp.hostname]
        active = len(worker_state.active_requests)
        reserved = max(len(worker_state.reserved_requests) - active, 0)
        gauges: list[tuple[Family, float | None]] = [
            (UP, 1),
            (POOL_BUSY, active),
            (POOL_SIZE, exp.pool_size()),
            (TASKS_RESERVED, reserved),
            (PREFETCH_COUNT, exp.prefetch_count()),
        ]
        for spec, value in gauges:
            family = spec.gauge()
            if value is not None:
                family.add_metric(label, value)
            yield family
        errors, dropped = exp.counts()
        errors_family = TASK_ERRORS.counter()
        for kind in sorted(ERROR_KINDS.values()):
            errors_family.add_metric([exp.hostname, kind], errors.get(kind, 0))
        yield errors_family
        yield EVENTS_DROPPED.value(dropped)
        info = BUILD.info()
        info.add_metric([], self.build)
        yield info
