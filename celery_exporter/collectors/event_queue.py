"""The ``event_queue`` collector: depth, bound and overflow of the ``--event-queue`` (RabbitMQ).

Reads what the event consumer noted in its :class:`~celery_exporter.events.durable.EventQueue`
(the options ``--event-queue``, ``--event-queue-expires`` and ``--event-queue-max-length``);
it is only registered when ``--event-queue`` is given.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric

from ..events.durable import EventQueue
from .base import Family, describe

MESSAGES = Family(
    "celery_exporter_event_queue_messages",
    "gauge",
    "Event messages waiting in the --event-queue when the exporter last looked (once a second).",
)
MAX_LENGTH = Family(
    "celery_exporter_event_queue_max_length",
    "gauge",
    "Most messages the --event-queue holds before RabbitMQ drops the oldest.",
)
DROPPED = Family(
    "celery_exporter_event_queue_dropped",
    "counter",
    "Event messages RabbitMQ dropped from the head of the full --event-queue (dead-lettered "
    "into its .dropped queue and counted there).",
)
FAMILIES = (MESSAGES, MAX_LENGTH, DROPPED)


class EventQueueCollector:
    """Depth, length bound and dropped messages of the durable event queue."""

    name = "event_queue"

    def __init__(self, queue: EventQueue) -> None:
        self.queue = queue

    def describe(self) -> Iterator[Metric]:
        """Yield the event queue families without samples."""
        return describe(FAMILIES)

    def collect(self) -> Iterator[Metric]:
        """Yield the last depth seen (once seen), the length bound and the dropped count."""
        messages, dropped = self.queue.read()
        if messages is not None:
            yield MESSAGES.value(messages)
        yield MAX_LENGTH.value(self.queue.max_length)
        yield DROPPED.value(dropped)
