"""Event objects as decoded from JSON, checked into typed events, or :data:`INVALID`.

Producers are not trusted: every field the state uses is checked and converted here into the
event classes of :mod:`celery_exporter.events.schema`, so the state's handlers receive fields of
the types they use. A field of the wrong type is treated as absent (a label becomes
``unknown``, a time becomes None, meaning "when it arrived"); only a task event without a
usable ``uuid`` cannot be applied, and decodes to :data:`INVALID` (counted as
``malformed{reason="schema"}``). Labels are cut to
:data:`~celery_exporter.events.fields.MAX_VALUE_LENGTH` characters here; how many distinct values
each label may take is the state's business.

This is the checked way, for event objects another decoder has already parsed: the events of
other transports, and the Redis messages that :func:`~celery_exporter.events.schema.read_envelopes`
declined because some field needs correcting. It gives the same event as that fast way
wherever both accept one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from .fields import MAX_VALUE_LENGTH, clean, eta_datetime, label
from .schema import (
    CLASSES,
    MAX_COUNT,
    MAX_FREQ,
    MAX_LOAD,
    MAX_PROGRESS,
    MAX_RUNTIME,
    MAX_TIMESTAMP,
    MAX_UUID_LENGTH,
    TASK_CLASSES,
    Event,
    TaskEvent,
    TaskSent,
    TaskWithError,
    TaskWithEta,
    WorkerEvent,
)


class InvalidEvent:
    """An event that cannot be applied: a task event without a usable ``uuid``."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


INVALID: Final = InvalidEvent("schema")
Raw = dict[str, Any]
Decoded = Event | InvalidEvent

#: The task event types of a task's life, as Celery's workers and producers send them.
TASK_EVENTS: Final = tuple(TASK_CLASSES)


def _between(value: Any, low: float, high: float) -> float | None:
    """An int or float with ``low < value < high`` (bool is neither), else None."""
    if (type(value) is float or type(value) is int) and low < value < high:
        return value
    return None


def _runtime(value: Any) -> float | None:
    """A duration in seconds, from 0 up to :data:`MAX_RUNTIME`, else None."""
    if (type(value) is float or type(value) is int) and 0 <= value < MAX_RUNTIME:
        return value
    return None


def _text(value: Any) -> str | None:
    return value if type(value) is str else None


def _queue(value: Any) -> str | None:
    """A queue name: None when missing or empty, cut to a label's length."""
    if type(value) is str:
        return value[:MAX_VALUE_LENGTH] if value else None
    return clean(value) if value else None


def _task(cls: type[TaskEvent], event: Raw) -> Decoded:
    """Check every field a task handler reads; :data:`INVALID` when the uuid is unusable."""
    uuid = event.get("uuid")
    if type(uuid) is not str or not 0 < len(uuid) <= MAX_UUID_LENGTH:
        return INVALID
    get = event.get
    queue = get("queue")
    routing_key = get("routing_key")
    if cls is TaskSent:
        queue = queue or routing_key
    elif type(queue) is not str:
        queue = None
    retries = get("retries")
    fields: dict[str, Any] = {
        "uuid": uuid,
        "name": label(get("name")),
        "hostname": label(get("hostname")),
        "timestamp": _between(get("timestamp"), 0.0, MAX_TIMESTAMP),
        "queue": _queue(queue),
        "runtime": _runtime(get("runtime")),
        "requeue": get("requeue") is True,
        "current": _float(_between(get("current"), -MAX_PROGRESS, MAX_PROGRESS)),
        "total": _float(_between(get("total"), -MAX_PROGRESS, MAX_PROGRESS)),
        "message": _text(get("message")),
        "retries": _count(retries),
        "root_id": _text(get("root_id")),
        "parent_id": _text(get("parent_id")),
        "args": _text(get("args")),
        "kwargs": _text(get("kwargs")),
    }
    # The exception's class is worked out by the class itself (its __post_init__).
    if issubclass(cls, TaskWithEta):
        fields["eta"] = eta_datetime(get("eta"))
        if cls is TaskSent:
            fields["routing_key"] = _label_or_none(routing_key)
    elif issubclass(cls, TaskWithError):
        fields["exception_repr"] = _text(get("exception"))
        fields["traceback"] = _text(get("traceback"))
    return cls(**fields)


def _label_or_none(value: Any) -> str | None:
    return value if type(value) is str and 0 < len(value) <= MAX_VALUE_LENGTH else None


def _count(value: Any) -> int | None:
    """A count: an int from 0 to :data:`MAX_COUNT` (bool is none), else None."""
    return value if type(value) is int and 0 <= value <= MAX_COUNT else None


def _float(value: float | None) -> float | None:
    return float(value) if value is not None else None


def _worker(cls: type[WorkerEvent], event: Raw) -> Decoded:
    """Check every field of a worker event (online, heartbeat, offline)."""
    get = event.get
    return cls(
        hostname=label(get("hostname")),
        freq=_float(_between(get("freq"), 0.0, MAX_FREQ)),
        active=_count(get("active")),
        processed=_count(get("processed")),
        loadavg=_loadavg(get("loadavg")),
        sw_ident=_software(get("sw_ident")),
        sw_ver=_software(get("sw_ver")),
        sw_sys=_software(get("sw_sys")),
    )


def _loadavg(value: Any) -> tuple[float, float, float] | None:
    if (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(type(v) in (int, float) and abs(v) < MAX_LOAD for v in value)
    ):
        return (float(value[0]), float(value[1]), float(value[2]))
    return None


def _software(value: Any) -> str | None:
    return clean(value) if isinstance(value, str) else None


def _decoder(cls: type[Event]) -> Callable[[Raw], Decoded]:
    if issubclass(cls, TaskEvent):
        return lambda event: _task(cls, event)
    assert issubclass(cls, WorkerEvent)
    return lambda event: _worker(cls, event)


#: The decoder of each event type the state applies; other types are only counted.
DECODERS: Final[dict[str, Callable[[Raw], Decoded]]] = {
    etype: _decoder(cls) for etype, cls in CLASSES.items()
}


def decode(event: Raw) -> Decoded | None:
    """Check one event object; None for a type the state does not apply."""
    decoder = DECODERS.get(event["type"])
    return decoder(event) if decoder is not None else None
