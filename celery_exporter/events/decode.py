"""Event objects as decoded from JSON, checked into typed events, or :data:`INVALID`.

Producers are not trusted: every field the state uses is checked and converted here, so the
state's handlers receive :class:`TaskEvent` and :class:`WorkerEvent` mappings whose fields have
the types they use. A field of the wrong type is treated as absent (a label becomes
``unknown``, a time becomes None, meaning "when it arrived"); only a task event without a
usable ``uuid`` cannot be applied, and decodes to :data:`INVALID` (counted as
``malformed{reason="schema"}``). Labels are cut to
:data:`~celery_exporter.events.fields.MAX_VALUE_LENGTH` characters here; how many distinct values
each label may take is the state's business.

This runs once per event, so each decoder checks the fields in place and returns the same
dict, writing only the fields it has to correct: an event as Celery sends it costs no copy.
Task events may carry a ``queue`` field, which Celery's own worker events never do: the
in-worker exporter (:mod:`celery_exporter.worker`) sets it from the message's routing key.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Final, TypedDict, cast

from .fields import MAX_VALUE_LENGTH, clean, exception_name

#: Longest task id accepted; a task event with a longer or missing one is invalid.
MAX_UUID_LENGTH = 200
#: Latest timestamp accepted (year 5138); later, negative, NaN or infinite ones are dropped.
MAX_TIMESTAMP = 1e11
#: Longest runtime accepted, in seconds.
MAX_RUNTIME = 1e7
#: Longest heartbeat interval accepted, in seconds.
MAX_FREQ = 3600.0


class TaskEvent(TypedDict, total=False):
    """A checked task event; the fields each type reads are present with these types."""

    type: str
    uuid: str
    #: Task name; ``unknown`` when the event has none (only task-sent and task-received do).
    name: str
    hostname: str
    #: When the event happened, per its sender; None when missing or out of range.
    timestamp: float | None
    #: The queue the event names (task-sent's ``queue`` or ``routing_key``), if any.
    queue: str | None
    #: task-sent, task-received, task-started: when the task may run, if later than sent.
    eta: float | None
    #: task-failed, task-retried: the exception's class name.
    exception: str
    #: task-failed, task-retried: the exception as the worker wrote it, e.g. ``KeyError('x')``.
    exception_repr: str | None
    #: task-succeeded: seconds the task ran, if the event says.
    runtime: float | None
    #: task-rejected: whether the task goes back to its queue.
    requeue: bool
    #: task-progress (a task's own custom event): how far it is, and what it is doing.
    current: float | None
    total: float | None
    message: str | None


class WorkerEvent(TypedDict, total=False):
    """A checked worker event (online, heartbeat, offline): None where a field was unusable."""

    type: str
    hostname: str
    freq: float | None
    active: int | None
    processed: int | None
    loadavg: tuple[float, float, float] | None
    sw_ident: str | None
    sw_ver: str | None
    sw_sys: str | None


class InvalidEvent:
    """An event that cannot be applied: a task event without a usable ``uuid``."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


INVALID: Final = InvalidEvent("schema")
Raw = dict[str, Any]
Decoded = TaskEvent | WorkerEvent | InvalidEvent


def label(value: Any) -> str:
    """A label value from any field: short strings pass as they are, the rest is cleaned."""
    if type(value) is str and 0 < len(value) <= MAX_VALUE_LENGTH:
        return value
    return clean(value)


def timestamp(value: Any) -> float | None:
    """A Unix time in range, else None."""
    if type(value) is float or type(value) is int:
        # A range check, not math.isfinite: it also rejects NaN and inf, and never overflows.
        return float(value) if 0 < value < MAX_TIMESTAMP else None
    return None


def duration(value: Any) -> float | None:
    """A duration in seconds, from 0 up to :data:`MAX_RUNTIME`, else None."""
    ok = type(value) is float or type(value) is int
    return float(value) if ok and 0 <= value < MAX_RUNTIME else None


def eta(value: Any) -> float | None:
    """An ISO 8601 time (naive means UTC) as a Unix time, else None."""
    if not value or type(value) is not str:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _task(event: Raw) -> bool:
    """Check the fields every task event has, in place; False when its uuid is unusable."""
    uuid = event.get("uuid")
    if type(uuid) is not str or not 0 < len(uuid) <= MAX_UUID_LENGTH:
        return False
    name = event.get("name")
    if type(name) is not str or not 0 < len(name) <= MAX_VALUE_LENGTH:
        event["name"] = clean(name)
    host = event.get("hostname")
    if type(host) is not str or not 0 < len(host) <= MAX_VALUE_LENGTH:
        event["hostname"] = clean(host)
    ts = event.get("timestamp")
    if not ((type(ts) is float or type(ts) is int) and 0 < ts < MAX_TIMESTAMP):
        event["timestamp"] = None
    if "queue" in event:
        queue = event["queue"]
        if type(queue) is not str or not queue:
            event["queue"] = None
        elif len(queue) > MAX_VALUE_LENGTH:
            event["queue"] = queue[:MAX_VALUE_LENGTH]
    return True


