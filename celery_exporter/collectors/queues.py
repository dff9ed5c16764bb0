"""Queue depth from the broker, polled in the background: ``celery_queue_*``.

Every ``--queue-interval`` (default 10 s) the ``queues`` collector measures its queues on a
thread of its own, within the interval or :data:`POLL_TIMEOUT` if longer (see
:mod:`celery_exporter.collectors.polling`); scrapes only read the last figures. How each broker
is measured is :mod:`celery_exporter.broker`'s (``redis_queues``, ``rabbitmq``, ``sqs``). On
SQS it also reports ``celery_queue_delayed`` (messages held back by a countdown or an ETA) and
``celery_queue_dead_letter_info``, which ties each queue to the dead-letter queue its redrive
policy names (measured as a queue of its own).

It reads these options:

- ``--queues``: queues always reported, at 0 before any worker exists.
- ``--queue-interval``: how often to measure.
- ``--queue-purge-after`` (default 1 h): a queue that is not configured, not consumed and
  empty (no ready, unacknowledged or delayed message) for this long is no longer reported; it
  is still measured, and comes back as soon as it holds a message or a worker consumes it.
  Queues the broker's own configuration names (SQS ``queue_name_prefix``, ``predefined_queues``
  and dead-letter queues) are reported like configured ones.

Besides the configured ones it measures the queues any worker consumes (``inspect
active_queues``, from :mod:`celery_exporter.collectors.inspect`) and those named by
``task-sent`` events; with task-sent events on, the oldest message's send time comes from the
cluster state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from ..broker.measure import Backend, Measurement
from ..state import ClusterState
from .base import Family, Status, describe
from .polling import Poller, status_of

#: Shortest time a whole poll may take before it counts as failed (else the interval).
POLL_TIMEOUT = 15.0

_QUEUE = ("queue_name",)
LENGTH = Family(
    "celery_queue_length", "gauge", "Messages ready in the queue (all priorities).", _QUEUE
)
UNACKED = Family(
    "celery_queue_unacked",
    "gauge",
    "Messages delivered to workers and not yet acknowledged.",
    _QUEUE,
)
CONSUMERS = Family("celery_queue_consumers", "gauge", "Workers consuming the queue.", _QUEUE)
OLDEST_SENT = Family(
    "celery_queue_oldest_message_sent_timestamp_seconds",
    "gauge",
    "When the oldest message waiting in the queue was sent (needs task-sent events).",
    _QUEUE,
)
DELAYED = Family(
    "celery_queue_delayed",
    "gauge",
    "Messages in the queue not yet deliverable: a countdown or ETA the broker holds back (SQS).",
    _QUEUE,
)
DEAD_LETTER = Family(
    "celery_queue_dead_letter",
    "info",
    "The dead-letter queue the queue's redrive policy names (SQS).",
    _QUEUE,
)
FAMILIES = (LENGTH, UNACKED, CONSUMERS, OLDEST_SENT, DELAYED, DEAD_LETTER)


class QueueSet:
    """Configured, consumed and task-sent queues; drops the idle ones after ``purge_after``."""

    def __init__(
        self, configured: Iterable[str], purge_after: float, clock: Callable[[], float]
    ) -> None:
        self.configured = tuple(dict.fromkeys(configured))
        self.purge_after = purge_after
        self.clock = clock
        self.last_active: dict[str, float] = {}

    def candidates(self, consumed: Iterable[str], sent: Iterable[str]) -> list[str]:
        """Every queue to measure: configured, consumed, task-sent and any seen before."""
        return sorted({*self.configured, *consumed, *sent, *self.last_active})

    def reported(self, measured: Measurement, consumed: Iterable[str]) -> list[str]:
        """The measured queues to report, after noting which ones are in use now."""
        now = self.clock()
        busy = set(consumed)
        unacked = measured.unacked or {}
        delayed = measured.delayed or {}
        kept = []
        for queue in sorted(measured.length):
            in_use = (
                queue in busy
                or measured.length[queue] > 0
                or unacked.get(queue, 0) > 0
                or delayed.get(queue, 0) > 0
                or (measured.consumers or {}).get(queue, 0) > 0
            )
            if in_use or queue not in self.last_active:
                self.last_active[queue] = now
            pinned = queue in self.configured or queue in measured.configured
            if pinned or now - self.last_active[queue] < self.purge_after:
                kept.append(queue)
        return kept


class QueueCollector(Collector):
    """``celery_queue_*``: length, unacked, consumers, delayed, oldest message, dead-letter queue."""

    name = "queues"

    def __init__(
        self,
        backend: Backend,
        state: ClusterState | None,
        configured: Iterable[str],
        interval: float,
        purge_after: float,
        consumers: Callable[[], Mapping[str, int] | None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.state = state
        self.consumers = consumers
        self.queues = QueueSet(configured, purge_after, clock)
        self.poller: Poller[Measurement] = Poller(
            "queues", self.poll, interval, timeout=max(interval, POLL_TIMEOUT), clock=clock
        )

    def poll(self) -> Measurement:
        """Measure every candidate queue; return the figures of those to report."""
        consuming = self.consumers()
        sent = self.state.sent_queues() if self.state is not None else set()
        lookup = self.state.sent_timestamp if self.state is not None and sent else None
        measured = self.backend.measure(self.queues.candidates(consuming or {}, sent), lookup)
        keep = self.queues.reported(measured, consuming or {})
        if measured.consumers is None and consuming is not None:
            measured.consumers = {q: consuming.get(q, 0) for q in keep}
        return Measurement(
            length={q: measured.length[q] for q in keep},
            unacked=None if measured.unacked is None else {q: measured.unacked[q] for q in keep},
            consumers=None
            if measured.consumers is None
            else {q: measured.consumers.get(q, 0) for q in keep},
            oldest_sent={q: t for q, t in measured.oldest_sent.items() if q in keep},
            delayed=None if measured.delayed is None else {q: measured.delayed[q] for q in keep},
            dead_letter={q: d for q, d in measured.dead_letter.items() if q in keep},
        )

    def last_poll(self) -> tuple[Measurement | None, float | None]:
        """The last poll's figures (None after a failure) and when a poll last succeeded."""
        return self.poller.latest()

    def describe(self) -> Iterator[Metric]:
        """Yield the queue families without samples."""
        return describe(FAMILIES)

    def status(self) -> Status | None:
        """The last poll's outcome."""
        return status_of(self.poller)

    def collect(self) -> Iterator[Metric]:
        """Yield the queue families from the last successful poll."""
        data = self.poller.data or Measurement()
        values: tuple[Mapping[str, float], ...] = (
            data.length,
            data.unacked or {},
            data.consumers or {},
            data.oldest_sent,
            data.delayed or {},
        )
        for spec, by_queue in zip(FAMILIES[:-1], values, strict=True):
            family = spec.gauge()
            for queue, number in sorted(by_queue.items()):
                family.add_metric([queue], number)
            yield family
        info = DEAD_LETTER.info()
        for queue, dead_letter in sorted(data.dead_letter.items()):
            info.add_metric([queue], {"dead_letter_queue": dead_letter})
        yield info
