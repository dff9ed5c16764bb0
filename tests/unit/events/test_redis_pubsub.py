"""The Redis fast path's read loop: replies off a real socket, the timers, and batches applied."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from celery_exporter.broker import Broker
from celery_exporter.events.consumer import POLL_SECONDS, EventConsumer
from celery_exporter.events.ingest import APPLY_EVERY
from celery_exporter.events.redis_pubsub import EventSubscription, RedisTarget, StreamClosed, pack
from celery_exporter.events.schema import Event
from celery_exporter.state import ClusterState
from celery_exporter.web.health import Health
from tests.support.clock import ManualClock
from tests.support.events import encode_envelope, received, started, succeeded

WHERE = RedisTarget(
    host="127.0.0.1", port=1, db=0, username=None, password=None, tls=None, channel="/0.celeryev"
)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected pair of sockets: the subscription's end and Redis' end."""
    ours, redis_end = socket.socketpair()
    yield ours, redis_end
    ours.close()
    redis_end.close()


def subscription(sock: socket.socket, read_size: int = 1 << 18) -> EventSubscription:
    """A subscription reading from ``sock`` as if it had subscribed."""
    sub = EventSubscription(WHERE, read_size=read_size)
    sub.sock = sock
    return sub


def pmessage(payload: bytes, routing_key: str = "task.multi") -> bytes:
    """A message matched by the event pattern, as Redis sends it."""
    return pack("pmessage", "/0.celeryev/*", f"/0.celeryev/{routing_key}", payload)


def test_read_returns_message_payloads_in_order_and_skips_confirmations(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """Pattern and channel messages give their payloads in order; confirmations give nothing."""
    ours, redis_end = pair
    redis_end.sendall(
        pack("psubscribe", "/0.celeryev/*")
        + b":1\r\n"
        + pmessage(b"first")
        + pack("message", "/0.celeryev", b"second")
        + pmessage(b"third", "task.sent")
    )
    assert subscription(ours).read(1.0) == [b"first", b"second", b"third"]


def test_read_joins_messages_split_across_reads(pair: tuple[socket.socket, socket.socket]) -> None:
    """A message cut across reads comes out once, whole, from the read that completes it."""
    ours, redis_end = pair
    data = pmessage(b"x" * 100) + pmessage(b"y" * 100)
    redis_end.sendall(data)
    sub = subscription(ours, read_size=64)
    got: list[bytes] = []
    reads = 0
    while len(got) < 2:
        got += sub.read(1.0)
        reads += 1
    assert got == [b"x" * 100, b"y" * 100]
    assert reads == -(-len(data) // 64)


def test_read_times_out_empty_and_fails_when_redis_closes(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """No data within the timeout gives no payloads; a closed connection raises StreamClosed."""
    ours, redis_end = pair
    sub = subscription(ours)
    assert sub.read(0.05) == []
    assert ours.gettimeout() == 0.05
    redis_end.close()
    with pytest.raises(StreamClosed):
        sub.read(1.0)


def test_read_raises_on_an_error_reply(pair: tuple[socket.socket, socket.socket]) -> None:
    """An error reply from Redis ends the read with ConnectionRefusedError."""
    ours, redis_end = pair
    redis_end.sendall(b"-NOPERM this user has no permissions\r\n")
    with pytest.raises(ConnectionRefusedError, match="NOPERM"):
        subscription(ours).read(1.0)


def lifecycle_stream(tasks: int) -> bytes:
    """Three messages (received, started, succeeded) per task, as Redis delivers them."""
    out = []
    for i in range(tasks):
        uuid = f"task-{i}"
        out.append(pmessage(encode_envelope(received(uuid), routing_key="task.received")))
        out.append(pmessage(encode_envelope([started(uuid)], routing_key="task.multi")))
        out.append(pmessage(encode_envelope(succeeded(uuid, runtime=0.5), routing_key="t.s")))
    return b"".join(out)


@pytest.mark.parametrize("step", [0.0, POLL_SECONDS])
def test_follow_runs_timers_at_most_once_per_poll_interval(
    pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch, step: float
) -> None:
    """The timers run once however many reads come within POLL_SECONDS, before each read after."""
    ours, redis_end = pair
    data = lifecycle_stream(20)
    redis_end.sendall(data)
    redis_end.close()
    clock = ManualClock(1000.0)
    state = ClusterState()
    consumer = EventConsumer(
        Broker("redis://127.0.0.1:1/0"), state, Health(), enable_events=False, monotonic=clock
    )
    ticks: list[float] = []

    def tick() -> None:
        ticks.append(clock())
        clock.advance(step)

    monkeypatch.setattr(consumer, "_tick", tick)
    read_size = 512
    with pytest.raises(StreamClosed):
        consumer._follow(subscription(ours, read_size), [], threading.Event())
    reads = -(-len(data) // read_size) + 1  # the last one finds the connection closed
    assert len(ticks) == (1 if step < POLL_SECONDS else reads)
    assert state.snapshot().counters["succeeded"] == {("app.add", "celery"): 20}


def test_ingest_applies_a_read_a_few_messages_at_a_time_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read's messages are applied APPLY_EVERY at a time, in order, garbage counted between."""
    state = ClusterState()
    consumer = EventConsumer(Broker("redis://127.0.0.1:1/0"), state, Health(), enable_events=False)
    batches: list[list[str]] = []
    apply = state.apply_batch

    def apply_batch(events: list[Event]) -> None:
        batches.append([event.type for event in events])
        apply(events)

    monkeypatch.setattr(state, "apply_batch", apply_batch)
    payloads = [
        encode_envelope(event, routing_key="task")
        for i in range(20)
        for event in (received(f"task-{i}"), started(f"task-{i}"), succeeded(f"task-{i}", 0.5))
    ]
    payloads.insert(APPLY_EVERY - 1, b"not json")
    consumer._ingest_envelopes(payloads)
    kinds = ["task-received", "task-started", "task-succeeded"] * 20
    assert batches == [
        kinds[: APPLY_EVERY - 1],
        kinds[APPLY_EVERY - 1 : 2 * APPLY_EVERY - 1],
        kinds[2 * APPLY_EVERY - 1 : 3 * APPLY_EVERY - 1],
        kinds[3 * APPLY_EVERY - 1 :],
    ]
    snap = state.snapshot()
    assert snap.malformed == {"envelope": 1}
    assert snap.counters["succeeded"] == {("app.add", "celery"): 20}
    assert snap.tracked_tasks == 0
