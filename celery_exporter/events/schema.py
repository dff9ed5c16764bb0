"""The typed events the state applies, one class per event type, and the fast way to them.

Every event reaches the state's handlers as an instance of a class here, whose fields have the
types and ranges the handlers use. There are two ways to one: :func:`read_envelopes` decodes
kombu Redis envelopes straight into them with msgspec (JSON, base64 and every type and range
check in C, fields the state does not read skipped without being built), and
:mod:`celery_exporter.events.decode` checks an event object already parsed (any transport, or a
message the fast way declined) field by field in Python. The fast way accepts only what the
checked way would keep unchanged; anything else (a field of the wrong type or out of range, a
long label, an unknown event type, another envelope shape) makes it decline, and the message
takes the checked way, which corrects or rejects each field and counts what it rejects. So
both give the same events, and the tests hold them to it.

Two fields are completed after decoding, by ``__post_init__``: a failure's ``exception``, the
exception's class name from its repr (``exception_repr``) or traceback, and task-sent's
``queue``, from ``routing_key`` when the event names no queue. An ETA is read as a datetime
(RFC 3339, as Celery writes it); the handlers make it a Unix time when there is one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, ClassVar, Final, Literal, cast

import msgspec
from msgspec import Meta, Struct

from .fields import MAX_VALUE_LENGTH, UNKNOWN, exception_name, label

#: Longest task id accepted; a task event with a longer or missing one is invalid.
MAX_UUID_LENGTH = 200
#: Latest timestamp accepted (year 5138); later, negative, NaN or infinite ones are dropped.
MAX_TIMESTAMP = 1e11
#: Longest runtime accepted, in seconds.
MAX_RUNTIME = 1e7
#: Longest heartbeat interval accepted, in seconds.
MAX_FREQ = 3600.0
#: Largest progress figure (``current``, ``total``) accepted, either sign.
MAX_PROGRESS = 1e15
#: Largest load average accepted.
MAX_LOAD = 1e12
#: Largest count accepted (retries, active, processed): JSON parsers read larger integers as
#: floats.
MAX_COUNT = 2**63 - 1

Label = Annotated[str, Meta(min_length=1, max_length=MAX_VALUE_LENGTH)]
Uuid = Annotated[str, Meta(min_length=1, max_length=MAX_UUID_LENGTH)]
Time = Annotated[float, Meta(gt=0, lt=MAX_TIMESTAMP)]
Runtime = Annotated[float, Meta(ge=0, lt=MAX_RUNTIME)]
Progress = Annotated[float, Meta(gt=-MAX_PROGRESS, lt=MAX_PROGRESS)]
Load = Annotated[float, Meta(gt=-MAX_LOAD, lt=MAX_LOAD)]
Count = Annotated[int, Meta(ge=0, le=MAX_COUNT)]
Freq = Annotated[float, Meta(gt=0, lt=MAX_FREQ)]

# The exception's repr is the event's ``exception``; the class name computed from it is renamed
# to a key no event is expected to carry (one that does has it overwritten).
_RENAMED = {"exception_repr": "exception", "exception": "~exception"}


class TaskEvent(Struct, tag_field="type", gc=False, rename=_RENAMED):
    """A checked task event: every field any task handler reads, None where unusable."""

    #: The event type, e.g. ``task-received`` (set on each class below).
    type: ClassVar[str] = ""
    uuid: Uuid
    #: Task name; ``unknown`` when the event has none (only task-sent and task-received do).
    name: Label = UNKNOWN
    hostname: Label = UNKNOWN
    #: When the event happened, per its sender; None when missing or out of range.
    timestamp: Time | None = None
    #: The queue the event names (task-sent's ``queue`` or ``routing_key``; the in-worker
    #: exporter's events carry one), if any.
    queue: Label | None = None
    #: task-succeeded: seconds the task ran, if the event says.
    runtime: Runtime | None = None
    #: task-rejected: whether the task goes back to its queue.
    requeue: bool = False
    #: task-progress (a task's own custom event): how far it is, and what it is doing.
    current: Progress | None = None
    total: Progress | None = None
    message: str | None = None
    #: task-sent, task-received: what the task view shows of the call.
    retries: Count | None = None
    root_id: str | None = None
    parent_id: str | None = None
    args: str | None = None
    kwargs: str | None = None


class TaskWithEta(TaskEvent):
    """task-sent, task-received, task-started: they may carry an ETA."""

    #: When the task may run, if the event gives a valid ETA (naive means UTC).
    eta: datetime | None = None


class TaskWithError(TaskEvent):
    """task-failed and task-retried: they carry an exception."""

    #: The exception as the worker wrote it, e.g. ``KeyError('x')``.
    exception_repr: str | None = None
    #: The exception's class name.
    exception: str = UNKNOWN
    traceback: str | None = None

    def __post_init__(self) -> None:
        self.exception = label(exception_name(self.exception_repr, self.traceback))


class TaskSent(TaskWithEta, tag="task-sent"):
    """A producer published the task; its queue is ``queue``, else ``routing_key``."""

    routing_key: Label | None = None

    def __post_init__(self) -> None:
        if self.queue is None:
            self.queue = self.routing_key


class TaskReceived(TaskWithEta, tag="task-received"):
    """A worker took the task off its queue."""


class TaskStarted(TaskWithEta, tag="task-started"):
    """A worker started running the task."""


class TaskSucceeded(TaskEvent, tag="task-succeeded"):
    """The task returned."""


class TaskFailed(TaskWithError, tag="task-failed"):
    """The task raised."""


class TaskRetried(TaskWithError, tag="task-retried"):
    """The task asked to run again later."""


class TaskRevoked(TaskEvent, tag="task-revoked"):
    """The task was revoked."""


class TaskRejected(TaskEvent, tag="task-rejected"):
    """A worker rejected the task."""


class TaskCancelled(TaskEvent, tag="task-cancelled"):
    """A worker gave the task back to its queue."""


class TaskIgnored(TaskEvent, tag="task-ignored"):
    """The task raised Ignore (the in-worker exporter's event)."""


class TaskProgress(TaskEvent, tag="task-progress"):
    """A task's own report of how far it is."""


class WorkerEvent(Struct, tag_field="type", gc=False):
    """A checked worker event (online, heartbeat, offline): None where a field was unusable."""

    type: ClassVar[str] = ""
    hostname: Label = UNKNOWN
    freq: Freq | None = None
    active: Count | None = None
    processed: Count | None = None
    loadavg: tuple[Load, Load, Load] | None = None
    sw_ident: Label | None = None
    sw_ver: Label | None = None
    sw_sys: Label | None = None


class WorkerOnline(WorkerEvent, tag="worker-online"):
    """A worker came up."""


class WorkerHeartbeat(WorkerEvent, tag="worker-heartbeat"):
    """A worker is alive."""


class WorkerOffline(WorkerEvent, tag="worker-offline"):
    """A worker shut down."""


Event = TaskEvent | WorkerEvent

#: The class of each task event type of a task's life, as workers and producers send them.
_TASK_CLASSES = (
    TaskSent, TaskReceived, TaskStarted, TaskSucceeded, TaskFailed, TaskRetried, TaskRevoked,
    TaskRejected, TaskCancelled, TaskIgnored,
)  # fmt: skip
TASK_CLASSES: Final[dict[str, type[TaskEvent]]] = {
    cast(str, cls.__struct_config__.tag): cls for cls in _TASK_CLASSES
}
#: The class of each event type the state applies; other types are only counted.
CLASSES: Final[dict[str, type[Event]]] = {
    **TASK_CLASSES,
    "task-progress": TaskProgress,
    **{
        cast(str, cls.__struct_config__.tag): cls
        for cls in (WorkerOnline, WorkerHeartbeat, WorkerOffline)
    },
}
for _etype, _cls in CLASSES.items():
    _cls.type = _etype


class _Properties(Struct):
    body_encoding: Literal["base64"]


class _Envelope(Struct, rename={"content_type": "content-type",
                                "content_encoding": "content-encoding"}):  # fmt: skip
    """A kombu Redis envelope as Celery sends it: a base64 JSON body in UTF-8."""

    body: bytes
    properties: _Properties
    content_type: Literal["application/json"]
    content_encoding: Literal["utf-8"]


_AnyEvent = (
    TaskSent | TaskReceived | TaskStarted | TaskSucceeded | TaskFailed | TaskRetried
    | TaskRevoked | TaskRejected | TaskCancelled | TaskIgnored | TaskProgress
    | WorkerOnline | WorkerHeartbeat | WorkerOffline
)  # fmt: skip
_ENVELOPE = msgspec.json.Decoder(_Envelope)
_BODY: msgspec.json.Decoder[Any] = msgspec.json.Decoder(list[_AnyEvent] | _AnyEvent)


def read_envelopes(payloads: Sequence[bytes], events: list[Event]) -> int:
    """Add the events of Redis envelopes to ``events`` until one must take the checked way.

    Returns how many envelopes were read: ``len(payloads)``, or the index of the first one
    declined (another shape of envelope, or a field the checked way would correct), whose
    events are not added. One call for a whole chunk: a Python call less per message.
    """
    envelope, body = _ENVELOPE.decode, _BODY.decode
    for index, data in enumerate(payloads):
        try:
            found = body(envelope(data).body)
        except msgspec.MsgspecError:
            return index
        if type(found) is list:
            events += found
        else:
            events.append(found)
    return len(payloads)
