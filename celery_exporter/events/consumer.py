"""Following the ``celeryev`` exchange on any kombu transport, reconnecting for ever.

The consumer binds a private, auto-deleted queue to the event exchange (a fanout pub/sub
subscription on Redis, a topic binding on RabbitMQ), hands each message body to
:mod:`celery_exporter.events.envelope`, and feeds the events to :class:`~celery_exporter.state.ClusterState`.
While connected it also broadcasts ``enable_events`` to the workers every
``--enable-events-interval`` and warns when workers run tasks without sending task events.
With ``--event-queue`` (RabbitMQ) it consumes a named durable queue instead
(:mod:`celery_exporter.events.durable`), acknowledging each message once its events are applied.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from celery.events.event import get_exchange

from ..broker import Broker, celery_app, is_auth_failure, is_tls_failure
from ..log import get_logger
from ..redact import mask_url
from ..state import ClusterState
from ..web.health import Health
from . import redis_pubsub
from .durable import PREFETCH, EventQueue
from .envelope import MalformedMessage, decode_body
from .ingest import apply_envelopes

log = get_logger(__name__)

#: How long a drain waits for a message before the loop looks at its timers and stop flag.
POLL_SECONDS = 1.0
#: How long workers may run tasks with no task event arriving before the exporter warns.
SILENCE_WARNING_SECONDS = 60.0


class Backoff:
    """Capped exponential delays with jitter: 1 s, 2 s, 4 s ... up to ``cap``."""

    def __init__(
        self, initial: float = 1.0, cap: float = 30.0, rng: random.Random | None = None
    ) -> None:
        self.initial = initial
        self.cap = cap
        self.rng = rng or random.Random()
        self.attempt = 0

    def next(self) -> float:
        """Return the delay before the next attempt."""
        delay = min(self.cap, self.initial * 2**self.attempt)
        self.attempt += 1
        return float(delay * self.rng.uniform(0.8, 1.0))

    def reset(self) -> None:
        """Start again from the initial delay."""
        self.attempt = 0


class SilenceWatch:
    """Tells when workers run tasks (per their heartbeats) while no task event arrives."""

    def __init__(self, state: ClusterState, window: float = SILENCE_WARNING_SECONDS) -> None:
        self.state = state
        self.window = window
        self._since: float | None = None
        self._base: Mapping[str, int] = {}

    def check(self, now: float) -> bool:
        """Return True once per window in which tasks ran unseen."""
        summary = self.state.heartbeat_summary()
        if self._since is None:
            self._since, self._base = now, summary
            return False
        if now - self._since < self.window:
            return False
        ran = summary["processed"] > self._base["processed"] or summary["active"] > 0
        silent = summary["task_events"] == self._base["task_events"]
        self._since, self._base = now, summary
        return bool(summary["workers"]) and ran and silent


class EventConsumer:
    """Consumes the event stream into a :class:`ClusterState` until stopped.

    ``redis://`` and ``rediss://`` brokers are read straight from pub/sub
    (:mod:`celery_exporter.events.redis_pubsub`); every other transport goes through kombu.
    """

    def __init__(
        self,
        broker: Broker,
        state: ClusterState,
        health: Health,
        *,
        enable_events: bool = True,
        enable_events_interval: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
        app: Any = None,
        event_queue: EventQueue | None = None,
    ) -> None:
        self.broker = broker
        self.state = state
        self.health = health
        self.enable_events = enable_events
        self.enable_events_interval = enable_events_interval
        self.monotonic = monotonic
        self.backoff = Backoff()
        self.silence = SilenceWatch(state)
        self.fast_path = redis_pubsub.supports(broker.url)
        self._last_logged: dict[str, float] = {}
        self._next_enable = 0.0
        self._app: Any = app
        self.event_queue = event_queue
        self._thread: threading.Thread | None = None

    def start(self, stop: threading.Event) -> None:
        """Run :meth:`run` on a daemon thread."""
        self._thread = threading.Thread(target=self.run, args=(stop,), name="events", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the thread to end."""
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self, stop: threading.Event) -> None:
        """Connect, consume, and on any failure back off and reconnect, until ``stop`` is set."""
        while not stop.is_set():
            try:
                if self.fast_path:
                    self._consume_redis(stop)
                else:
                    self._consume_kombu(stop)
            except Exception as exc:
                self._lost(exc, stop)
        self.health.stopped()

    def _lost(self, exc: Exception, stop: threading.Event) -> None:
        error = mask_url(f"{type(exc).__name__}: {exc}")
        was_up = self.health.view().broker_up
        self.health.disconnected(f"broker connection failed: {error}")
        if was_up:
            # The subscription was live: whatever was published until we re-subscribe is lost.
            self.health.gap(time.time())
            self.backoff.reset()
            log.warning(
                "event_stream_gap", broker=self.broker.safe_url, error=error,
                hint="events published while disconnected are lost; if Redis dropped a slow "
                "subscriber, raise client-output-buffer-limit pubsub (see README)",
            )  # fmt: skip
            return  # reconnect at once
        delay = self.backoff.next()
        if is_auth_failure(f"{type(exc).__name__}: {exc}"):
            # Retrying cannot help until someone fixes the credentials: say so, and keep backing
            # off (capped) so the log is not flooded.
            log.error(
                "broker_auth_failed", broker=self.broker.safe_url, error=error,
                retry_in=round(delay, 1),
                hint="the broker refused the user name or password in --broker-url",
            )  # fmt: skip
        elif is_tls_failure(exc):
            log.error(
                "broker_tls_failed", broker=self.broker.safe_url, error=error,
                retry_in=round(delay, 1),
                hint="the broker's certificate was refused: give its CA with --broker-ssl-option "
                "ssl_ca_certs=FILE, and use a host name the certificate names in --broker-url",
            )  # fmt: skip
        else:
            log.warning("broker_unavailable", broker=self.broker.safe_url, error=error,
                        retry_in=round(delay, 1))  # fmt: skip
        stop.wait(delay)

    def _connected(self, transport: str) -> None:
        self.health.connected()
        self.backoff.reset()
        self._next_enable = self.monotonic()
        log.info("consuming_events", broker=self.broker.safe_url, transport=transport)

    def _tick(self) -> None:
        """Periodic work between reads: enable_events broadcasts and the silence warning."""
        now = self.monotonic()
        if self.enable_events and now >= self._next_enable:
            self._next_enable = now + self.enable_events_interval
            self._broadcast_enable_events()
        if self.silence.check(now):
            log.warning(
                "no_task_events",
                message="workers are running tasks (per their heartbeats) but send no task "
                "events: start workers with -E, or leave --enable-events on and check the "
                "exporter may broadcast to them",
            )

    def _consume_redis(self, stop: threading.Event) -> None:
        where = redis_pubsub.target(
            self.broker.url, self.broker.transport_options, self.broker.ssl_options
        )
        subscription = redis_pubsub.EventSubscription(where)
        try:
            pending = subscription.open()
            self._connected("redis pub/sub")
            self._follow(subscription, pending, stop)
        finally:
            subscription.close()

    def _follow(
        self,
        subscription: redis_pubsub.EventSubscription,
        pending: list[bytes],
        stop: threading.Event,
    ) -> None:
        """Ingest every read's messages; the timers run at most once per ``POLL_SECONDS``."""
        self._ingest_envelopes(pending)
        next_tick = self.monotonic()
        while not stop.is_set():
            # A read can return a single message when the stream is slow: the timers (and the
            # silence check's pass over the state) are not worth doing that often.
            now = self.monotonic()
            if now >= next_tick:
                next_tick = now + POLL_SECONDS
                self._tick()
            self._ingest_envelopes(subscription.read(POLL_SECONDS))

    def _ingest_envelopes(self, payloads: list[bytes]) -> None:
        """Decode and apply a read's messages (:func:`.ingest.apply_envelopes`)."""
        apply_envelopes(self.state, payloads, self._malformed)

    def _consume_kombu(self, stop: threading.Event) -> None:
        from kombu import Consumer, Queue

        with self.broker.connection() as conn:
            conn.ensure_connection(max_retries=1)
            if self.event_queue is not None:
                self._consume_event_queue(conn, self.event_queue, stop)
                return
            amqp = conn.transport.driver_type == "amqp"
            queue = Queue(
                f"celeryev.exporter.{uuid.uuid4()}",
                exchange=get_exchange(conn),
                routing_key="#",
                auto_delete=True,
                durable=False,
                exclusive=amqp,
                message_ttl=5.0 if amqp else None,
                expires=60.0 if amqp else None,
            )
            consumer = Consumer(
                conn.channel(), queues=[queue], on_message=self._on_message, no_ack=True
            )
            with consumer:
                self._connected(conn.transport_cls)
                while not stop.is_set():
                    self._tick()
                    with contextlib.suppress(TimeoutError):
                        conn.drain_events(timeout=POLL_SECONDS)

    def _consume_event_queue(self, conn: Any, spec: EventQueue, stop: threading.Event) -> None:
        """Consume the durable ``--event-queue`` with acks, and count what its overflow dropped."""
        from kombu import Consumer

        events, dropped = spec.queues(get_exchange(conn))
        channel = conn.channel()
        consumer = Consumer(
            channel, queues=[events], on_message=self._on_queued_message, no_ack=False,
            prefetch_count=PREFETCH,
        )  # fmt: skip
        counter = Consumer(
            channel, queues=[dropped], on_message=self._on_dropped, no_ack=False,
            prefetch_count=PREFETCH,
        )  # fmt: skip
        with consumer, counter:
            self._connected(f"{conn.transport_cls} queue {spec.name}")
            next_look = self.monotonic()
            while not stop.is_set():
                now = self.monotonic()
                if now >= next_look:  # a drain may return after one message: look once a second
                    next_look = now + POLL_SECONDS
                    self._tick()
                    _, ready, _ = events.bind(channel).queue_declare(passive=True)
                    spec.saw_depth(int(ready))
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=POLL_SECONDS)

    def _broadcast_enable_events(self) -> None:
        try:
            if self._app is None:
                self._app = celery_app(self.broker, "celery-exporter")
            with self.broker.connection() as conn:
                self._app.control.enable_events(connection=conn)
            log.debug("enable_events_sent")
        except Exception as exc:
            log.warning("enable_events_failed", error=mask_url(f"{type(exc).__name__}: {exc}"))

    def _on_message(self, message: Any) -> None:
        try:
            events = decode_body(message.body, message.content_type, message.content_encoding)
        except MalformedMessage as exc:
            self._malformed(exc.reason, exc.detail)
            return
        self.state.handle_batch(events)

    def _on_queued_message(self, message: Any) -> None:
        """Apply a message of the ``--event-queue``, then acknowledge it."""
        self._on_message(message)
        message.ack()

    def _on_dropped(self, message: Any) -> None:
        assert self.event_queue is not None
        self.event_queue.count_dropped()
        message.ack()

    def _malformed(self, reason: str, detail: str) -> None:
        self.state.count_malformed(reason)
        now = self.monotonic()
        if now - self._last_logged.get(reason, -1e9) >= 10.0:
            self._last_logged[reason] = now
            log.warning("malformed_event", reason=reason, detail=detail[:300])
