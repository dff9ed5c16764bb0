"""Queue depth straight from the broker, polled in the background.

Every ``--queue-interval`` (default 10 s) the ``queues`` collector measures its queues on a
thread of its own, within the interval or :data:`POLL_TIMEOUT` if longer (see :mod:`celery_exporter.background`); scrapes only read the last figures.

Which queues: those of ``--queues`` (always reported, at 0 before any worker exists), those
any worker consumes (``inspect active_queues``, from :mod:`celery_exporter.pools`) and those
named by ``task-sent`` events. A queue that is not configured, not consumed and empty (no ready
and no unacknowledged message) for ``--queue-purge-after`` (default 1 h) is no longer reported;
it is still measured, and comes back as soon as it holds a message or a worker consumes it.

Redis (``redis://``, ``rediss://``, ``sentinel://``) reads these ``--broker-transport-option``
values the way kombu does:

- ``global_keyprefix`` (default empty): put before every key.
- ``sep`` (default ``\\x06\\x16``) and ``priority_steps`` (default ``[0, 3, 6, 9]``): a queue's
  messages of priority step ``p`` other than 0 wait in the list ``queue + sep + str(p)``.
- ``unacked_key`` (default ``unacked``): the hash of delivered, unacknowledged messages.
- ``master_name`` and ``sentinel_kwargs``: Sentinel only, which master to ask the sentinels for.
- ``socket_timeout``, ``socket_connect_timeout`` (default 5 s): per command and connection.

The URL gives the database number and credentials; ``rediss://`` reads ``ssl_cert_reqs``,
``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile`` and ``ssl_check_hostname`` from
``--broker-ssl-option``. The length is the sum of ``LLEN`` over every priority list, in one
pipeline. The unacknowledged count walks the ``unacked`` hash with ``HSCAN``, at most
:data:`UNACKED_SCAN_LIMIT` entries per poll, counting each message's routing key; a hash larger
than that takes several polls per pass and the counts are those of the last complete pass. With
``task-sent`` events on, the oldest message of each list (``LINDEX -1``) gives
``celery_queue_oldest_message_sent_timestamp_seconds``.

RabbitMQ (``amqp://``, ``amqps://``): a passive ``queue_declare`` gives ready messages and
consumers (a queue that does not exist reads 0); with ``--rabbitmq-management-url`` the
management API's ``/api/queues/<vhost>`` gives unacknowledged messages. Credentials come from
that URL, else from the broker URL; the password is never logged. When the API fails, the
unacknowledged series are left out and a warning is logged; lengths are still reported.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .background import Poller
from .consumer import Broker
from .log import get_logger
from .redact import mask_url
from .state import ClusterState

log = get_logger(__name__)

DEFAULT_SEP = "\x06\x16"
DEFAULT_PRIORITY_STEPS = (0, 3, 6, 9)
#: Most ``unacked`` hash entries read per poll.
UNACKED_SCAN_LIMIT = 10_000
#: Entries asked for per HSCAN call.
HSCAN_COUNT = 1000
#: Shortest time a whole poll may take before it counts as failed (else the interval).
POLL_TIMEOUT = 15.0
#: Seconds the management API may take.
MANAGEMENT_TIMEOUT = 5.0
_SSL_KEYS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")


@dataclass
class Measurement:
    """One poll's figures per queue; ``None`` where the broker cannot tell."""

    length: dict[str, int] = field(default_factory=dict)
    unacked: dict[str, int] | None = None
    consumers: dict[str, int] | None = None
    oldest_sent: dict[str, float] = field(default_factory=dict)


class Backend(Protocol):
    """Measures queues on one kind of broker."""

    def measure(self, queues: Sequence[str]) -> Measurement:
        """Return the figures of ``queues``."""
        ...


# -- Redis ------------------------------------------------------------------------------------


def priority_keys(queue: str, steps: Sequence[int], sep: str, prefix: str = "") -> list[str]:
    """The Redis lists holding ``queue``'s messages, one per priority step (kombu's _q_for_pri)."""
    keys = []
    for step in steps:
        key = f"{prefix}{queue}{sep}{step}" if step else f"{prefix}{queue}"
        if key not in keys:
            keys.append(key)
    return keys


def message_id(raw: Any) -> str | None:
    """The task id of a message as kombu stores it in a Redis list."""
    try:
        message = json.loads(raw)
    except (TypeError, ValueError):
        return None
    if not isinstance(message, dict):
        return None
    headers = message.get("headers")
    if isinstance(headers, dict) and isinstance(headers.get("id"), str):
        return str(headers["id"])
    props = message.get("properties")
    if isinstance(props, dict) and isinstance(props.get("correlation_id"), str):
        return str(props["correlation_id"])
    return None


def routing_key(raw: Any) -> str | None:
    """The routing key of an ``unacked`` hash value, ``[message, exchange, routing_key]``."""
    try:
        entry = json.loads(raw)
    except (TypeError, ValueError):
        return None
    if isinstance(entry, list) and len(entry) == 3 and isinstance(entry[2], str):
        return entry[2]
    return None


