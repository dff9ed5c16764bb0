"""The cluster state: one lock over the tables, the dispatch of events, and snapshots.

:class:`ClusterState` is the hot path: every event goes through :meth:`ClusterState.handle_batch`,
which checks it (:mod:`celery_exporter.events.decode`) and hands it to its handler
(:mod:`.handlers`), which updates dicts keyed by label tuples and nothing else. Metric
families are built from a :class:`Snapshot` at scrape time (see
:mod:`celery_exporter.collectors.events`), so an event costs no ``labels()`` lookup and a
scrape holds the lock only for the time it takes to copy some dicts. Workers down for
``--worker-purge-after`` are removed by :meth:`ClusterState.purge`, which the daemon runs on
its own timer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..events.decode import DECODERS, InvalidEvent
from ..events.schema import CLASSES, Event, WorkerEvent
from ..internal import InternalErrors
from ..log import get_logger
from . import queries
from .handlers import TaskHandlers
from .queries import TaskQuery
from .records import TaskRecords, detail_for_update
from .series import TASK_COUNTERS, Histogram, LabelKey, TaskSeries
from .settings import Settings
from .tasks import Task, TaskTable
from .worker_queues import WorkerQueues
from .workers import Worker, WorkerTable

log = get_logger(__name__)

Clock = Callable[[], float]


@dataclass
class Snapshot:
    """A consistent copy of the state, taken under the lock and rendered outside it."""

    now: float
    task_labels: tuple[str, ...]
    counters: dict[str, dict[LabelKey, int]]
    timeouts: dict[LabelKey, int]
    runtime: dict[LabelKey, Histogram]
    queue_wait: dict[LabelKey, Histogram]
    prefetch_wait: dict[LabelKey, Histogram]
    failures_per_minute: dict[LabelKey, int]
    active: dict[LabelKey, tuple[int, float]]
    workers: dict[str, tuple[bool, Worker]]
    events: dict[str, int]
    tracked_tasks: int
    tasks_evicted: int
    duplicates: int
    overflow: dict[str, int]
    last_event: float | None
    malformed: dict[str, int] = field(default_factory=dict)


class ClusterState:
    """Counters, histograms and gauges for the tasks and workers seen in the event stream."""

    def __init__(
        self,
        settings: Settings | None = None,
        clock: Clock = time.time,
        worker_queues: WorkerQueues | None = None,
        errors: InternalErrors | None = None,
    ) -> None:
        self.settings = s = settings or Settings()
        self.clock = clock
        self.lock = threading.Lock()
        self.errors = errors or InternalErrors()
        self.task_labels = (
            ("name", "queue_name", "hostname") if s.worker_label else ("name", "queue_name")
        )
        self.tasks = TaskTable(s.max_tracked_tasks, s.max_finished_tasks)
        self.workers = WorkerTable(s.max_workers, s.worker_timeout, s.worker_purge_after)
        self.series = TaskSeries(s.runtime_buckets, s.wait_buckets)
        self.handlers = TaskHandlers(
            s, self.tasks, self.workers, self.series, worker_queues or WorkerQueues(),
            self._internal_error,
        )  # fmt: skip
        #: Events by type. Every type with a class starts at 0, so that applying a typed event
        #: adds to its count without a lookup's default; the snapshot leaves out the zeros.
        self.events: dict[str, int] = dict.fromkeys(CLASSES, 0)
        self.malformed: dict[str, int] = {}
        self.last_event: float | None = None
        #: Each event type's handler; a task's returns the task it touched (None: a repeat).
        self._apply: dict[str, Callable[[Any, float], Task | None]] = {
            **self.handlers.by_type(),
            "worker-online": self._worker_online,
            "worker-heartbeat": self._worker_heartbeat,
            "worker-offline": self._worker_offline,
            "task-progress": self.handlers.progress,
        }
        #: The task view (``--web.task-api``): its handlers run the series' ones, then add to
        #: the task what the view shows.
        self.records: TaskRecords | None = None
        if s.web_task_api:
            self.records = TaskRecords(
                self.tasks, dict(self._apply), self._internal_error, s.web_show_task_args
            )
            self._apply.update(self.records.handlers())

    # -- input ----------------------------------------------------------------------------------

    def handle_batch(self, events: Iterable[dict[str, Any]]) -> None:
        """Check and apply event objects in order (each with a string ``type``, as parsed)."""
        decoders = DECODERS
        checked: list[Event] = []
        #: Events not applied: of types the state does not apply, and invalid ones (counted
        #: under their types, as every event is).
        skipped: list[str] = []
        invalid = 0
        for raw in events:
            decoder = decoders.get(raw["type"])
            if decoder is None:
                skipped.append("other")
                continue
            event = decoder(raw)
            if isinstance(event, InvalidEvent):
                invalid += 1
                skipped.append(raw["type"])
                continue
            checked.append(event)
        with self.lock:
            counts = self.events
            for etype in skipped:
                counts[etype] = counts.get(etype, 0) + 1
            if invalid:
                self.malformed["schema"] = self.malformed.get("schema", 0) + invalid
            self._apply_locked(checked)

    def apply_batch(self, events: Iterable[Event]) -> None:
        """Apply typed events in order (:mod:`celery_exporter.events.schema`)."""
        with self.lock:
            self._apply_locked(events)

    def _apply_locked(self, events: Iterable[Event]) -> None:
        now = self.clock()
        apply = self._apply
        counts = self.events
        self.last_event = now
        for event in events:
            etype = event.type
            counts[etype] += 1
            try:
                apply[etype](event, now)
            except Exception:
                self._internal_error(etype, "event_handler")

    def handle(self, event: dict[str, Any]) -> None:
        """Apply one event."""
        self.handle_batch((event,))

    def _internal_error(self, etype: str, where: str) -> None:
        """A handler raised: a bug of ours, never bad input. Logged, counted, event skipped."""
        self.errors.count(where)
        log.error(f"{where}_failed", event_type=etype, exc_info=True)

    def count_malformed(self, reason: str, count: int = 1) -> None:
        """Count messages that could not be decoded."""
        with self.lock:
            self.malformed[reason] = self.malformed.get(reason, 0) + count

    # -- worker events --------------------------------------------------------------------------

    def _worker_online(self, event: WorkerEvent, now: float) -> None:
        host = self.workers.hostnames(event.hostname)
        self.handlers.release_tasks_of(host)
        self.workers.seen(host, now, revive=True).heartbeat(event, now)

    def _worker_heartbeat(self, event: WorkerEvent, now: float) -> None:
        host = self.workers.hostnames(event.hostname)
        self.workers.seen(host, now, revive=True).heartbeat(event, now)

    def _worker_offline(self, event: WorkerEvent, now: float) -> None:
        host = self.workers.hostnames(event.hostname)
        self.workers.offline(host, now)
        self.handlers.release_tasks_of(host)

    # -- upkeep ---------------------------------------------------------------------------------

    def purge(self) -> list[str]:
        """Remove workers down for longer than allowed, with their series; return their names."""
        with self.lock:
            gone = self.workers.expired(self.clock())
            for host in gone:
                self.handlers.release_tasks_of(host)
                self.workers.remove(host)
                if self.settings.worker_label:
                    self.series.drop_host(host)
            return gone

    # -- output ---------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Copy the state for rendering."""
        with self.lock:
            now = self.clock()
            series = self.series
            handlers = self.handlers
            return Snapshot(
                now=now,
                task_labels=self.task_labels,
                counters={kind: c.copy() for kind, c in series.counters.items()},
                timeouts=series.timeouts.copy(),
                runtime={k: h.copy() for k, h in series.runtime.items()},
                queue_wait={k: h.copy() for k, h in series.queue_wait.items()},
                prefetch_wait={k: h.copy() for k, h in series.prefetch_wait.items()},
                failures_per_minute={k: w.total(now) for k, w in series.failure_windows.items()},
                active={
                    k: (len(r), min(r.values()) if r else 0.0) for k, r in series.running.items()
                },
                workers=self.workers.views(now),
                events={etype: n for etype, n in self.events.items() if n},
                tracked_tasks=len(self.tasks),
                tasks_evicted=self.tasks.evicted,
                duplicates=self.tasks.duplicates,
                overflow={
                    "name": handlers.names.overflow,
                    "exception": handlers.exceptions.overflow,
                    "queue_name": handlers.queues.overflow,
                    "hostname": self.workers.hostnames.overflow,
                },
                last_event=self.last_event,
                malformed=self.malformed.copy(),
            )

    # -- for the broker collectors --------------------------------------------------------------

    def sent_timestamp(self, uuid: str) -> float | None:
        """When the task-sent of a task still waiting or running was sent, if it was seen."""
        with self.lock:
            return self.tasks.sent_timestamp(uuid)

    def sent_queues(self) -> set[str]:
        """The queue names task-sent events have named."""
        with self.lock:
            return self.series.sent_queues()

    def heartbeat_summary(self) -> Mapping[str, int]:
        """Sum of ``active`` and ``processed`` over the workers, to tell if tasks run unseen."""
        with self.lock:
            workers = self.workers.workers.values()
            return {
                "workers": len(self.workers.workers),
                "active": sum(w.active for w in workers),
                "processed": sum(w.processed for w in workers),
                "task_events": sum(v for k, v in self.events.items() if k.startswith("task-")),
            }

    # -- for the task view ----------------------------------------------------------------------

    def find_tasks(self, query: TaskQuery) -> tuple[list[dict[str, Any]], int]:
        """TASK objects of the newest matching tasks, and how many match in all.

        The lock is held to copy the list of records, then for the few rows answered.
        """
        if self.records is None:
            return [], 0
        with self.lock:
            now = self.clock()
            records = self.tasks.all()
        chosen, total = queries.select(records, query, now)
        with_args = self.settings.web_show_task_args
        with self.lock:
            return [queries.task_row(r, with_args) for r in chosen], total

    def task_detail(self, task_id: str) -> dict[str, Any] | None:
        """The TASK object of one task with its exception, lineage and history, if known."""
        if self.records is None:
            return None
        with self.lock:
            record = self.tasks.find(task_id)
            if record is None:
                return None
            return queries.task_detail(record, self.settings.web_show_task_args)

    def link_retry(self, task_id: str, new_id: str) -> bool:
        """Note that ``new_id`` was sent in place of ``task_id``; False if it has no record."""
        if self.records is None:
            return False
        with self.lock:
            record = self.tasks.find(task_id)
            if record is None:
                return False
            detail_for_update(record).retried_as = new_id
            return True

    def failures(self, since: float) -> list[dict[str, Any]]:
        """Failures in the last ``since`` seconds by task name and exception, most first."""
        if self.records is None:
            return []
        with self.lock:
            rows = self.records.failures.rows(since, self.clock())
        return [queries.failure_row(row) for row in rows]

    def worker_rows(self) -> list[dict[str, Any]]:
        """What the events tell about each worker, by hostname."""
        with self.lock:
            now = self.clock()
            views = self.workers.views(now)
        return [queries.worker_row(host, up, w) for host, (up, w) in sorted(views.items())]


__all__ = ["TASK_COUNTERS", "ClusterState", "Snapshot"]
