"""Tasks in flight and tasks recently finished: the two bounded tables behind the gauges."""

from __future__ import annotations

from typing import Any

from .series import LabelKey

PENDING, RECEIVED, STARTED = 0, 1, 2
#: A bit for each final event type, to remember which ones a finished task has had.
FINAL_BITS = {
    "task-succeeded": 1, "task-failed": 2, "task-revoked": 4, "task-rejected": 8,
    "task-ignored": 16,
}  # fmt: skip


class Task:
    """One task the exporter has seen: in flight, or among the recently finished.

    The series' handlers set the first fields; the task view (:mod:`.records`) the rest.
    """

    __slots__ = (
        "detail", "eta", "finals", "finished", "history", "host", "key", "name", "queue",
        "received", "retries", "root_id", "runtime", "sent", "started", "state", "step", "uuid",
    )  # fmt: skip

    def __init__(self, uuid: str, name: str, queue: str) -> None:
        self.uuid = uuid
        self.name = name
        self.queue = queue
        self.host = ""
        #: The labels it was last counted under (the running gauge's key while it runs).
        self.key: LabelKey = ()
        self.step = PENDING
        self.sent: float | None = None
        self.received: float | None = None
        self.started: float | None = None
        self.eta: float | None = None
        #: Once finished: the final event types it has had (FINAL_BITS), to spot repeats.
        self.finals = 0
        #: The task view's: its latest state, when it finished, how long it ran, its retries.
        self.state = "sent"
        self.finished: float | None = None
        self.runtime: float | None = None
        self.retries = 0
        #: Event type, time and worker of each event, flat: (type, time, worker, type, ...).
        self.history: tuple[Any, ...] = ()
        self.root_id: str | None = None
        #: What few tasks have (an error, progress, arguments, a parent), else None.
        self.detail: Any = None


class TaskTable:
    """In-flight tasks (oldest evicted past ``limit``) and a ring of recently finished ones."""

    def __init__(self, limit: int, finished_limit: int) -> None:
        self.limit = limit
        self.tasks: dict[str, Task] = {}
        #: Recently finished tasks (each with the final event types it has had, to spot
        #: repeats).
        self.finished: dict[str, Task] = {}
        self._ring: list[str | None] = [None] * finished_limit
        self._pos = 0
        self.evicted = 0
        self.duplicates = 0

    def __len__(self) -> int:
        return len(self.tasks)

    def get(self, uuid: str) -> Task | None:
        """The in-flight task with this id."""
        return self.tasks.get(uuid)

    def evict(self) -> Task:
        """Stop tracking the oldest task in flight, to make room for a new one; return it.

        The state's handlers add tasks to :attr:`tasks` themselves and call this when it holds
        more than ``limit``.
        """
        self.evicted += 1
        tasks = self.tasks
        return tasks.pop(next(iter(tasks)))

    def finished_task(self, uuid: str, etype: str) -> tuple[bool, Task | None]:
        """Look a final event up among finished tasks: (repeat of one counted, the task)."""
        task = self.finished.get(uuid)
        if task is None:
            return False, None
        bit = FINAL_BITS[etype]
        if task.finals & bit:
            self.duplicates += 1
            return True, None
        task.finals |= bit
        return False, task

    def was_finished(self, uuid: str) -> Task | None:
        """The finished task with this id, if it is still remembered."""
        return self.finished.get(uuid)

    def remember(self, uuid: str, etype: str, task: Task) -> None:
        """Keep the last ``finished_limit`` finished tasks, the oldest making way first."""
        ring, pos = self._ring, self._pos
        oldest = ring[pos]
        if oldest is not None:
            self.finished.pop(oldest, None)
        ring[pos] = uuid
        self._pos = (pos + 1) % len(ring)
        task.finals = FINAL_BITS[etype]
        self.finished[uuid] = task

    def find(self, uuid: str) -> Task | None:
        """The task with this id, in flight or recently finished."""
        task = self.tasks.get(uuid)
        return task if task is not None else self.finished.get(uuid)

    def all(self) -> list[Task]:
        """Every task in flight and recently finished (a new list of the same objects)."""
        return [*self.tasks.values(), *self.finished.values()]

    def sent_timestamp(self, uuid: str) -> float | None:
        """When the task-sent of a task still waiting or running was sent, if it was seen."""
        task = self.tasks.get(uuid)
        return task.sent if task is not None else None