def _plain(event: Raw) -> Decoded:
    """task-started, task-revoked, task-cancelled, task-ignored: the common fields only."""
    return cast(TaskEvent, event) if _task(event) else INVALID


def _with_eta(event: Raw) -> Decoded:
    """task-received and task-started (the in-worker exporter's carry an ETA)."""
    if not _task(event):
        return INVALID
    value = event.get("eta")
    if value is not None:
        event["eta"] = eta(value)
    return cast(TaskEvent, event)


def _sent(event: Raw) -> Decoded:
    """task-sent: its queue from ``queue``, else ``routing_key``."""
    queue = event.get("queue") or event.get("routing_key")
    if not _task(event):
        return INVALID
    if type(queue) is str:
        event["queue"] = queue[:MAX_VALUE_LENGTH] if queue else None
    else:
        event["queue"] = clean(queue) if queue else None
    event["eta"] = eta(event.get("eta"))
    return cast(TaskEvent, event)


def _succeeded(event: Raw) -> Decoded:
    """task-succeeded: its runtime."""
    if not _task(event):
        return INVALID
    runtime = event.get("runtime")
    if not ((type(runtime) is float or type(runtime) is int) and 0 <= runtime < MAX_RUNTIME):
        event["runtime"] = None
    return cast(TaskEvent, event)


def _errored(event: Raw) -> Decoded:
    """task-failed and task-retried: the exception's class name."""
    if not _task(event):
        return INVALID
    raw = event.get("exception")
    event["exception"] = label(exception_name(raw, event.get("traceback")))
    event["exception_repr"] = raw if type(raw) is str else None
    return cast(TaskEvent, event)


def _rejected(event: Raw) -> Decoded:
    """task-rejected: whether the task goes back to its queue."""
    if not _task(event):
        return INVALID
    event["requeue"] = event.get("requeue") is True
    return cast(TaskEvent, event)


def _progress(event: Raw) -> Decoded:
    """task-progress: ``current`` and ``total`` as numbers, ``message`` as text, else None."""
    if not _task(event):
        return INVALID
    event["current"] = _number(event.get("current"))
    event["total"] = _number(event.get("total"))
    message = event.get("message")
    event["message"] = message if type(message) is str else None
    return cast(TaskEvent, event)


def _number(value: Any) -> float | None:
    ok = (type(value) is float or type(value) is int) and abs(value) < 1e15
    return float(value) if ok else None


def _worker(event: Raw) -> Decoded:
    """worker-online, worker-heartbeat, worker-offline: every field checked into a new dict."""
    freq, active, processed = event.get("freq"), event.get("active"), event.get("processed")
    checked: WorkerEvent = {
        "type": event["type"],
        "hostname": label(event.get("hostname")),
        "freq": (
            float(freq)
            if (type(freq) is float or type(freq) is int) and 0 < freq < MAX_FREQ
            else None
        ),
        "active": active if type(active) is int and active >= 0 else None,
        "processed": processed if type(processed) is int and processed >= 0 else None,
        "loadavg": _loadavg(event.get("loadavg")),
        "sw_ident": _software(event.get("sw_ident")),
        "sw_ver": _software(event.get("sw_ver")),
        "sw_sys": _software(event.get("sw_sys")),
    }
    return checked


def _loadavg(value: Any) -> tuple[float, float, float] | None:
    if (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(type(v) in (int, float) and abs(v) < 1e12 for v in value)
    ):
        return (float(value[0]), float(value[1]), float(value[2]))
    return None


def _software(value: Any) -> str | None:
    return clean(value) if isinstance(value, str) else None


#: The task event types of a task's life, as Celery's workers and producers send them.
TASK_EVENTS = (
    "task-sent", "task-received", "task-started", "task-succeeded", "task-failed",
    "task-retried", "task-revoked", "task-rejected", "task-cancelled", "task-ignored",
)  # fmt: skip

#: The decoder of each event type the state applies; other types are only counted.
DECODERS: dict[str, Callable[[Raw], Decoded]] = {
    "task-sent": _sent,
    "task-received": _with_eta,
    "task-started": _with_eta,
    "task-succeeded": _succeeded,
    "task-failed": _errored,
    "task-retried": _errored,
    "task-revoked": _plain,
    "task-rejected": _rejected,
    "task-cancelled": _plain,
    "task-ignored": _plain,
    "task-progress": _progress,
    "worker-online": _worker,
    "worker-heartbeat": _worker,
    "worker-offline": _worker,
}


def decode(event: Raw) -> Decoded | None:
    """Check one event object (in place); None for a type the state does not apply."""
    decoder = DECODERS.get(event["type"])
    return decoder(event) if decoder is not None else None
