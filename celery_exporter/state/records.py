"""A record of each task for the task view: where it is, what it did, in bounded memory.

:class:`TaskRecords` keeps one :class:`TaskRecord` per task id: tasks in flight up to
``--max-tracked-tasks`` (the oldest dropped first) and a ring of the last
``--max-finished-tasks`` finished ones. It takes the same checked events as the series
(:mod:`celery_exporter.events.decode`), after them, under the state's lock; nothing here is a
label, so names, queues and hostnames are kept as the events give them (cut to
:data:`~celery_exporter.events.fields.MAX_VALUE_LENGTH` characters by the decoder). Long texts
are capped: tracebacks at :data:`MAX_TRACEBACK_BYTES`, exception reprs, progress messages and
(with ``--web.show-task-args``) argument reprs at :data:`MAX_TEXT_LENGTH` characters, and a
task's history at :data:`MAX_HISTORY` events.

Options read (through :class:`~celery_exporter.state.settings.Settings`):
``--max-tracked-tasks``, ``--max-finished-tasks``, ``--web.show-task-args``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from ..events.decode import TASK_EVENTS, TaskEvent
from ..events.fields import UNKNOWN
from .failures import FailureLog
from .worker_queues import WorkerQueues

#: Every state a record can be in; the API's ``state`` filter takes these.
STATES: tuple[str, ...] = (
    "sent", "received", "started", "succeeded", "failed", "retried", "revoked", "rejected",
    "ignored",
)  # fmt: skip
#: States after which a task is finished: later events add to its history, not its state.
FINAL_STATES = frozenset({"succeeded", "failed", "revoked", "rejected", "ignored"})
#: Longest traceback kept, in bytes of UTF-8; longer ones keep their end (the exception).
MAX_TRACEBACK_BYTES = 16 * 1024
#: Longest exception repr, progress message or argument repr kept, in characters.
MAX_TEXT_LENGTH = 4096
#: Most events kept in a task's history; past it the oldest but the first are dropped.
MAX_HISTORY = 64
#: Most distinct names and hostnames shared between records before the table starts afresh.
MAX_SHARED_STRINGS = 10_000

Event = tuple[str, float, "str | None"]
_HISTORY_ITEMS = 3 * MAX_HISTORY


class TaskRecord:
    """What the event stream told about one task.

    Only the fields the updates read are set when a record is made; the others are set when
    an event tells them, so read them with ``getattr(record, name, None)`` (:func:`field`).
    """

    __slots__ = (
        "args", "eta", "exception", "exception_repr", "finished", "history", "id", "kwargs",
        "name", "parent_id", "progress", "queue", "received", "retried_as", "retries", "root_id",
        "runtime", "sent", "seq", "started", "state", "traceback", "worker",
    )  # fmt: skip

    sent: float | None
    received: float | None
    finished: float | None
    runtime: float | None
    exception: str | None
    exception_repr: str | None
    traceback: str | None
    eta: float | None
    #: (current, total, message, when it arrived), from the latest task-progress.
    progress: tuple[float | None, float | None, str | None, float] | None
    args: str | None
    kwargs: str | None
    parent_id: str | None
    root_id: str | None
    #: The id of the task an operator sent in its place (task control's retry).
    retried_as: str | None

    def __init__(self, task_id: str) -> None:
        self.id = task_id
        self.state = "sent"
        #: Where the latest event about it came in the stream (larger is later).
        self.seq = 0
        #: Event type, time and worker of each event, flat: [type, time, worker, type, ...].
        self.history: list[Any] = []
        self.name: str | None = None
        self.queue: str | None = None
        self.worker: str | None = None
        self.retries = 0
        self.started: float | None = None

    def events(self) -> list[Event]:
        """The history as (type, timestamp, worker) in arrival order."""
        h = self.history
        return [(h[i], h[i + 1], h[i + 2]) for i in range(0, len(h), 3)]


def field(record: TaskRecord, name: str) -> Any:
    """A record's field, None when no event has told it yet."""
    return getattr(record, name, None)


