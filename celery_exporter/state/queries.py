"""Questions the task view asks of the records, and the JSON-ready answers.

:class:`TaskQuery` is a parsed ``/api/v1/tasks`` filter; :func:`select` applies it to a list of
records taken under the state's lock, outside it; :func:`task_row` and :func:`task_detail`
turn a record into the API's TASK object (the caller holds the lock, so the copy is
consistent). Names are the API's contract.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .failures import FailureRow
from .records import detail, events
from .tasks import Task
from .workers import Worker

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
DEFAULT_FAILURES_SINCE = 3600.0
MAX_FAILURES_SINCE = 86_400.0


def _latest(task: Task) -> float:
    """When the task's latest event happened (per its sender), for listing the latest first."""
    history = task.history
    return history[-2] if history else 0.0


@dataclass(frozen=True)
class TaskQuery:
    """Which tasks ``/api/v1/tasks`` lists; None means any."""

    states: frozenset[str] | None = None
    name: str | None = None
    queue: str | None = None
    worker: str | None = None
    #: Seconds since the task started, or was received if it has not started.
    older_than: float | None = None
    limit: int = DEFAULT_LIMIT


def select(tasks: Iterable[Task], query: TaskQuery, now: float) -> tuple[list[Task], int]:
    """The ``query.limit`` matching tasks with the latest events (latest first), and the count."""
    found = tasks if isinstance(tasks, list) else list(tasks)
    if query.states is not None:
        states = query.states
        found = [t for t in found if t.state in states]
    if query.name is not None:
        name = query.name
        found = [t for t in found if (detail(t).title or t.name) == name]
    if query.queue is not None:
        found = [t for t in found if t.queue == query.queue]
    if query.worker is not None:
        worker = query.worker
        found = [t for t in found if (detail(t).worker or t.host) == worker]
    if query.older_than is not None:
        cutoff = now - query.older_than
        found = [t for t in found if (_since(t) or cutoff + 1.0) <= cutoff]
    if len(found) <= query.limit:
        return sorted(found, key=_latest, reverse=True), len(found)
    # Tables list tasks in about the order of their events: sorting is the fastest way here.
    found.sort(key=_latest, reverse=True)
    return found[: query.limit], len(found)


def _since(task: Task) -> float | None:
    started = task.started
    return started if started is not None else task.received


def task_row(task: Task, with_args: bool) -> dict[str, Any]:
    """The API's TASK object for a task."""
    more = detail(task)
    progress = more.progress
    row: dict[str, Any] = {
        "id": task.uuid,
        "name": more.title or task.name,
        "state": task.state,
        "queue": task.queue,
        "worker": more.worker or task.host or None,
        "sent": task.sent,
        "received": task.received,
        "started": task.started,
        "finished": task.finished,
        "runtime": task.runtime,
        "retries": task.retries,
        "exception": more.exception,
        "eta": task.eta,
        "progress": None
        if progress is None
        else {
            "current": progress[0],
            "total": progress[1],
            "message": progress[2],
            "updated": progress[3],
        },
    }
    if with_args:
        row["args"] = more.args
        row["kwargs"] = more.kwargs
    return row


def task_detail(task: Task, with_args: bool) -> dict[str, Any]:
    """The API's TASK object with the exception, traceback, lineage, retry link and history."""
    row = task_row(task, with_args)
    more = detail(task)
    exception = more.exception
    row["exception_message"] = exception_message(more.exception_repr, exception)
    traceback = more.traceback
    row["traceback"] = (
        "".join(traceback) if traceback is not None and exception is not None else None
    )
    row["parent_id"] = more.parent_id
    row["root_id"] = task.root_id
    row["retried_as"] = more.retried_as
    row["history"] = [
        {"type": etype, "timestamp": when, "worker": worker} for etype, when, worker in events(task)
    ]
    return row


def worker_row(host: str, up: bool, worker: Worker) -> dict[str, Any]:
    """The WORKER object of the API: what the events tell about one worker."""
    return {
        "hostname": host,
        "up": up,
        "last_heartbeat": worker.last_heartbeat,
        "active": worker.active,
        "reserved": worker.reserved,
        "processed": worker.processed,
        "pool_busy": worker.busy,
        "load": list(worker.loadavg) if worker.loadavg is not None else None,
        "sw_ver": worker.sw_ver or None,
    }


def failure_row(row: FailureRow) -> dict[str, Any]:
    """One ``/api/v1/failures`` entry."""
    return {
        "name": row.name,
        "exception": row.exception,
        "count": row.count,
        "last_seen": row.last_seen,
        "last_task_id": row.last_task_id,
        "last_message": exception_message(row.last_message, row.exception),
    }


def exception_message(text: str | None, exception: str | None) -> str | None:
    """The message of an exception repr: ``ValueError('bad')`` gives ``bad``.

    A repr of another form (several arguments, a custom ``__repr__``) is given as it is.
    """
    if text is None:
        return None
    if exception and text.startswith(exception + "(") and text.endswith(")"):
        inner = text[len(exception) + 1 : -1]
        if not inner:
            return ""
        if inner[0] in "'\"" and inner[-1] == inner[0] and len(inner) >= 2:
            try:
                value = ast.literal_eval(inner)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                return inner
            return value if isinstance(value, str) else inner
        return inner
    return text