class UnackedScan:
    """Counts the ``unacked`` hash by routing key, at most ``limit`` entries per call."""

    def __init__(self, limit: int = UNACKED_SCAN_LIMIT, count: int = HSCAN_COUNT) -> None:
        self.limit = limit
        self.count = count
        self.cursor = 0
        self.partial: dict[str, int] = {}
        self.seen: set[bytes] = set()
        self.complete: dict[str, int] | None = None

    def step(self, client: Any, key: str) -> dict[str, int] | None:
        """Scan on from where the last call stopped; return the last complete pass's counts."""
        read = 0
        while read < self.limit:
            self.cursor, entries = client.hscan(key, self.cursor, count=self.count)
            for tag, raw in entries.items():
                if tag in self.seen:
                    continue  # HSCAN may return an entry twice in one pass
                self.seen.add(tag)
                rk = routing_key(raw)
                if rk is not None:
                    self.partial[rk] = self.partial.get(rk, 0) + 1
            read += max(1, len(entries))
            if self.cursor == 0:
                self.complete, self.partial, self.seen = self.partial, {}, set()
                break
        return self.complete


class RedisBackend:
    """LLEN over priority lists, HSCAN of the unacked hash, LINDEX for the oldest message."""

    def __init__(
        self,
        url: str,
        transport_options: Mapping[str, Any],
        ssl_options: Mapping[str, Any],
        state: ClusterState | None = None,
    ) -> None:
        self.url = url
        self.options = dict(transport_options)
        self.ssl_options = dict(ssl_options)
        self.state = state
        self.prefix = str(self.options.get("global_keyprefix", "") or "")
        self.sep = str(self.options.get("sep", DEFAULT_SEP))
        steps = self.options.get("priority_steps", DEFAULT_PRIORITY_STEPS)
        self.steps = tuple(sorted(int(s) for s in steps))
        self.unacked_key = self.prefix + str(self.options.get("unacked_key", "unacked"))
        self.scan = UnackedScan()
        self._client: Any = None

    def client(self) -> Any:
        """The redis-py client (for Sentinel, of the current master)."""
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _connect(self) -> Any:
        import redis
        import redis.sentinel

        timeouts = {
            "socket_timeout": float(self.options.get("socket_timeout", 5.0)),
            "socket_connect_timeout": float(self.options.get("socket_connect_timeout", 5.0)),
        }
        first = self.url.split(";")[0].strip()
        parts = urlsplit(first)
        path = parts.path.strip("/")
        db = int(path) if path else 0
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        if parts.scheme == "sentinel":
            nodes = []
            for part in self.url.split(";"):
                where = urlsplit(part.strip())
                nodes.append((where.hostname or "localhost", where.port or 26379))
            sentinel = redis.sentinel.Sentinel(
                nodes, sentinel_kwargs=self.options.get("sentinel_kwargs") or {}, **timeouts
            )
            master = self.options.get("master_name")
            if not master:
                raise ValueError(
                    "a sentinel:// broker needs --broker-transport-option master_name="
                )
            return sentinel.master_for(
                str(master), db=db, username=username, password=password, **timeouts
            )
        tls: dict[str, Any] = {}
        if parts.scheme == "rediss":
            tls = {"ssl": True, **{k: v for k, v in self.ssl_options.items() if k in _SSL_KEYS}}
        return redis.Redis(
            host=parts.hostname or "localhost",
            port=parts.port or 6379,
            db=db,
            username=username,
            password=password,
            client_name="celery-exporter-queues",
            **timeouts,
            **tls,
        )

    def measure(self, queues: Sequence[str]) -> Measurement:
        """Pipelined LLEN (and LINDEX -1 when task-sent events are seen) for every queue."""
        client = self.client()
        want_oldest = self.state is not None and bool(self.state.sent_queues())
        layout = [(q, priority_keys(q, self.steps, self.sep, self.prefix)) for q in queues]
        pipe = client.pipeline(transaction=False)
        for _, keys in layout:
            for key in keys:
                pipe.llen(key)
                if want_oldest:
                    pipe.lindex(key, -1)
        replies = iter(pipe.execute())
        out = Measurement()
        for queue, keys in layout:
            total = 0
            for _ in keys:
                total += int(next(replies))
                if want_oldest:
                    tail = next(replies)
                    sent = self._sent(tail) if tail is not None else None
                    if sent is not None and sent < out.oldest_sent.get(queue, float("inf")):
                        out.oldest_sent[queue] = sent
            out.length[queue] = total
        counts = self.scan.step(client, self.unacked_key)
        if counts is not None:
            out.unacked = {q: counts.get(q, 0) for q in queues}
        return out

    def _sent(self, raw: Any) -> float | None:
        task_id = message_id(raw)
        if task_id is None or self.state is None:
            return None
        return self.state.sent_timestamp(task_id)


