"""One poll's figures per queue, and the backend for each kind of broker.

``backend_for`` picks :class:`~celery_exporter.broker.redis_queues.RedisBackend` for
``redis://``, ``rediss://`` and ``sentinel://``, and
:class:`~celery_exporter.broker.rabbitmq.RabbitMQBackend` for ``amqp://`` and ``amqps://``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .connection import Broker

#: Looks up when a task still waiting was sent (from task-sent events), by task id.
SentLookup = Callable[[str], "float | None"]


@dataclass
class Measurement:
    """One poll's figures per queue; ``None`` where the broker cannot tell."""

    length: dict[str, int] = field(default_factory=dict)
    unacked: dict[str, int] | None = None
    consumers: dict[str, int] | None = None
    oldest_sent: dict[str, float] = field(default_factory=dict)


class Backend(Protocol):
    """Measures queues on one kind of broker."""

    def measure(self, queues: Sequence[str], sent: SentLookup | None = None) -> Measurement:
        """Return the figures of ``queues``; ``sent`` dates the oldest waiting messages."""
        ...


def backend_for(broker: Broker, management_url: str | None = None) -> Backend:
    """The backend for the broker URL's transport."""
    from .rabbitmq import RabbitMQBackend
    from .redis_queues import RedisBackend

    scheme = broker.scheme
    if scheme in ("redis", "rediss", "sentinel"):
        return RedisBackend(broker.url, broker.transport_options, broker.ssl_options)
    if scheme in ("amqp", "amqps", "pyamqp", "librabbitmq"):
        return RabbitMQBackend(broker, management_url)
    raise ValueError(f"queue depth is not supported on the {scheme!r} transport")
