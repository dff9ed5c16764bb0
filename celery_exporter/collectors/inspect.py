"""Worker pools from periodic ``inspect`` broadcasts, run in the background.

Every ``--inspect-interval`` (default 30 s) the ``inspect`` collector broadcasts ``stats``,
``active_queues`` and ``scheduled`` to all workers, each waiting :data:`INSPECT_TIMEOUT` seconds
for replies (the whole poll may take the interval, or 3 timeouts + 10 s if longer), on its own
thread (see :mod:`celery_exporter.collectors.polling`); scrapes only read the last answers.
It reads these options:

- ``--broker-url``, ``--broker-transport-option``, ``--broker-ssl-option``: how to reach the
  broker, as for the event stream.
- ``--inspect-interval``: how often to broadcast; a worker that does not answer keeps its last
  answer for :data:`KEEP_INTERVALS` intervals, then its series go.
- ``--inspect-collector`` / ``--no-inspect-collector``: whether to run at all.

From the replies it renders ``celery_worker_pool_size`` (the pool's ``max-concurrency``, or the
autoscaler's ``max``), ``celery_worker_prefetch_count`` and ``celery_worker_tasks_scheduled``
(ETA/countdown tasks the worker holds). ``active_queues`` feeds
:class:`~celery_exporter.state.WorkerQueues` (read by the cluster state) and the per-queue consumer count
on Redis (:meth:`InspectCollector.consumers`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from ..broker import Broker, celery_app
from ..state import WorkerQueues
from .base import Family, Status, describe
from .polling import Poller, status_of

#: Seconds each broadcast waits for replies.
INSPECT_TIMEOUT = 1.0
#: Intervals a worker that stops answering keeps its last answer.
KEEP_INTERVALS = 3

Replies = Mapping[str, Any]

_HOST = ("hostname",)
POOL_SIZE = Family(
    "celery_worker_pool_size",
    "gauge",
    "Processes or threads the worker's pool may run (max-concurrency; autoscale max).",
    _HOST,
)
PREFETCH_COUNT = Family(
    "celery_worker_prefetch_count",
    "gauge",
    "Messages the worker may hold unacknowledged (its prefetch count).",
    _HOST,
)
TASKS_SCHEDULED = Family(
    "celery_worker_tasks_scheduled",
    "gauge",
    "ETA/countdown tasks the worker holds until they are due.",
    _HOST,
)
FAMILIES = (POOL_SIZE, PREFETCH_COUNT, TASKS_SCHEDULED)


@dataclass(frozen=True)
class WorkerReport:
    """What one worker last answered, and when."""

    pool_size: int | None
    prefetch_count: int | None
    scheduled: int | None
    queues: tuple[str, ...] | None
    seen: float


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def reports_from(
    stats: Replies, active_queues: Replies, scheduled: Replies, now: float
) -> dict[str, WorkerReport]:
    """Turn the three broadcasts' replies (hostname to answer) into one report per worker."""
    reports = {}
    for host in set(stats) | set(active_queues) | set(scheduled):
        info = stats.get(host)
        pool_size = prefetch = None
        if isinstance(info, dict):
            pool = info.get("pool")
            pool = pool if isinstance(pool, dict) else {}
            autoscaler = info.get("autoscaler")
            if isinstance(autoscaler, dict) and _int(autoscaler.get("max")) is not None:
                pool_size = _int(autoscaler.get("max"))
            else:
                pool_size = _int(pool.get("max-concurrency"))
            prefetch = _int(info.get("prefetch_count"))
        held = scheduled.get(host)
        queues = active_queues.get(host)
        names = None
        if isinstance(queues, list):
            names = tuple(
                sorted({q["name"] for q in queues if isinstance(q, dict) and "name" in q})
            )
        reports[host] = WorkerReport(
            pool_size=pool_size,
            prefetch_count=prefetch,
            scheduled=len(held) if isinstance(held, list) else None,
            queues=names,
            seen=now,
        )
    return reports


