"""Event objects as decoded from JSON, checked into typed events, or one :class:`InvalidEvent`.

Producers are not trusted: every field the state uses is checked and converted here, so the
state's handlers receive :class:`TaskEvent` and :class:`WorkerEvent` values whose fields have
the types they use. A field of the wrong type is treated as absent (a label becomes
``unknown``, a time becomes "now"); only a task event without a usable ``uuid`` cannot be
applied, and decodes to :data:`INVALID` (counted as ``malformed{reason="schema"}``).
Labels are cut to :data:`~celery_exporter.events.fields.MAX_VALUE_LENGTH` characters here; how
many distinct values each label may take is the state's business.

Task events may carry a ``queue`` field, which Celery's own worker events never do: the
in-worker exporter (:mod:`celery_exporter.worker`) sets it from the message's routing key.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from .fields import MAX_VALUE_LENGTH, UNKNOWN, clean, exception_name

#: Longest task id accepted; a task event with a longer or missing one is invalid.
MAX_UUID_LENGTH = 200
#: Latest timestamp accepted (year 5138); later, negative, NaN or infinite ones mean "now".
MAX_TIMESTAMP = 1e11
#: Longest runtime accepted, in seconds.
MAX_RUNTIME = 1e7


class TaskEvent:
    """A task event whose fields are checked: labels are short strings, times floats or None."""

    __slots__ = (
        "eta", "exception", "hostname", "name", "queue", "requeue", "runtime", "timestamp",
        "type", "uuid",
    )  # fmt: skip

    def __init__(
        self,
        etype: str,
        uuid: str,
        name: str,
        hostname: str,
        timestamp: float | None,
        queue: str | None = None,
        eta: float | None = None,
        exception: str = UNKNOWN,
        runtime: float | None = None,
        requeue: bool = False,
    ) -> None:
        self.type = etype
        self.uuid = uuid
        #: Task name; ``unknown`` when the event has none (only task-sent and task-received do).
        self.name = name
        self.hostname = hostname
        #: When the event happened, per its sender; None when missing or out of range.
        self.timestamp = timestamp
        #: The queue the event names (task-sent's ``queue`` or ``routing_key``), if any.
        self.queue = queue
        self.eta = eta
        #: Exception class name (task-failed, task-retried).
        self.exception = exception
        #: Seconds the task ran (task-succeeded), if the event says.
        self.runtime = runtime
        #: Whether a rejected task goes back to its queue (task-rejected).
        self.requeue = requeue


class WorkerEvent:
    """A worker event: online, heartbeat or offline, with what heartbeats tell."""

    __slots__ = (
        "active", "freq", "hostname", "loadavg", "processed", "sw_ident", "sw_sys", "sw_ver",
        "type",
    )  # fmt: skip

    def __init__(
        self,
        etype: str,
        hostname: str,
        freq: float | None = None,
        active: int | None = None,
        processed: int | None = None,
        loadavg: tuple[float, float, float] | None = None,
        software: tuple[str | None, str | None, str | None] = (None, None, None),
    ) -> None:
        self.type = etype
        self.hostname = hostname
        #: Heartbeat interval in seconds, above 0 and below an hour.
        self.freq = freq
        self.active = active
        self.processed = processed
        self.loadavg = loadavg
        self.sw_ident, self.sw_ver, self.sw_sys = software


class InvalidEvent:
    """An event that cannot be applied: a task event without a usable ``uuid``."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


INVALID = InvalidEvent("schema")
Event = TaskEvent | WorkerEvent


def label(value: Any) -> str:
    """A label value from any field: short strings pass as they are, the rest is cleaned."""
    if type(value) is str and 0 < len(value) <= MAX_VALUE_LENGTH:
        return value
    return clean(value)


def timestamp(value: Any) -> float | None:
    """A Unix time in range, else None."""
    if type(value) is float or (type(value) is int):
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


def _queue(value: Any) -> str | None:
    if type(value) is str:
        return value[:MAX_VALUE_LENGTH] if value else None
    return clean(value) if value else None