# -- RabbitMQ ---------------------------------------------------------------------------------


def vhost_of(url: str) -> str:
    """The virtual host of an AMQP URL, as kombu reads it ('/' when none is given)."""
    path = urlsplit(url.split(";")[0].strip()).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """The URL without user info, and its user name and password."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    bare = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return bare, user, password


class RabbitMQBackend:
    """Passive declares for ready messages and consumers; the management API for unacked."""

    def __init__(self, broker: Broker, management_url: str | None = None) -> None:
        self.broker = broker
        self.management_url = management_url
        self._api_error: str | None = None

    def measure(self, queues: Sequence[str]) -> Measurement:
        """Declare each queue passively on one connection; ask the API for unacked counts."""
        out = Measurement(consumers={})
        assert out.consumers is not None
        with self.broker.connection() as conn:
            conn.ensure_connection(max_retries=1)
            channel = conn.channel()
            try:
                for queue in queues:
                    try:
                        _, ready, consumers = channel.queue_declare(queue=queue, passive=True)
                    except conn.channel_errors:
                        # A missing queue (404) closes the channel: report 0, open another.
                        channel = conn.channel()
                        ready = consumers = 0
                    out.length[queue] = int(ready)
                    out.consumers[queue] = int(consumers)
            finally:
                channel.close()
        if self.management_url:
            out.unacked = self._unacked(queues)
        return out

    def _unacked(self, queues: Sequence[str]) -> dict[str, int] | None:
        assert self.management_url is not None
        try:
            rows = self._api_queues()
        except Exception as exc:
            error = mask_url(f"{type(exc).__name__}: {exc}")
            if error != self._api_error:
                log.warning(
                    "rabbitmq_management_failed", url=mask_url(self.management_url), error=error
                )
            self._api_error = error
            return None
        self._api_error = None
        found = {
            str(row["name"]): int(row.get("messages_unacknowledged") or 0)
            for row in rows
            if isinstance(row, dict) and "name" in row
        }
        return {q: found.get(q, 0) for q in queues}

    def _api_queues(self) -> list[Any]:
        assert self.management_url is not None
        base, user, password = split_credentials(self.management_url.rstrip("/"))
        if user is None:
            _, user, password = split_credentials(self.broker.url.split(";")[0].strip())
        vhost = quote(vhost_of(self.broker.url), safe="")
        request = urllib.request.Request(
            f"{base}/api/queues/{vhost}?columns=name,messages_unacknowledged"
        )
        if user is not None:
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=MANAGEMENT_TIMEOUT) as response:
            rows = json.loads(response.read())
        if not isinstance(rows, list):
            raise ValueError("the management API did not answer a list of queues")
        return rows


def backend_for(
    broker: Broker, state: ClusterState | None, management_url: str | None = None
) -> Backend:
    """The backend for the broker URL's transport."""
    scheme = broker.url.split("://", 1)[0].split("+")[-1]
    if scheme in ("redis", "rediss", "sentinel"):
        return RedisBackend(broker.url, broker.transport_options, broker.ssl_options, state)
    if scheme in ("amqp", "amqps", "pyamqp", "librabbitmq"):
        return RabbitMQBackend(broker, management_url)
    raise ValueError(f"queue depth is not supported on the {scheme!r} transport")


# -- which queues -----------------------------------------------------------------------------


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
        kept = []
        for queue in sorted(measured.length):
            in_use = (
                queue in busy
                or measured.length[queue] > 0
                or unacked.get(queue, 0) > 0
                or (measured.consumers or {}).get(queue, 0) > 0
            )
            if in_use or queue not in self.last_active:
                self.last_active[queue] = now
            if queue in self.configured or now - self.last_active[queue] < self.purge_after:
                kept.append(queue)
        return kept


class QueueCollector(Collector):
    """``celery_queue_length``, ``_unacked``, ``_consumers`` and the oldest message's send time."""

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
        measured = self.backend.measure(self.queues.candidates(consuming or {}, sent))
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
        )

    def collect(self) -> Iterator[Metric]:
        """Yield the queue families from the last successful poll."""
        data = self.poller.data or Measurement()
        label = ["queue_name"]
        families = (
            ("celery_queue_length", "Messages ready in the queue (all priorities).", data.length),
            (
                "celery_queue_unacked",
                "Messages delivered to workers and not yet acknowledged.",
                data.unacked or {},
            ),
            ("celery_queue_consumers", "Workers consuming the queue.", data.consumers or {}),
            (
                "celery_queue_oldest_message_sent_timestamp_seconds",
                "When the oldest message waiting in the queue was sent (needs task-sent events).",
                data.oldest_sent,
            ),
        )
        for name, doc, values in families:
            family = GaugeMetricFamily(name, doc, labels=label)
            for queue, number in sorted(values.items()):
                family.add_metric([queue], number)
            yield family
