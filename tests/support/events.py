"""Celery 5.7 events as the unit tests feed them to the state, and kombu's Redis framing of them.

The factories build task and worker event dicts with the fields Celery 5.7 sends, by default
for task ``app.add`` on worker :data:`W1` at :data:`T0`; :func:`encode_envelope` frames them as
a worker publishes them on Redis (tests and benchmarks only: the exporter only decodes).
"""

from __future__ import annotations

import base64
import json
import uuid as uuidlib
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

Event = dict[str, Any]

#: The time the scripted events happen at, unless told otherwise.
T0 = 1_700_000_000.0
W1 = "celery@w1"
W2 = "celery@w2"
#: The client that sends task-sent.
PRODUCER = "gen4242@api-1"
#: The traceback of a task-failed for a hard time limit, as the pool reports it.
HARD_LIMIT_TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/venv/lib/python3.11/site-packages/billiard/pool.py", line 684, in on_hard_timeout\n'
    "    raise TimeLimitExceeded(job._timeout)\n"
    "billiard.exceptions.TimeLimitExceeded: TimeLimitExceeded(1,)\n"
)


def iso(ts: float) -> str:
    """An event timestamp as Celery writes an ETA: ISO 8601 in UTC."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat()


def sent(
    uuid: str, name: str = "app.add", queue: str | None = "celery", at: float = T0, eta: Any = None
) -> dict[str, Any]:
    """A client's task-sent (without ``queue`` when ``queue`` is None, as old clients send it)."""
    event: dict[str, Any] = {
        "type": "task-sent", "uuid": uuid, "root_id": uuid, "parent_id": None, "name": name,
        "args": "(1, 2)", "kwargs": "{}", "retries": 0, "eta": eta, "expires": None,
        "exchange": "", "routing_key": queue or "celery", "hostname": PRODUCER,
        "timestamp": at, "utcoffset": 0, "pid": 4242, "clock": 1,
    }  # fmt: skip
    if queue is not None:
        event["queue"] = queue
    return event


def received(
    uuid: str,
    name: str = "app.add",
    host: str = W1,
    at: float = T0,
    eta: Any = None,
    retries: int = 0,
) -> dict[str, Any]:
    """A worker's task-received."""
    return {
        "type": "task-received", "uuid": uuid, "name": name, "args": "(1, 2)", "kwargs": "{}",
        "root_id": uuid, "parent_id": None, "retries": retries, "eta": eta, "expires": None,
        "hostname": host, "timestamp": at, "utcoffset": 0, "pid": 100, "clock": 2,
    }  # fmt: skip


def started(uuid: str, host: str = W1, at: float = T0) -> dict[str, Any]:
    """A pool process's task-started."""
    return {
        "type": "task-started", "uuid": uuid, "hostname": host, "timestamp": at,
        "utcoffset": 0, "pid": 101, "clock": 3,
    }  # fmt: skip


def succeeded(uuid: str, runtime: Any, host: str = W1, at: float = T0) -> dict[str, Any]:
    """A pool process's task-succeeded."""
    return {
        "type": "task-succeeded", "uuid": uuid, "result": "3", "runtime": runtime,
        "hostname": host, "timestamp": at, "utcoffset": 0, "pid": 101, "clock": 4,
    }  # fmt: skip


def failed(
    uuid: str, exception: str, traceback: str = "", host: str = W1, at: float = T0
) -> dict[str, Any]:
    """A task-failed; the traceback ends with ``exception`` unless one is given."""
    return {
        "type": "task-failed", "uuid": uuid, "exception": exception,
        "traceback": traceback or f"Traceback (most recent call last):\n  ...\n{exception}\n",
        "hostname": host, "timestamp": at, "utcoffset": 0, "pid": 101, "clock": 4,
    }  # fmt: skip


def retried(uuid: str, exception: str, host: str = W1, at: float = T0) -> dict[str, Any]:
    """A task-retried."""
    return {
        "type": "task-retried", "uuid": uuid, "exception": exception,
        "traceback": f"Traceback (most recent call last):\n  ...\n{exception}\n",
        "hostname": host, "timestamp": at, "utcoffset": 0, "pid": 101, "clock": 4,
    }  # fmt: skip


def revoked(uuid: str, host: str = W1, at: float = T0) -> dict[str, Any]:
    """A worker's task-revoked (terminated with SIGTERM)."""
    return {
        "type": "task-revoked", "uuid": uuid, "terminated": True, "signum": 15,
        "expired": False, "hostname": host, "timestamp": at, "utcoffset": 0, "pid": 100,
        "clock": 5,
    }  # fmt: skip


def rejected(uuid: str, requeue: bool, host: str = W1, at: float = T0) -> dict[str, Any]:
    """A worker's task-rejected."""
    return {
        "type": "task-rejected", "uuid": uuid, "requeue": requeue, "hostname": host,
        "timestamp": at, "utcoffset": 0, "pid": 100, "clock": 6,
    }  # fmt: skip


def progress(
    uuid: str,
    current: Any = 3,
    total: Any = 10,
    message: Any = "resizing",
    host: str = W1,
    at: float = T0,
) -> dict[str, Any]:
    """A task's own task-progress, as ``self.send_event("task-progress", ...)`` sends it."""
    return {
        "type": "task-progress", "uuid": uuid, "current": current, "total": total,
        "message": message, "hostname": host, "timestamp": at, "utcoffset": 0, "pid": 101,
        "clock": 7,
    }  # fmt: skip


def heartbeat(
    host: str = W1, freq: Any = 2.0, active: Any = 0, processed: Any = 0, **extra: Any
) -> dict[str, Any]:
    """A worker-heartbeat; ``extra`` adds or replaces fields."""
    event = {
        "type": "worker-heartbeat", "hostname": host, "freq": freq, "active": active,
        "processed": processed, "loadavg": [0.5, 0.25, 0.1], "sw_ident": "py-celery",
        "sw_ver": "5.7.0", "sw_sys": "Linux", "timestamp": T0, "utcoffset": 0, "pid": 99,
        "clock": 7,
    }  # fmt: skip
    event.update(extra)
    return event


def worker_event(kind: str, host: str = W1, freq: float = 2.0) -> dict[str, Any]:
    """A worker-online, worker-offline or other ``worker-<kind>`` event."""
    event = heartbeat(host, freq)
    event["type"] = f"worker-{kind}"
    return event


def encode_envelope(
    events: Event | Iterable[Event],
    *,
    routing_key: str,
    hostname: str = "celery@localhost",
    exchange: str = "celeryev",
) -> bytes:
    """Frame one event, or a ``*.multi`` list of events, as kombu's Redis transport publishes it."""
    body: Any = events if isinstance(events, Mapping) else list(events)
    envelope = {
        "body": base64.b64encode(json.dumps(body).encode()).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"hostname": hostname},
        "properties": {
            "delivery_mode": 1,
            "delivery_info": {"exchange": exchange, "routing_key": routing_key},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuidlib.uuid4()),
        },
    }
    return json.dumps(envelope).encode()
