"""The named, durable event queue of ``--event-queue`` (RabbitMQ), and what it has dropped.

Reads the options ``--event-queue`` (the queue's name), ``--event-queue-expires`` (RabbitMQ
deletes the queue after it has had no consumer this long, ``x-expires``) and
``--event-queue-max-length`` (``x-max-length``). A full queue drops its oldest message
(``x-overflow: drop-head``) and dead-letters it (reason ``maxlen``) through the fanout exchange
``NAME.dropped`` into the queue ``NAME.dropped``; the consumer drains that queue and counts each
message it finds there, which is the honest count of the events RabbitMQ threw away, also of
those dropped while no exporter was running. That queue has the same expiry and bound: of more
than ``--event-queue-max-length`` messages dropped while no exporter drains it, the count sees
only the newest that many (a lower bound, then).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

#: Messages RabbitMQ delivers ahead of their acknowledgement (per consumer).
PREFETCH = 1000


@dataclass
class EventQueue:
    """One ``--event-queue``: its settings, its last seen depth and the messages it dropped."""

    name: str
    expires: float
    max_length: int
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _messages: int | None = None
    _dropped: int = 0

    @property
    def dropped_name(self) -> str:
        """Name of the dead-letter exchange and queue that hold what the queue dropped."""
        return f"{self.name}.dropped"

    def queues(self, event_exchange: Any) -> tuple[Any, Any]:
        """The kombu event queue (bound to ``event_exchange``) and its dead-letter queue."""
        from kombu import Exchange, Queue

        dead = Exchange(self.dropped_name, type="fanout", durable=True, auto_delete=False)
        # Both outlive the exporter, with the same expiry and bound.
        lasting = {
            "routing_key": "#", "durable": True, "auto_delete": False, "expires": self.expires,
            "max_length": self.max_length,
        }  # fmt: skip
        events = Queue(
            self.name,
            exchange=event_exchange,
            queue_arguments={"x-overflow": "drop-head", "x-dead-letter-exchange": dead.name},
            **lasting,
        )
        dropped = Queue(self.dropped_name, exchange=dead, **lasting)
        return events, dropped

    def saw_depth(self, messages: int) -> None:
        """Note the messages ready in the queue, as a passive declare just told."""
        with self._lock:
            self._messages = messages

    def count_dropped(self, messages: int = 1) -> None:
        """Count messages found in the dead-letter queue."""
        with self._lock:
            self._dropped += messages

    def read(self) -> tuple[int | None, int]:
        """The last depth seen (None before the first look) and the messages dropped so far."""
        with self._lock:
            return self._messages, self._dropped
