"""Queue depth on Redis: LLEN over priority lists, HSCAN of the unacked hash, LINDEX.

Reads these ``--broker-transport-option`` values the way kombu does:

- ``global_keyprefix`` (default empty): put before every key.
- ``sep`` (default ``\\x06\\x16``) and ``priority_steps`` (default ``[0, 3, 6, 9]``): a queue's
  messages of priority step ``p`` other than 0 wait in the list ``queue + sep + str(p)``.
- ``unacked_key`` (default ``unacked``): the hash of delivered, unacknowledged messages.
- the connection options of :mod:`celery_exporter.broker.redis_url`.

The length is the sum of ``LLEN`` over every priority list, in one pipeline. The
unacknowledged count walks the ``unacked`` hash with ``HSCAN``, at most
:data:`UNACKED_SCAN_LIMIT` entries per poll, counting each message's routing key; a hash larger
than that takes several polls per pass and the counts are those of the last complete pass.
Given a lookup of task-sent times, the oldest message of each list (``LINDEX -1``) gives when
the oldest waiting message was sent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from . import redis_url
from .measure import Measurement, SentLookup

DEFAULT_SEP = "\x06\x16"
DEFAULT_PRIORITY_STEPS = (0, 3, 6, 9)
#: Most ``unacked`` hash entries read per poll.
UNACKED_SCAN_LIMIT = 10_000
#: Entries asked for per HSCAN call.
HSCAN_COUNT = 1000


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
        self, url: str, transport_options: Mapping[str, Any], ssl_options: Mapping[str, Any]
    ) -> None:
        self.url = url
        self.options = dict(transport_options)
        self.ssl_options = dict(ssl_options)
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
            self._client = redis_url.client(
                self.url, self.options, self.ssl_options, "celery-exporter-queues"
            )
        return self._client

    def measure(self, queues: Sequence[str], sent: SentLookup | None = None) -> Measurement:
        """Pipelined LLEN (and LINDEX -1 given ``sent``) for every queue."""
        client = self.client()
        want_oldest = sent is not None
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
                if sent is not None:
                    tail = next(replies)
                    task_id = message_id(tail) if tail is not None else None
                    when = sent(task_id) if task_id is not None else None
                    if when is not None and when < out.oldest_sent.get(queue, float("inf")):
                        out.oldest_sent[queue] = when
            out.length[queue] = total
        counts = self.scan.step(client, self.unacked_key)
        if counts is not None:
            out.unacked = {q: counts.get(q, 0) for q in queues}
        return out
