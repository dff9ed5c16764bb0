"""The task view's read-only JSON API under ``/api/v1/``: tasks, workers, queues, failures.

Every answer is ``application/json`` (times are Unix seconds, ``null`` when unknown). The API
only reads: tasks and workers from the cluster state, pool sizes and queues from the inspect
collector's last poll, queue figures from the queue collector's last poll; it never waits on
the broker. A bad query parameter answers 400 with ``{"error": ...}`` naming it. It reads these
options (through the daemon):

- ``--web.task-api`` / ``--no-web.task-api``: whether the API is served at all.
- ``--web.show-task-args``: whether task ``args`` and ``kwargs`` reprs appear in task objects.
- ``--inspect-collector`` and ``--queue-collector``: without them ``pool_size`` is null,
  ``queues`` empty, and ``/api/v1/queues`` answers no queues.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, unquote

import orjson

from ..collectors.inspect import InspectCollector
from ..collectors.queues import QueueCollector
from ..state import ClusterState
from ..state.queries import (
    DEFAULT_FAILURES_SINCE,
    DEFAULT_LIMIT,
    MAX_FAILURES_SINCE,
    MAX_LIMIT,
    TaskQuery,
)
from ..state.records import STATES
from .server import Request, Response

JSON = "application/json"
PREFIX = "/api/v1/"
#: Headers on every answer of the task view, JSON or HTML.
COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}
#: The query parameters ``/api/v1/tasks`` and ``/tasks`` filter by.
TASK_PARAMETERS = ("state", "name", "queue", "worker", "older_than", "limit")
#: Task fields shown only with ``--web.show-task-args``.
ARG_FIELDS = ("args", "kwargs")

_DIGITS = re.compile(r"[0-9]{1,9}")

Params = dict[str, list[str]]


class BadRequest(ValueError):
    """A query parameter that cannot be used; the message names it."""


def parse_params(query: str) -> Params:
    """The query string's parameters, each with all its values in order."""
    try:
        return parse_qs(query, keep_blank_values=True, strict_parsing=False, max_num_fields=100)
    except ValueError as exc:
        raise BadRequest(f"bad query string: {exc}") from None


def _check_known(params: Params, known: tuple[str, ...]) -> None:
    for key in params:
        if key not in known:
            raise BadRequest(f"unknown parameter {key!r} (known: {', '.join(known)})")


def _single(params: Params, key: str) -> str | None:
    values = params.get(key)
    if values is None:
        return None
    if len(values) > 1:
        raise BadRequest(f"{key}: given more than once")
    return values[0]


def _seconds(key: str, text: str, upper: float | None = None) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (upper is not None and value > upper):
        most = "" if upper is None else f" up to {upper:g}"
        raise BadRequest(f"{key}: expected a number of seconds from 0{most}, got {text!r}")
    return value


def parse_task_query(params: Params) -> TaskQuery:
    """The ``/api/v1/tasks`` filters from query parameters; BadRequest names a bad one.

    ``state`` is comma-separated and may also be repeated (as an HTML form sends it).
    """
    _check_known(params, TASK_PARAMETERS)
    states = None
    if "state" in params:
        wanted = [s for value in params["state"] for s in value.split(",")]
        unknown = [s for s in wanted if s not in STATES]
        if unknown:
            raise BadRequest(f"state: unknown value {unknown[0]!r} (known: {', '.join(STATES)})")
        states = frozenset(wanted)
    text: dict[str, str | None] = {}
    for key in ("name", "queue", "worker"):
        text[key] = _single(params, key)
        if text[key] == "":
            raise BadRequest(f"{key}: must not be empty")
    older = _single(params, "older_than")
    older_than = None if older is None else _seconds("older_than", older)
    limit_text = _single(params, "limit")
    limit = DEFAULT_LIMIT
    if limit_text is not None:
        if not _DIGITS.fullmatch(limit_text) or not 1 <= int(limit_text) <= MAX_LIMIT:
            raise BadRequest(
                f"limit: expected a whole number from 1 to {MAX_LIMIT}, got {limit_text!r}"
            )
        limit = int(limit_text)
    return TaskQuery(
        states=states,
        name=text["name"],
        queue=text["queue"],
        worker=text["worker"],
        older_than=older_than,
        limit=limit,
    )


