"""--event-queue is for RabbitMQ only: anywhere else it stops the exporter at start."""

from __future__ import annotations

from typing import Any

import pytest

from celery_exporter.config import load
from celery_exporter.events.durable import EventQueue

REDIS_WHY = (
    "Redis pub/sub keeps nothing for a subscriber that is gone; run two exporters instead "
    "(see README, Exporter restarts)"
)


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("redis://127.0.0.1:6379/0", "redis"),
        ("rediss://127.0.0.1:6380/0", "rediss"),
        ("sentinel://127.0.0.1:26379", "sentinel"),
    ],
)
def test_event_queue_on_redis_exits_2(
    url: str, scheme: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--event-queue with a Redis broker exits 2 saying it is RabbitMQ only, and why."""
    with pytest.raises(SystemExit) as caught:
        load(["--broker-url", url, "--event-queue", "exporter-events"], {})
    assert caught.value.code == 2
    line = capsys.readouterr().err.rstrip("\n").splitlines()[-1]
    assert line == (
        f"celery-exporter: error: --event-queue: RabbitMQ only (amqp:// or amqps://), "
        f"not {scheme}: {REDIS_WHY}"
    )


def test_event_queue_from_the_variable_on_redis_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """The same holds when the queue comes from CELERY_EXPORTER_EVENT_QUEUE."""
    with pytest.raises(SystemExit) as caught:
        load([], {"CELERY_EXPORTER_EVENT_QUEUE": "q", "CELERY_BROKER_URL": "redis://127.0.0.1/0"})
    assert caught.value.code == 2
    assert REDIS_WHY in capsys.readouterr().err


def test_event_queue_on_rabbitmq_is_taken_with_its_defaults() -> None:
    """On amqp:// the queue name is kept, with a 1 h expiry and a bound of a million messages."""
    cfg = load(["--broker-url", "amqp://127.0.0.1:5672//", "--event-queue", "exporter-events"], {})
    assert (cfg.event_queue, cfg.event_queue_expires, cfg.event_queue_max_length) == (
        "exporter-events", 3600.0, 1_000_000,
    )  # fmt: skip


def test_redis_without_event_queue_is_fine() -> None:
    """Without --event-queue a Redis broker is accepted and no queue is named."""
    assert load(["--broker-url", "redis://127.0.0.1:6379/0"], {}).event_queue is None


def test_queue_arguments() -> None:
    """The event queue is durable, bounded, drops its head and dead-letters into NAME.dropped."""
    from kombu import Exchange

    events, dropped = EventQueue("ev", 3600.0, 1000).queues(Exchange("celeryev", type="topic"))
    assert (events.name, events.durable, events.auto_delete, events.routing_key) == (
        "ev", True, False, "#",
    )  # fmt: skip
    assert arguments(events) == {
        "x-expires": 3600000,
        "x-max-length": 1000,
        "x-overflow": "drop-head",
        "x-dead-letter-exchange": "ev.dropped",
    }
    assert (dropped.name, dropped.exchange.name, dropped.exchange.type) == (
        "ev.dropped", "ev.dropped", "fanout",
    )  # fmt: skip
    assert arguments(dropped) == {"x-expires": 3600000, "x-max-length": 1000}


def arguments(queue: Any) -> dict[str, Any]:
    """The x-arguments kombu's AMQP transport declares ``queue`` with."""
    from kombu.transport.base import to_rabbitmq_queue_arguments

    return dict(
        to_rabbitmq_queue_arguments(
            queue.queue_arguments or {}, expires=queue.expires, message_ttl=queue.message_ttl,
            max_length=queue.max_length, max_length_bytes=queue.max_length_bytes,
            max_priority=queue.max_priority,
        )
    )  # fmt: skip
