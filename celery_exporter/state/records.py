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

from collections.abc import Callable
from typing import Any

from ..events.decode import TaskEvent
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


class TaskRecord:
    """What the event stream told about one task."""

    __slots__ = (
        "args", "eta", "exception", "exception_repr", "finished", "history", "id", "kwargs",
        "name", "parent_id", "progress", "queue", "received", "retries", "root_id", "runtime",
        "sent", "started", "state", "traceback", "updated", "worker",
    )  # fmt: skip

    def __init__(self, task_id: str, now: float) -> None:
        self.id = task_id
        self.name: str | None = None
        self.state = "sent"
        self.queue: str | None = None
        self.worker: str | None = None
        self.sent: float | None = None
        self.received: float | None = None
        self.started: float | None = None
        self.finished: float | None = None
        self.runtime: float | None = None
        self.retries = 0
        self.exception: str | None = None
        self.exception_repr: str | None = None
        self.traceback: str | None = None
        self.eta: float | None = None
        #: (current, total, message, when it arrived), from the latest task-progress.
        self.progress: tuple[float | None, float | None, str | None, float] | None = None
        self.args: str | None = None
        self.kwargs: str | None = None
        self.parent_id: str | None = None
        self.root_id: str | None = None
        #: Event type, time and worker of each event, flat: [type, time, worker, type, ...].
        self.history: list[Any] = []
        #: When the latest event about it arrived.
        self.updated = now

    def events(self) -> list[Event]:
        """The history as (type, timestamp, worker) in arrival order."""
        h = self.history
        return [(h[i], h[i + 1], h[i + 2]) for i in range(0, len(h), 3)]


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
        #: Records dropped to stay within the caps.
        self.dropped = 0
        self.failures = FailureLog()
        self._strings: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.inflight) + len(self.finished)

    def get(self, task_id: str) -> TaskRecord | None:
        """The record of this task, in flight or finished."""
        return self.inflight.get(task_id) or self.finished.get(task_id)

    def all(self) -> list[TaskRecord]:
        """Every record (a new list; the records themselves are shared)."""
        return [*self.inflight.values(), *self.finished.values()]

    def by_type(self) -> dict[str, Callable[[TaskEvent, float], None]]:
        """The update of each task event type."""
        return {
            "task-sent": self.sent,
            "task-received": self.received,
            "task-started": self.started,
            "task-succeeded": self.succeeded,
            "task-failed": self.failed,
            "task-retried": self.retried,
            "task-revoked": self.revoked,
            "task-rejected": self.rejected,
            "task-cancelled": self.cancelled,
            "task-ignored": self.ignored,
            "task-progress": self.progress,
        }

    # -- finding records ------------------------------------------------------------------------

    def _shared(self, text: str) -> str:
        """One string object for each name and hostname, so records do not each hold a copy."""
        strings = self._strings
        found = strings.get(text)
        if found is None:
            if len(strings) >= MAX_SHARED_STRINGS:
                strings.clear()
            found = strings[text] = text
        return found

    def _record(
        self, event: TaskEvent, now: float, worker: str | None, track: bool = True
    ) -> TaskRecord:
        """The task's record, a new one if it has none; the event goes into its history.

        A new record is tracked in flight unless ``track`` is false (a final event is about to
        move it to the finished ring, and it must not push out a task still in flight).
        """
        task_id = event["uuid"]
        record = self.inflight.get(task_id)
        if record is None:
            record = self.finished.get(task_id)
            if record is None:
                record = TaskRecord(task_id, now)
                if track:
                    inflight = self.inflight
                    inflight[task_id] = record
                    if len(inflight) > self.max_inflight:
                        del inflight[next(iter(inflight))]
                        self.dropped += 1
        record.updated = now
        history = record.history
        if len(history) >= 3 * MAX_HISTORY:
            del history[3:6]
        history += (event["type"], event["timestamp"] or now, worker)
        return record

    def _arrival(self, event: TaskEvent, now: float, track: bool = True) -> TaskRecord:
        """The record of a task a worker received or started, with that worker noted."""
        worker = self._shared(event["hostname"])
        record = self._record(event, now, worker, track)
        record.worker = worker
        if record.queue is None:
            queue = event.get("queue")
            if queue is None:
                queues = self.worker_queues.of(worker)
                if queues is not None and len(queues) == 1:
                    queue = queues[0]
            record.queue = queue
        return record

    def _finish(self, record: TaskRecord, state: str, when: float) -> None:
        """Move a record to the finished ring, dropping the oldest finished past the cap."""
        record.state = state
        record.finished = when
        self.inflight.pop(record.id, None)
        finished = self.finished
        finished[record.id] = record
        if len(finished) > self.max_finished:
            del finished[next(iter(finished))]
            self.dropped += 1

    def _details(self, record: TaskRecord, event: TaskEvent) -> None:
        """What task-sent and task-received tell about the call: name, ids, retries, args."""
        raw: dict[str, Any] = event  # type: ignore[assignment]
        name = event.get("name")
        if name and name != UNKNOWN:
            record.name = self._shared(name)
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
        """A producer published the task (possibly after it already ran)."""
        record = self._record(event, now, None)
        record.sent = event["timestamp"] or now
        if event.get("queue"):
            record.queue = event["queue"]
        self._details(record, event)

    def received(self, event: TaskEvent, now: float) -> None:
        """A worker took the task off its queue."""
        record = self._arrival(event, now)
        record.received = event["timestamp"] or now
        if record.state not in FINAL_STATES:
            record.state = "received"
        self._details(record, event)

    def started(self, event: TaskEvent, now: float) -> None:
        """A worker started running the task."""
        record = self._arrival(event, now)
        record.started = event["timestamp"] or now
        if record.state not in FINAL_STATES:
            record.state = "started"

    def succeeded(self, event: TaskEvent, now: float) -> None:
        """The task returned."""
        record = self._arrival(event, now, track=False)
        if record.state in FINAL_STATES:
            return
        when = event["timestamp"] or now
        runtime = event["runtime"]
        if runtime is None and record.started is not None and when >= record.started:
            runtime = when - record.started
        record.runtime = runtime
        self._finish(record, "succeeded", when)

    def failed(self, event: TaskEvent, now: float) -> None:
        """The task raised."""
        record = self._arrival(event, now, track=False)
        if record.state in FINAL_STATES:
            return
        when = event["timestamp"] or now
        self._error(record, event)
        if record.started is not None and when >= record.started:
            record.runtime = when - record.started
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
        """The task was revoked (and maybe terminated)."""
        record = self._record(event, now, self._shared(event["hostname"]), track=False)
        if record.state not in FINAL_STATES:
            self._finish(record, "revoked", event["timestamp"] or now)

    def rejected(self, event: TaskEvent, now: float) -> None:
        """A worker rejected the task: back to its queue, or dropped."""
        record = self._arrival(event, now, track=event["requeue"])
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
        record = self._arrival(event, now, track=False)
        if record.state not in FINAL_STATES:
            self._finish(record, "ignored", event["timestamp"] or now)

    def progress(self, event: TaskEvent, now: float) -> None:
        """The task reported how far it is (it is not added to the history)."""
        task_id = event["uuid"]
        record = self.inflight.get(task_id) or self.finished.get(task_id)
        if record is None:
            return
        message = event["message"]
        if message is not None and len(message) > MAX_TEXT_LENGTH:
            message = message[:MAX_TEXT_LENGTH]
        record.progress = (event["current"], event["total"], message, now)
        record.updated = now

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
