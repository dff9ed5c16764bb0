"""One poll's figures per queue, and the backend for each kind of broker.

``backend_for`` picks :class:`~celery_exporter.broker.redis_queues.RedisBackend` for
``redis://``, ``rediss://`` and ``sentinel://``,
:class:`~celery_exporter.broker.rabbitmq.RabbitMQBackend` for ``amqp://`` and ``amqps://``, and
:class:`~celery_exporter.broker.sqs.SQSBackend` for ``sqs://`` (it needs boto3, the ``sqs``
extra).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .connection import Broker

if TYPE_CHECKING:
    from ..web.health import Health

#: Looks up when a task still waiting was sent (from task-sent events), by task id.
SentLookup = Callable[[str], "float | None"]


@dataclass
class Measurement:
    """One poll's figures per queue; ``None`` where the broker cannot tell.

    ``delayed`` counts messages held back until their delay ends (SQS), ``dead_letter`` names
    each queue's dead-letter queue, and ``configured`` the queues the broker's own
    configuration names, which are reported like ``--queues``.
    """

    length: dict[str, int] = field(default_factory=dict)
    unacked: dict[str, int] | None = None
    consumers: dict[str, int] | None = None
    oldest_sent: dict[str, float] = field(default_factory=dict)
    delayed: dict[str, int] | None = None
    dead_letter: dict[str, str] = field(default_factory=dict)
    configured: frozenset[str] = frozenset()


class Backend(Protocol):
    """Measures queues on one kind of broker."""

    def measure(self, queues: Sequence[str], sent: SentLookup | None = None) -> Measurement:
        """Return the figures of ``queues``; ``sent`` dates the oldest waiting messages."""
        ...


def backend_for(
    broker: Broker, management_url: str | None = None, health: Health | None = None
) -> Backend:
    """The backend for the broker URL's transport; on SQS its polls tell ``health``."""
    from .rabbitmq import RabbitMQBackend
    from .redis_queues import RedisBackend

    scheme = broker.scheme
    if scheme in ("redis", "rediss", "sentinel"):
        return RedisBackend(broker.url, broker.transport_options, broker.ssl_options)
    if scheme in ("amqp", "amqps", "pyamqp", "librabbitmq"):
        return RabbitMQBackend(broker, management_url)
    if scheme == "sqs":
        try:
            from .sqs import SQSBackend
        except ImportError:  # boto3 is the sqs extra's
            raise ValueError(
                "queue depth on sqs:// needs boto3: pip install 'celery-exporter[sqs]'"
            ) from None
        return SQSBackend(broker, health)
    raise ValueError(f"queue depth is not supported on the {scheme!r} transport")
