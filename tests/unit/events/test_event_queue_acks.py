"""With --event-queue each message is acknowledged only after its events are applied."""

from __future__ import annotations

import json
from typing import Any

import pytest

from celery_exporter.broker import Broker
from celery_exporter.events.consumer import EventConsumer
from celery_exporter.events.durable import EventQueue
from celery_exporter.web.health import Health


class Recording:
    """A cluster state that notes, in a log shared with the messages, what it was given."""

    def __init__(self, log: list[str], fail: bool = False) -> None:
        self.log = log
        self.fail = fail

    def handle_batch(self, events: list[dict[str, Any]]) -> None:
        """Note the event types applied; raise if told to."""
        if self.fail:
            raise RuntimeError("state broke")
        self.log += [f"apply {event['type']}" for event in events]

    def count_malformed(self, reason: str, count: int = 1) -> None:
        """Note a malformed message."""
        self.log.append(f"malformed {reason}")


class Message:
    """A kombu message that notes its acknowledgement in the shared log."""

    def __init__(self, log: list[str], body: bytes) -> None:
        self.log = log
        self.body = body
        self.content_type = "application/json"
        self.content_encoding = "utf-8"

    def ack(self) -> None:
        """Note the acknowledgement."""
        self.log.append("ack")


def consumer(state: Recording) -> EventConsumer:
    """An event consumer of a durable queue on an AMQP URL, feeding ``state``."""
    queue = EventQueue("ev", 3600.0, 10)
    broker = Broker("amqp://127.0.0.1:5672//", {}, {})
    return EventConsumer(broker, state, Health(), event_queue=queue)  # type: ignore[arg-type]


def body(kind: str) -> bytes:
    """A message body carrying one event of type ``kind``."""
    return json.dumps({"type": kind, "uuid": "t1", "hostname": "w@h", "timestamp": 1.0}).encode()


def test_ack_follows_the_applied_events() -> None:
    """The message is acknowledged after its event is applied, not before."""
    log: list[str] = []
    consumer(Recording(log))._on_queued_message(Message(log, body("task-received")))
    assert log == ["apply task-received", "ack"]


def test_malformed_message_is_counted_then_acked() -> None:
    """A message that cannot be decoded is counted and acknowledged (it would never decode)."""
    log: list[str] = []
    consumer(Recording(log))._on_queued_message(Message(log, b"not json"))
    assert log == ["malformed json", "ack"]


def test_no_ack_when_applying_fails() -> None:
    """When applying raises, the message is not acknowledged, so RabbitMQ delivers it again."""
    log: list[str] = []
    with pytest.raises(RuntimeError):
        consumer(Recording(log, fail=True))._on_queued_message(Message(log, body("task-sent")))
    assert log == []


def test_dropped_messages_are_counted_and_acked() -> None:
    """Each message of the dead-letter queue adds one to the dropped count and is acknowledged."""
    log: list[str] = []
    events = consumer(Recording(log))
    for _ in range(3):
        events._on_dropped(Message(log, b"{}"))
    assert events.event_queue is not None
    assert events.event_queue.read() == (None, 3)
    assert log == ["ack", "ack", "ack"]