class TaskRecords:
    """Records of tasks in flight (capped, oldest dropped) and a ring of finished ones."""

    def __init__(
        self,
        max_inflight: int,
        max_finished: int,
        with_args: bool = False,
        worker_queues: WorkerQueues | None = None,
    ) -> None:
        self.max_inflight = max_inflight
        self.max_finished = max_finished
        self.with_args = with_args
        self.worker_queues = worker_queues or WorkerQueues()
        self.inflight: dict[str, TaskRecord] = {}
        self.finished: dict[str, TaskRecord] = {}
        # The finished ids in the order they finished (a dict used as a queue would slow down
        # as deleted entries pile up at its front).
        self._ring: list[str | None] = [None] * max_finished
        self._pos = 0
        #: Records dropped to stay within the caps.
        self.dropped = 0
        self.failures = FailureLog()
        self._strings: dict[str, str] = {}
        self._order = itertools.count(1)

    def __len__(self) -> int:
        return len(self.inflight) + len(self.finished)

    def get(self, task_id: str) -> TaskRecord | None:
        """The record of this task, in flight or finished."""
        return self.inflight.get(task_id) or self.finished.get(task_id)

    def all(self) -> list[TaskRecord]:
        """Every record (a new list; the records themselves are shared)."""
        return [*self.inflight.values(), *self.finished.values()]

    def by_type(self) -> dict[str, Callable[[TaskEvent, float], None]]:
        """The update of each task event type: the method named after it, and task-progress."""
        updates = {etype: getattr(self, etype.removeprefix("task-")) for etype in TASK_EVENTS}
        return {**updates, "task-progress": self.progress}

    # -- finding records ------------------------------------------------------------------------

    def _share(self, text: str) -> str:
        """One string object for each name and hostname, so records do not each hold a copy."""
        strings = self._strings
        if len(strings) >= MAX_SHARED_STRINGS:
            strings.clear()
        strings[text] = text
        return text

    def _new(self, task_id: str, track: bool) -> TaskRecord:
        """A new record, tracked in flight unless a final event is about to retire it.

        Untracked, it cannot push a task still in flight out of the table.
        """
        record = TaskRecord(task_id)
        if track:
            inflight = self.inflight
            inflight[task_id] = record
            if len(inflight) > self.max_inflight:
                del inflight[next(iter(inflight))]
                self.dropped += 1
        return record

    def _arrival(self, event: TaskEvent, now: float, track: bool = True) -> TaskRecord:
        """The record of the task a worker's event is about, the event added to its history."""
        host = event["hostname"]
        worker = self._strings.get(host) or self._share(host)
        task_id = event["uuid"]
        record = self.inflight.get(task_id) or self.finished.get(task_id)
        if record is None:
            record = self._new(task_id, track)
        record.seq = next(self._order)
        record.worker = worker
        history = record.history
        if len(history) >= _HISTORY_ITEMS:
            del history[3:6]
        history += (event["type"], event["timestamp"] or now, worker)
        return record

    def _finish(self, record: TaskRecord, state: str, when: float) -> None:
        """Move a record to the finished ring, dropping the oldest finished past the cap."""
        record.state = state
        record.finished = when
        task_id = record.id
        self.inflight.pop(task_id, None)
        ring, pos = self._ring, self._pos
        oldest = ring[pos]
        if oldest is not None and self.finished.pop(oldest, None) is not None:
            self.dropped += 1
        ring[pos] = task_id
        self._pos = pos + 1 if pos + 1 < len(ring) else 0
        self.finished[task_id] = record

    def _details(self, record: TaskRecord, event: TaskEvent) -> None:
        """What task-sent and task-received tell about the call: name, ids, retries, args."""
        raw: dict[str, Any] = event  # type: ignore[assignment]
        name = event["name"]
        if name != UNKNOWN:
            record.name = self._strings.get(name) or self._share(name)
        retries = raw.get("retries")
        if type(retries) is int and retries > record.retries:
            record.retries = retries
        eta = event.get("eta")
        if eta is not None:
            record.eta = eta
        parent, root = raw.get("parent_id"), raw.get("root_id")
        if type(parent) is str:
            record.parent_id = parent[:MAX_TEXT_LENGTH]
        if type(root) is str:
            record.root_id = root[:MAX_TEXT_LENGTH]
        if self.with_args:
            record.args = _text(raw.get("args"))
            record.kwargs = _text(raw.get("kwargs"))

    # -- events ---------------------------------------------------------------------------------

    def sent(self, event: TaskEvent, now: float) -> None:
        """A producer published the task (possibly after it already ran); its host is no worker."""
        task_id = event["uuid"]
        record = self.inflight.get(task_id) or self.finished.get(task_id)
        if record is None:
            record = self._new(task_id, True)
        record.seq = next(self._order)
        when = event["timestamp"] or now
        record.history += ("task-sent", when, None)
        record.sent = when
        if event["queue"]:
            record.queue = event["queue"]
        self._details(record, event)

    def received(self, event: TaskEvent, now: float) -> None:
        """A worker took the task off its queue."""
        record = self._arrival(event, now)
        record.received = event["timestamp"] or now
        if record.state not in FINAL_STATES:
            record.state = "received"
        if record.queue is None:
            record.queue = event.get("queue") or self._only_queue(record.worker)
        self._details(record, event)

    def _only_queue(self, worker: str | None) -> str | None:
        """The one queue a worker consumes (per inspect), if it consumes exactly one."""
        queues = self.worker_queues.of(worker) if worker is not None else None
        return queues[0] if queues is not None and len(queues) == 1 else None

    def started(self, event: TaskEvent, now: float) -> None:
        """A worker started running the task."""
        record = self._arrival(event, now)
        record.started = event["timestamp"] or now
        if record.state not in FINAL_STATES:
            record.state = "started"

    def succeeded(self, event: TaskEvent, now: float) -> None:
        """The task returned."""
        record = self._arrival(event, now, False)
        if record.state in FINAL_STATES:
            return
        when = event["timestamp"] or now
        runtime = event["runtime"]
        started = record.started
        if runtime is None and started is not None and when >= started:
            runtime = when - started
        record.runtime = runtime
        self._finish(record, "succeeded", when)

    def failed(self, event: TaskEvent, now: float) -> None:
        """The task raised."""
        record = self._arrival(event, now, False)
        if record.state in FINAL_STATES:
            return
        when = event["timestamp"] or now
        self._error(record, event)
        started = record.started
        record.runtime = when - started if started is not None and when >= started else None
        self._finish(record, "failed", when)
        self.failures.add(
            record.name or UNKNOWN, event["exception"], record.id, record.exception_repr, when, now
        )

    def retried(self, event: TaskEvent, now: float) -> None:
        """The task asked to run again later."""
        record = self._arrival(event, now)
        self._error(record, event)
        if record.state not in FINAL_STATES:
            record.state = "retried"
            record.retries += 1

    def revoked(self, event: TaskEvent, now: float) -> None:
        """The task was revoked (and maybe terminated) by the worker that held it."""
        record = self._arrival(event, now, False)
        if record.state not in FINAL_STATES:
            self._finish(record, "revoked", event["timestamp"] or now)

    def rejected(self, event: TaskEvent, now: float) -> None:
        """A worker rejected the task: back to its queue, or dropped."""
        record = self._arrival(event, now, event["requeue"])
        if record.state in FINAL_STATES:
            return
        if event["requeue"]:
            record.state = "rejected"
        else:
            self._finish(record, "rejected", event["timestamp"] or now)

    def cancelled(self, event: TaskEvent, now: float) -> None:
        """A worker gave the task back to its queue."""
        record = self._arrival(event, now)
        if record.state not in FINAL_STATES:
            record.state = "sent"

    def ignored(self, event: TaskEvent, now: float) -> None:
        """The task raised Ignore (the in-worker exporter's event)."""
        record = self._arrival(event, now, False)
        if record.state not in FINAL_STATES:
            self._finish(record, "ignored", event["timestamp"] or now)

    def progress(self, event: TaskEvent, now: float) -> None:
        """The task reported how far it is (it is not added to the history)."""
        record = self.get(event["uuid"])
        if record is None:
            return
        message = event["message"]
        if message is not None and len(message) > MAX_TEXT_LENGTH:
            message = message[:MAX_TEXT_LENGTH]
        record.progress = (event["current"], event["total"], message, now)
        record.seq = next(self._order)

    @staticmethod
    def _error(record: TaskRecord, event: TaskEvent) -> None:
        record.exception = event["exception"]
        record.exception_repr = _text(event["exception_repr"])
        record.traceback = _traceback(event.get("traceback"))


def _text(value: Any) -> str | None:
    if type(value) is not str:
        return None
    return value if len(value) <= MAX_TEXT_LENGTH else value[:MAX_TEXT_LENGTH]


def _traceback(value: Any) -> str | None:
    """A traceback within :data:`MAX_TRACEBACK_BYTES`, keeping its end."""
    if type(value) is not str:
        return None
    if len(value) <= MAX_TRACEBACK_BYTES // 4:
        return value
    data = value.encode("utf-8", "replace")
    if len(data) <= MAX_TRACEBACK_BYTES:
        return value
    marker = "[... cut ...]\n"
    keep = data[-(MAX_TRACEBACK_BYTES - len(marker)) :]
    return marker + keep.decode("utf-8", "ignore")