def parse_since(params: Params) -> float:
    """The ``since`` window of ``/api/v1/failures`` in seconds (default one hour)."""
    _check_known(params, ("since",))
    text = _single(params, "since")
    if text is None:
        return DEFAULT_FAILURES_SINCE
    since = _seconds("since", text, MAX_FAILURES_SINCE)
    if since == 0:
        raise BadRequest(f"since: expected a number of seconds above 0, got {text!r}")
    return since


class TaskApi:
    """The data behind ``/api/v1/*`` and the task pages, and the JSON route itself."""

    def __init__(
        self,
        state: ClusterState,
        inspect: InspectCollector | None = None,
        queues: QueueCollector | None = None,
        show_args: bool = False,
    ) -> None:
        self.state = state
        self.inspect = inspect
        self.queues = queues
        self.show_args = show_args

    def now(self) -> float:
        """The state's clock."""
        return self.state.clock()

    # -- data, as the JSON answers hold it ------------------------------------------------------

    def _task(self, task: dict[str, Any]) -> dict[str, Any]:
        if not self.show_args:
            for key in ARG_FIELDS:
                task.pop(key, None)
        return task

    def tasks(self, query: TaskQuery) -> dict[str, Any]:
        """``{"tasks": [...], "total": N}`` for ``query``."""
        found, total = self.state.find_tasks(query)
        return {"tasks": [self._task(t) for t in found], "total": total}

    def task(self, task_id: str) -> dict[str, Any] | None:
        """One task with its details and history; None when it is not known."""
        detail = self.state.task_detail(task_id)
        return None if detail is None else self._task(detail)

    def workers(self) -> dict[str, Any]:
        """``{"workers": [...]}``: the state's workers with the pool size and queues inspect saw."""
        reports = self.inspect.reports() if self.inspect is not None else {}
        rows = []
        for row in self.state.worker_rows():
            report = reports.get(row["hostname"])
            row["pool_size"] = report.pool_size if report is not None else None
            queues = report.queues if report is not None else None
            row["queues"] = list(queues) if queues is not None else []
            rows.append(row)
        return {"workers": rows}

    def queue_rows(self) -> dict[str, Any]:
        """``{"queues": [...], "updated": T}`` from the queue collector's last poll."""
        if self.queues is None:
            return {"queues": [], "updated": None}
        measured, updated = self.queues.last_poll()
        rows = []
        if measured is not None:
            now = self.now()
            for name in sorted(measured.length):
                oldest = measured.oldest_sent.get(name)
                rows.append(
                    {
                        "name": name,
                        "length": measured.length[name],
                        "unacked": None if measured.unacked is None else measured.unacked.get(name),
                        "consumers": None
                        if measured.consumers is None
                        else measured.consumers.get(name),
                        "oldest_message_age": None if oldest is None else max(0.0, now - oldest),
                    }
                )
        return {"queues": rows, "updated": updated}

    def failures(self, since: float) -> dict[str, Any]:
        """``{"failures": [...]}`` over the last ``since`` seconds."""
        return {"failures": self.state.failures(since)}

    # -- the route ------------------------------------------------------------------------------

    def __call__(self, request: Request) -> Response | None:
        """Answer ``/api/v1/...``; None for other paths."""
        if not request.path.startswith(PREFIX) or request.method not in ("GET", "HEAD"):
            return None
        endpoint = request.path[len(PREFIX) :]
        try:
            params = parse_params(request.query)
            return self._answer(endpoint, params)
        except BadRequest as exc:
            return json_response(400, {"error": str(exc)})

    def _answer(self, endpoint: str, params: Params) -> Response | None:
        if endpoint == "tasks":
            return json_response(200, self.tasks(parse_task_query(params)))
        if endpoint.startswith("tasks/") and len(endpoint) > len("tasks/"):
            _check_known(params, ())
            task_id = unquote(endpoint[len("tasks/") :])
            detail = self.task(task_id)
            if detail is None:
                return json_response(404, {"error": f"no task {task_id!r} is known"})
            return json_response(200, detail)
        if endpoint == "failures":
            return json_response(200, self.failures(parse_since(params)))
        if endpoint == "workers":
            _check_known(params, ())
            return json_response(200, self.workers())
        if endpoint == "queues":
            _check_known(params, ())
            return json_response(200, self.queue_rows())
        return json_response(404, {"error": f"no endpoint {PREFIX}{endpoint}"})


def json_response(status: int, data: Mapping[str, Any]) -> Response:
    """``data`` as a JSON answer."""
    return Response(status, orjson.dumps(data), JSON, COMMON_HEADERS)
