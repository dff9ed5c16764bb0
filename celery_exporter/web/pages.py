"""The task view's HTML pages: ``/tasks``, ``/tasks/<id>``, ``/workers``, ``/queues``, ``/failures``.

Each page renders the data :class:`~celery_exporter.web.api.TaskApi` answers in JSON, through
Jinja2 templates (``web/templates/``) with autoescaping on: task names, arguments, exception
messages, tracebacks, hostnames and queue names come from the broker and are never trusted.
The pages work without JavaScript and carry none: a strict Content-Security-Policy allows no
script at all, and ``?refresh=1`` (a checkbox on each page) reloads the page every
:data:`REFRESH_SECONDS` with a ``<meta http-equiv="refresh">``. It reads these options (through
the daemon):

- ``--web.task-api`` / ``--no-web.task-api``: whether the pages are served at all.
- ``--web.stuck-after``: a started task running longer than this is marked "stuck" on
  ``/tasks``.
- ``--web.show-task-args``: whether task arguments are shown (as for the API).
- ``--web.enable-control``: whether ``/tasks/<id>`` shows the Revoke, Terminate and Retry
  buttons (their forms post to :mod:`.control` with the user's ``csrf_token``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from ..state.records import FINAL_STATES, STATES
from .api import (
    COMMON_HEADERS,
    TASK_PARAMETERS,
    BadRequest,
    Params,
    TaskApi,
    parse_params,
    parse_since,
    parse_task_query,
)
from .server import Request, Response

if TYPE_CHECKING:
    from jinja2 import Environment

HTML = "text/html; charset=utf-8"
#: Seconds between two reloads of a page with ``?refresh=1``.
REFRESH_SECONDS = 10
#: No script, no images, no frames; styles only from the page itself; forms only to us.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self' 'unsafe-inline'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = {
    **COMMON_HEADERS,
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
}
#: The pages, as the landing page links them: (relative path, what it shows).
LINKS = (
    ("tasks", "recent, running and stuck tasks, with filters"),
    ("workers", "workers: liveness, load, pools and queues"),
    ("queues", "queue depths and consumers"),
    ("failures", "failures grouped by task and exception"),
)
_REFRESH = "refresh"


def quote_id(value: object) -> str:
    """A value quoted to sit in one path segment or one query value."""
    return quote(str(value), safe="")


def format_number(value: float | None) -> str:
    """A number without a needless ``.0``; ``?`` when unknown."""
    return "?" if value is None else f"{value:g}"


def format_time(value: float | None) -> str:
    """A Unix time as UTC text; ``-`` when unknown."""
    if value is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value))


def format_seconds(value: float | None) -> str:
    """A duration in seconds, minutes or hours; ``-`` when unknown."""
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.3g} s" if value < 10 else f"{value:.0f} s"
    if value < 3600:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def environment() -> Environment:
    """The templates' environment: autoescaping on for every template, undefined names fail."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(
        loader=PackageLoader("celery_exporter.web", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(q=quote_id, time=format_time, seconds=format_seconds, num=format_number)
    return env


class Templates:
    """The page templates, loaded with Jinja2 when the first page is rendered, not before.

    An exporter whose pages nobody opens does not hold Jinja2 (about 2 MB) in memory.
    """

    def __init__(self) -> None:
        self._env: Environment | None = None

    def render(self, name: str, context: Mapping[str, Any]) -> str:
        """The template ``name`` rendered with ``context``."""
        if self._env is None:
            self._env = environment()
        return self._env.get_template(name).render(context)


class TaskPages:
    """The HTML route: one page per JSON endpoint, rendered from the same data."""

    def __init__(
        self,
        api: TaskApi,
        stuck_after: float,
        form_token: Callable[[str | None], str | None] | None = None,
    ) -> None:
        self.api = api
        self.stuck_after = stuck_after
        #: The control forms' token for a user; None without ``--web.enable-control``.
        self.form_token = form_token
        self.templates = Templates()

    def __call__(self, request: Request) -> Response | None:
        """Answer the page paths; None for other paths."""
        path = request.path
        page = path.split("/", 2)[1]
        if page not in ("tasks", "workers", "queues", "failures") or request.method not in (
            "GET",
            "HEAD",
        ):
            return None
        base = {
            "root": "../" * (path.count("/") - 1),
            "page": page,
            "states": STATES,
            "show_args": self.api.show_args,
            "refresh_seconds": REFRESH_SECONDS,
            "now": self.api.now(),
        }
        try:
            # A form sends its empty fields too: an empty field filters nothing.
            params = {k: [v for v in vs if v] for k, vs in parse_params(request.query).items()}
            params = {k: values for k, values in params.items() if values}
            base["refresh"] = params.pop(_REFRESH, [""])[-1] in ("1", "on")
        except BadRequest as exc:
            return self._render(400, "error.html", base, error=str(exc), refresh=False)
        if path in ("/tasks", "/tasks/"):
            return self._tasks(base, params)
        if path.startswith("/tasks/"):
            return self._task(base, unquote(path[len("/tasks/") :]), request.user)
        if path == f"/{page}":
            return self._other(base, page, params)
        return None

    def _tasks(self, base: dict[str, Any], params: Params) -> Response:
        form: dict[str, Any] = {k: params.get(k, [""])[-1] for k in TASK_PARAMETERS}
        form["state"] = [s for value in params.get("state", []) for s in value.split(",")]
        try:
            query = parse_task_query(params)
        except BadRequest as exc:
            return self._render(
                400, "tasks.html", base, form=form, error=str(exc), tasks=[], total=0
            )
        found = self.api.tasks(query)
        for task in found["tasks"]:
            task["stuck"] = self._stuck(task, base["now"])
        return self._render(
            200, "tasks.html", base, form=form, error=None, stuck_after=self.stuck_after, **found
        )

    def _task(self, base: dict[str, Any], task_id: str, user: str | None) -> Response:
        detail = self.api.task(task_id)
        if detail is None:
            return self._render(404, "error.html", base, error=f"No task {task_id!r} is known.")
        detail["stuck"] = self._stuck(detail, base["now"])
        control = None
        if self.form_token is not None:
            finished = detail["state"] in FINAL_STATES
            control = {
                "token": self.form_token(user) or "",
                "can_revoke": not finished,
                "can_retry": detail["state"] in ("failed", "revoked", "rejected"),
            }
        return self._render(200, "task.html", base, task=detail, control=control)

    def _stuck(self, task: Mapping[str, Any], now: float) -> bool:
        """Whether the task started longer than ``--web.stuck-after`` ago and still runs."""
        started = task["started"]
        return (
            task["state"] == "started" and started is not None and now - started > self.stuck_after
        )

    def _other(self, base: dict[str, Any], page: str, params: Params) -> Response:
        try:
            if page == "failures":
                since = parse_since(params)
                return self._render(
                    200, "failures.html", base, since=since, **self.api.failures(since)
                )
            if params:
                raise BadRequest(f"unknown parameter {next(iter(params))!r}")
        except BadRequest as exc:
            return self._render(400, "error.html", base, error=str(exc))
        if page == "workers":
            return self._render(200, "workers.html", base, **self.api.workers())
        return self._render(200, "queues.html", base, **self.api.queue_rows())

    def _render(
        self, status: int, template: str, base: Mapping[str, Any], **context: Any
    ) -> Response:
        body = self.templates.render(template, {**base, **context})
        return Response(status, body.encode(), HTML, HEADERS)
