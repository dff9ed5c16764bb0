"""Questions the task view asks of the records, and the JSON-ready answers.

:class:`TaskQuery` is a parsed ``/api/v1/tasks`` filter; :func:`select` applies it to a list of
records taken under the state's lock, outside it; :func:`task_row` and :func:`task_detail`
turn a record into the API's TASK object (the caller holds the lock, so the copy is
consistent). Names are the API's contract.
"""

from __future__ import annotations

import ast
import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from .failures import FailureRow
from .records import TaskRecord, field

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
DEFAULT_FAILURES_SINCE = 3600.0
MAX_FAILURES_SINCE = 86_400.0

_latest = attrgetter("seq")


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


def select(
    records: Iterable[TaskRecord], query: TaskQuery, now: float
) -> tuple[list[TaskRecord], int]:
    """The ``query.limit`` matching records with the latest events (latest first), and the count."""
    found = records if isinstance(records, list) else list(records)
    if query.states is not None:
        states = query.states
        found = [r for r in found if r.state in states]
    if query.name is not None:
        found = [r for r in found if r.name == query.name]
    if query.queue is not None:
        found = [r for r in found if r.queue == query.queue]
    if query.worker is not None:
        found = [r for r in found if r.worker == query.worker]
    if query.older_than is not None:
        cutoff = now - query.older_than
        found = [r for r in found if (_since(r) or cutoff + 1.0) <= cutoff]
    return heapq.nlargest(query.limit, found, key=_latest), len(found)


def _since(record: TaskRecord) -> float | None:
    started = record.started
    return started if started is not None else getattr(record, "received", None)


def task_row(record: TaskRecord, with_args: bool) -> dict[str, Any]:
    """The API's TASK object for a record."""
    progress = field(record, "progress")
    row: dict[str, Any] = {
        "id": record.id,
        "name": record.name,
        "state": record.state,
        "queue": record.queue,
        "worker": record.worker,
        "sent": field(record, "sent"),
        "received": field(record, "received"),
        "started": record.started,
        "finished": field(record, "finished"),
        "runtime": field(record, "runtime"),
        "retries": record.retries,
        "exception": field(record, "exception"),
        "eta": field(record, "eta"),
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
        row["args"] = field(record, "args")
        row["kwargs"] = field(record, "kwargs")
    return row


def task_detail(record: TaskRecord, with_args: bool) -> dict[str, Any]:
    """The API's TASK object with the exception, traceback, lineage, retry link and history."""
    row = task_row(record, with_args)
    exception = field(record, "exception")
    row["exception_message"] = exception_message(field(record, "exception_repr"), exception)
    row["traceback"] = field(record, "traceback") if exception is not None else None
    row["parent_id"] = field(record, "parent_id")
    row["root_id"] = field(record, "root_id")
    row["retried_as"] = field(record, "retried_as")
    row["history"] = [
        {"type": etype, "timestamp": when, "worker": worker}
        for etype, when, worker in record.events()
    ]
    return row


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