def merge(
    previous: Mapping[str, WorkerReport],
    fresh: Mapping[str, WorkerReport],
    now: float,
    keep_for: float,
) -> dict[str, WorkerReport]:
    """Fresh reports, plus previous ones of silent workers younger than ``keep_for``."""
    merged = {h: r for h, r in previous.items() if h not in fresh and now - r.seen < keep_for}
    merged.update(fresh)
    return merged


def consumer_counts(reports: Mapping[str, WorkerReport]) -> dict[str, int]:
    """Queue name to the number of workers consuming it."""
    counts: dict[str, int] = {}
    for report in reports.values():
        for name in report.queues or ():
            counts[name] = counts.get(name, 0) + 1
    return counts


class InspectCollector(Collector):
    """``celery_worker_pool_size``, ``_prefetch_count`` and ``_tasks_scheduled`` per worker."""

    name = "inspect"

    def __init__(
        self,
        broker: Broker,
        worker_queues: WorkerQueues | None,
        interval: float,
        timeout: float = INSPECT_TIMEOUT,
        clock: Callable[[], float] = time.time,
        broadcast: Callable[[], tuple[Replies, Replies, Replies]] | None = None,
        app: Any = None,
    ) -> None:
        self.broker = broker
        self.worker_queues = worker_queues
        self.timeout = timeout
        self.clock = clock
        self.keep_for = KEEP_INTERVALS * interval
        self.broadcast = broadcast or self._broadcast
        self.poller: Poller[dict[str, WorkerReport]] = Poller(
            "inspect", self.poll, interval, timeout=max(interval, 3 * timeout + 10), clock=clock
        )
        self._reports: dict[str, WorkerReport] = {}
        self._app: Any = app

    def _broadcast(self) -> tuple[Replies, Replies, Replies]:
        """Broadcast stats, active_queues and scheduled; return each one's replies."""
        if self._app is None:
            self._app = celery_app(self.broker, "celery-exporter-inspect")
        with self.broker.connection() as conn:
            conn.ensure_connection(max_retries=1)
            inspect = self._app.control.inspect(timeout=self.timeout, connection=conn)
            return inspect.stats() or {}, inspect.active_queues() or {}, inspect.scheduled() or {}

    def poll(self) -> dict[str, WorkerReport]:
        """Broadcast and return the merged reports; hand each worker's queues on."""
        stats, active_queues, scheduled = self.broadcast()
        now = self.clock()
        fresh = reports_from(stats, active_queues, scheduled, now)
        self._reports = merge(self._reports, fresh, now, self.keep_for)
        if self.worker_queues is not None:
            self.worker_queues.replace(
                {h: r.queues for h, r in self._reports.items() if r.queues is not None}
            )
        return dict(self._reports)

    def consumers(self) -> dict[str, int] | None:
        """Queue name to consuming workers, from the last successful poll; None without one."""
        data = self.poller.data
        return None if data is None else consumer_counts(data)

    def reports(self) -> dict[str, WorkerReport]:
        """Each worker's report from the last successful poll (a copy); empty without one."""
        return dict(self.poller.data or {})

    def describe(self) -> Iterator[Metric]:
        """Yield the pool families without samples."""
        return describe(FAMILIES)

    def status(self) -> Status | None:
        """The last poll's outcome."""
        return status_of(self.poller)

    def collect(self) -> Iterator[Metric]:
        """Yield the pool families from the last successful poll."""
        size, prefetch, scheduled = (spec.gauge() for spec in FAMILIES)
        for name, report in sorted((self.poller.data or {}).items()):
            if report.pool_size is not None:
                size.add_metric([name], report.pool_size)
            if report.prefetch_count is not None:
                prefetch.add_metric([name], report.prefetch_count)
            if report.scheduled is not None:
                scheduled.add_metric([name], report.scheduled)
        yield from (size, prefetch, scheduled)