def _uuid(event: dict[str, Any]) -> str | None:
    uuid = event.get("uuid")
    if type(uuid) is str and 0 < len(uuid) <= MAX_UUID_LENGTH:
        return uuid
    return None


def _task(event: dict[str, Any], etype: str) -> TaskEvent | InvalidEvent:
    """Fields every task event has; the type-specific ones are filled in by the caller."""
    uuid = _uuid(event)
    if uuid is None:
        return INVALID
    queue = event.get("queue")
    return TaskEvent(
        etype,
        uuid,
        label(event.get("name")),
        label(event.get("hostname")),
        timestamp(event.get("timestamp")),
        queue[:MAX_VALUE_LENGTH] if type(queue) is str and queue else None,
    )


def _sent(event: dict[str, Any]) -> TaskEvent | InvalidEvent:
    task = _task(event, "task-sent")
    if type(task) is TaskEvent:
        task.queue = _queue(event.get("queue") or event.get("routing_key"))
        task.eta = eta(event.get("eta"))
    return task


def _arrived(etype: str) -> Callable[[dict[str, Any]], TaskEvent | InvalidEvent]:
    def decode(event: dict[str, Any]) -> TaskEvent | InvalidEvent:
        task = _task(event, etype)
        if type(task) is TaskEvent:
            task.eta = eta(event.get("eta"))
        return task

    return decode


def _succeeded(event: dict[str, Any]) -> TaskEvent | InvalidEvent:
    task = _task(event, "task-succeeded")
    if type(task) is TaskEvent:
        task.runtime = duration(event.get("runtime"))
    return task


def _errored(etype: str) -> Callable[[dict[str, Any]], TaskEvent | InvalidEvent]:
    def decode(event: dict[str, Any]) -> TaskEvent | InvalidEvent:
        task = _task(event, etype)
        if type(task) is TaskEvent:
            task.exception = label(exception_name(event.get("exception"), event.get("traceback")))
        return task

    return decode


def _plain(etype: str) -> Callable[[dict[str, Any]], TaskEvent | InvalidEvent]:
    def decode(event: dict[str, Any]) -> TaskEvent | InvalidEvent:
        task = _task(event, etype)
        if type(task) is TaskEvent:
            task.requeue = event.get("requeue") is True
        return task

    return decode


def _worker(etype: str) -> Callable[[dict[str, Any]], WorkerEvent]:
    def decode(event: dict[str, Any]) -> WorkerEvent:
        return WorkerEvent(
            etype,
            label(event.get("hostname")),
            freq=_freq(event.get("freq")),
            active=_count(event.get("active")),
            processed=_count(event.get("processed")),
            loadavg=_loadavg(event.get("loadavg")),
            software=(
                _software(event.get("sw_ident")),
                _software(event.get("sw_ver")),
                _software(event.get("sw_sys")),
            ),
        )

    return decode


def _freq(value: Any) -> float | None:
    ok = type(value) is float or type(value) is int
    return float(value) if ok and 0 < value < 3600 else None


def _count(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None


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


#: The decoder of each event type the state applies; other types are only counted.
DECODERS: dict[str, Callable[[dict[str, Any]], TaskEvent | WorkerEvent | InvalidEvent]] = {
    "task-sent": _sent,
    "task-received": _arrived("task-received"),
    "task-started": _arrived("task-started"),
    "task-succeeded": _succeeded,
    "task-failed": _errored("task-failed"),
    "task-retried": _errored("task-retried"),
    "task-revoked": _plain("task-revoked"),
    "task-rejected": _plain("task-rejected"),
    "task-cancelled": _plain("task-cancelled"),
    "task-ignored": _plain("task-ignored"),
    "worker-online": _worker("worker-online"),
    "worker-heartbeat": _worker("worker-heartbeat"),
    "worker-offline": _worker("worker-offline"),
}


def decode(event: dict[str, Any]) -> TaskEvent | WorkerEvent | InvalidEvent | None:
    """Check one event object; None for a type the state does not apply."""
    decoder = DECODERS.get(event["type"])
    return decoder(event) if decoder is not None else None
