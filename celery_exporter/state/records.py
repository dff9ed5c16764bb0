"""What the task view keeps of each task, on the same task objects the series use.

The series' handlers (:mod:`.handlers`) track each task in the tables of :mod:`.tasks`: in
flight up to ``--max-tracked-tasks`` (the oldest dropped first), then among the last
``--max-finished-tasks`` finished. With the task view on (``--web.task-api``),
:class:`TaskRecords` then adds to that same :class:`~.tasks.Task` what the view shows: its
latest state, when it finished, its runtime and retries, its history, and, in a
:class:`TaskDetail` made only for the tasks that need one, its error, progress, arguments
(``--web.show-task-args``), parent and a name or worker that a label cap replaced. One object
per task serves both, so the view costs little memory or time per event. For the three
commonest events (received, started, succeeded) the series' handlers do the view's part
inline (:mod:`.handlers`), with :func:`call_detail` here; the others go through
:meth:`TaskRecords.handlers`.

Long texts are capped: tracebacks at :data:`MAX_TRACEBACK_BYTES` (the frames that failures
share are kept once), exception reprs, progress messages and argument reprs at
:data:`MAX_TEXT_LENGTH` characters, and a task's history at :data:`MAX_HISTORY` events. The
caller holds the state's lock.

Options read (through :class:`~celery_exporter.state.settings.Settings`):
``--web.show-task-args``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..events.decode import TASK_EVENTS
from ..events.fields import UNKNOWN
from ..events.schema import TaskEvent, TaskWithError, TaskWithEta
from .failures import FailureLog
from .labels import OVERFLOW
from .tasks import Task, TaskTable

#: Every state a task can be in; the API's ``state`` filter takes these.
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
#: Most distinct traceback frames kept as one shared object each before that table starts afresh.
MAX_SHARED_TRACEBACKS = 1000

Event = tuple[str, float, "str | None"]
Handler = Callable[[Any, float], "Task | None"]
Update = Callable[[Any, float, Task], None]
#: The types whose series handler does the view's part inline.
_INLINE = frozenset({"task-received", "task-started", "task-succeeded"})
_HISTORY_ITEMS = 3 * MAX_HISTORY


class TaskDetail:
    """What only some tasks have: an error, progress, arguments, a parent, a capped label."""

    __slots__ = (
        "args", "exception", "exception_repr", "kwargs", "parent_id", "progress", "retried_as",
        "title", "traceback", "worker",
    )  # fmt: skip

    def __init__(self) -> None:
        #: The task's name or worker, when a label cap made the series' one ``other``.
        self.title: str | None = None
        self.worker: str | None = None
        self.exception: str | None = None
        self.exception_repr: str | None = None
        #: The traceback as (all but its last line, its last line): the first part, a failing
        #: line of code's frames, is one object for every failure that shares it.
        self.traceback: tuple[str, str] | None = None
        #: (current, total, message, when it arrived), from the latest task-progress.
        self.progress: tuple[float | None, float | None, str | None, float] | None = None
        self.args: str | None = None
        self.kwargs: str | None = None
        self.parent_id: str | None = None
        #: The id of the task an operator sent in its place (task control's retry).
        self.retried_as: str | None = None


_NO_DETAIL = TaskDetail()


def detail(task: Task) -> TaskDetail:
    """The task's detail; an empty one (not to be written to) when it has none."""
    found: TaskDetail | None = task.detail
    return found if found is not None else _NO_DETAIL


def detail_for_update(task: Task) -> TaskDetail:
    """The task's detail, made when it has none yet."""
    found: TaskDetail | None = task.detail
    if found is None:
        found = task.detail = TaskDetail()
    return found


def events(task: Task) -> list[Event]:
    """The task's history as (type, timestamp, worker) in arrival order."""
    h = task.history
    return [(h[i], h[i + 1], h[i + 2] or None) for i in range(0, len(h), 3)]


class TaskRecords:
    """The task view's handler of each task event, and the failures by name and exception.

    Each runs the series' handler of its type, then adds to the task it returns what the view
    shows; an exception of the view's part is reported to ``on_error(event type, where)`` and
    the series keep what they counted.
    """

    def __init__(
        self,
        tasks: TaskTable,
        series: Mapping[str, Handler],
        on_error: Callable[[str, str], None],
        with_args: bool = False,
    ) -> None:
        self.tasks = tasks
        self.series = series
        self.on_error = on_error
        self.with_args = with_args
        self.failures = FailureLog()
        self._tracebacks: dict[str, str] = {}

    def handlers(self) -> dict[str, Handler]:
        """Each rarer task event type's handler: the series' one, then the view's update.

        The three commonest types (received, started, succeeded) are not here: their series
        handlers do the view's part inline (:mod:`.handlers`).
        """
        return {
            etype: self._then(etype, getattr(self, etype.removeprefix("task-")))
            for etype in (*TASK_EVENTS, "task-progress")
            if etype not in _INLINE
        }

    def _then(self, etype: str, update: Update) -> Handler:
        series = self.series[etype]

        def handle(event: TaskEvent, now: float) -> Task | None:
            task = series(event, now)
            if task is not None:
                try:
                    update(event, now, task)
                except Exception:
                    self.on_error(etype, "task_view")
            return task

        return handle

    # -- shared steps ---------------------------------------------------------------------------

    @staticmethod
    def _note(task: Task, etype: str, when: float | None, worker: str) -> None:
        """Add an event to the task's history, within :data:`MAX_HISTORY` events.

        Only events that can repeat without end (a retry, a requeue) can fill the history,
        so only theirs check the cap; the hot updates below add their event inline.
        """
        history = task.history
        if len(history) >= _HISTORY_ITEMS:
            history = history[:3] + history[6:]
        # Concatenation, here and below: a third faster than unpacking into a new tuple.
        task.history = history + (etype, when, worker)  # noqa: RUF005

    def _call(self, task: Task, event: TaskEvent) -> None:
        """What task-sent tells about the call: retries, ids, arguments."""
        lineage(task, event)
        call_detail(task, event, self.with_args)

    def _error(self, task: Task, event: TaskWithError) -> None:
        found = detail_for_update(task)
        found.exception = event.exception
        found.exception_repr = _text(event.exception_repr)
        found.traceback = self._traceback(event.traceback)

    def _traceback(self, value: Any) -> tuple[str, str] | None:
        """The traceback capped, split before its last line, the frames shared.

        Failures of one line of code have the same frames and differ, if at all, in the last
        line (the exception's message): the frames are kept once for all of them.
        """
        text = _traceback(value)
        if text is None:
            return None
        cut = text.rfind("\n", 0, len(text) - 1) + 1
        frames = text[:cut]
        shared = self._tracebacks
        found = shared.get(frames)
        if found is None:
            if len(shared) >= MAX_SHARED_TRACEBACKS:
                shared.clear()
            found = shared[frames] = frames
        return found, text[cut:]

    # -- events ---------------------------------------------------------------------------------

    def sent(self, event: TaskWithEta, now: float, task: Task) -> None:
        """A producer published the task; its host is no worker."""
        self._note(task, "task-sent", event.timestamp or now, "")
        self._call(task, event)

    def failed(self, event: TaskWithError, now: float, task: Task) -> None:
        """The task raised."""
        when = event.timestamp or now
        self._note(task, "task-failed", when, task.host)
        if task.finished is not None:
            return
        task.state = "failed"
        task.finished = when
        task.runtime = run_time(task)
        self._error(task, event)
        found = detail(task)
        self.failures.add(
            found.title or task.name, event.exception, task.uuid, found.exception_repr,
            when, now,
        )  # fmt: skip

    def retried(self, event: TaskWithError, now: float, task: Task) -> None:
        """The task asked to run again later."""
        self._note(task, "task-retried", event.timestamp or now, task.host)
        self._error(task, event)
        if task.finished is None:
            task.state = "retried"
            task.retries += 1

    def revoked(self, event: TaskEvent, now: float, task: Task) -> None:
        """The task was revoked (and maybe terminated) by the worker that held it."""
        self._end(task, "revoked", "task-revoked", event, now)

    def rejected(self, event: TaskEvent, now: float, task: Task) -> None:
        """A worker rejected the task: back to its queue, or dropped."""
        if not event.requeue:
            self._end(task, "rejected", "task-rejected", event, now)
            return
        self._note(task, "task-rejected", event.timestamp or now, task.host)
        if task.finished is None:
            task.state = "rejected"

    def cancelled(self, event: TaskEvent, now: float, task: Task) -> None:
        """A worker gave the task back to its queue."""
        self._note(task, "task-cancelled", event.timestamp or now, task.host)
        if task.finished is None:
            task.state = "sent"

    def ignored(self, event: TaskEvent, now: float, task: Task) -> None:
        """The task raised Ignore (the in-worker exporter's event)."""
        self._end(task, "ignored", "task-ignored", event, now)

    def progress(self, event: TaskEvent, now: float, task: Task) -> None:
        """The task reported how far it is (it is not added to the history)."""
        message = event.message
        if message is not None and len(message) > MAX_TEXT_LENGTH:
            message = message[:MAX_TEXT_LENGTH]
        detail_for_update(task).progress = (event.current, event.total, message, now)

    def _end(self, task: Task, state: str, etype: str, event: TaskEvent, now: float) -> None:
        """A final event: the task ends in ``state`` unless it had already ended."""
        when = event.timestamp or now
        self._note(task, etype, when, task.host)
        if task.finished is None:
            task.state = state
            task.finished = when


def lineage(task: Task, event: TaskEvent) -> None:
    """What task-sent and task-received tell of the task's retries and root."""
    retries = event.retries
    if retries is not None and retries > task.retries:
        task.retries = retries
    root = event.root_id
    if root is not None:
        uuid = task.uuid
        task.root_id = uuid if root == uuid else root[:MAX_TEXT_LENGTH]


def call_detail(task: Task, event: TaskEvent, with_args: bool) -> None:
    """What only some calls have: a parent, a name a label cap replaced, the arguments."""
    parent = event.parent_id
    if parent is not None:
        detail_for_update(task).parent_id = parent[:MAX_TEXT_LENGTH]
    if task.name is OVERFLOW and event.name != UNKNOWN:
        detail_for_update(task).title = event.name
    if with_args:
        found = detail_for_update(task)
        found.args = _text(event.args)
        found.kwargs = _text(event.kwargs)


def run_time(task: Task) -> float | None:
    """How long the task ran: from its start to its finish, if both are known and in order."""
    started, finished = task.started, task.finished
    if started is None or finished is None or finished < started:
        return None
    return finished - started


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
