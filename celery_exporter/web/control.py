"""Task control over HTTP: revoke, terminate and retry a task, opt-in and only behind basic auth.

Routes (POST only; without ``--web.enable-control`` they are not served at all, so 404):

- ``/api/v1/tasks/{id}/revoke`` and ``/api/v1/tasks/{id}/retry`` answer JSON;
- ``/tasks/{id}/revoke`` and ``/tasks/{id}/retry`` are what the buttons of ``/tasks/<id>`` post,
  and answer an HTML page.

A body is JSON (``application/json``) or a form (``application/x-www-form-urlencoded``).
Revoke takes ``terminate`` (bool, default false) and ``signal`` (``SIGTERM``, the default, or
``SIGKILL``) and answers 202 ``{"id", "action": "revoke" | "terminate", "requested_by"}``.
Retry sends a failed, revoked or rejected task again, with the name, arguments and queue the
result backend stored for it (:mod:`celery_exporter.broker.control`), and answers 202
``{"id", "new_id"}``; the old task's record links to the new one (``retried_as``). A task still
waiting or running, or one that succeeded, is 409; so is one the backend holds no arguments for
(the message says how to have them stored). A task the view has no record of is retried when
the result backend says it failed, was revoked or rejected, and is 404 when it knows nothing.

Cross-site requests: a POST whose ``Origin`` is not this server's host, or whose
``Sec-Fetch-Site`` says another site, is 403; every POST but a JSON one (which a browser only
sends cross-site after a CORS preflight this server never approves) must carry ``csrf_token``,
an HMAC of the user name under a secret made at start (the pages' forms hold it), else 403.

Every action that reaches these routes is logged at info (``task_control``: user, action, task
id, outcome) and counted in ``celery_exporter_control_actions_total{action,outcome}``. Options
read (through the daemon): ``--web.enable-control``, ``--result-backend``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable, Mapping
from email.message import Message
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from ..broker.control import (
    RESULT_EXTENDED_HINT,
    RETRYABLE_STATES,
    SIGNALS,
    ControlError,
    StoredCall,
)
from ..counters import LabelledCounter
from ..log import get_logger
from ..state import ClusterState
from .api import COMMON_HEADERS, JSON
from .pages import HEADERS, HTML, REFRESH_SECONDS, Templates
from .server import Request, Response

log = get_logger(__name__)

ACTIONS = ("revoke", "terminate", "retry")
#: What became of a request, as the counter's ``outcome`` label says it.
OUTCOMES = {202: "accepted", 400: "bad_request", 403: "forbidden", 404: "not_found",
            409: "conflict", 415: "unsupported", 503: "failed", 504: "timeout"}  # fmt: skip
#: Record states of a task that may be retried.
RETRYABLE = frozenset({"failed", "revoked", "rejected"})
#: Longest task id taken, in characters.
MAX_ID_LENGTH = 255
FORM = "application/x-www-form-urlencoded"
_TRUE, _FALSE = frozenset({"true", "1", "on", "yes"}), frozenset({"false", "0", "off", "no"})
_FIELDS = {"revoke": ("terminate", "signal", "csrf_token"), "retry": ("csrf_token",)}
_PREFIXES = (("/api/v1/tasks/", "api"), ("/tasks/", "page"))


class Controller(Protocol):
    """What changes the cluster (:class:`celery_exporter.broker.control.Controller`)."""

    @property
    def can_retry(self) -> bool: ...

    def revoke(self, task_id: str, terminate: bool, signal: str) -> None: ...

    def stored_call(self, task_id: str) -> StoredCall: ...

    def send_again(self, call: StoredCall) -> str: ...


class Refused(Exception):
    """A request answered with an error: its status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ControlActions(LabelledCounter):
    """``celery_exporter_control_actions_total{action,outcome}``: what task control did."""

    def __init__(self) -> None:
        super().__init__(
            "celery_exporter_control_actions",
            "Task control requests (--web.enable-control) by action (revoke, terminate, retry) "
            "and outcome (accepted, bad_request, forbidden, not_found, conflict, unsupported, "
            "failed, timeout).",
            ("action", "outcome"),
            start=[(action, "accepted") for action in ACTIONS],
        )

    def counts(self) -> dict[tuple[str, str], int]:
        """A copy of the counts, by (action, outcome)."""
        return {(action, outcome): n for (action, outcome), n in self.by_labels().items()}


class CsrfTokens:
    """Per-user tokens for the pages' forms: an HMAC of the user name under a per-process secret."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)

    def token(self, user: str) -> str:
        """The token the forms of ``user`` carry."""
        return hmac.new(self._secret, user.encode("utf-8"), hashlib.sha256).hexdigest()

    def valid(self, user: str, token: str) -> bool:
        """Whether ``token`` is ``user``'s."""
        return hmac.compare_digest(self.token(user), token)


def cross_site(headers: Message) -> str | None:
    """Why a request comes from another site (Origin, Sec-Fetch-Site), or None."""
    origin = headers.get("Origin")
    if origin is not None:
        host = (headers.get("Host") or "").strip().lower()
        try:
            netloc = urlsplit(origin.strip()).netloc.lower()
        except ValueError:
            netloc = ""
        if not netloc or netloc != host:
            return f"Origin {origin[:100]!r} is not this server ({host[:100]!r})"
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site.strip().lower() not in ("same-origin", "none"):
        return f"Sec-Fetch-Site is {site[:50]!r}"
    return None


def media_type(content_type: str) -> str:
    """A Content-Type without its parameters, in lower case."""
    return content_type.split(";", 1)[0].strip().lower()


def parse_body(content_type: str, body: bytes) -> dict[str, Any]:
    """The fields of a JSON object or an urlencoded form; Refused 400 or 415 when neither."""
    kind = media_type(content_type)
    if kind == JSON:
        if not body.strip():
            return {}
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise Refused(400, f"body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise Refused(400, "body must be a JSON object")
        return data
    if kind not in (FORM, "") or (kind == "" and body.strip()):
        raise Refused(415, f"send the fields as application/json or {FORM}")
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refused(400, f"bad form body: {exc}") from None
    for key, values in fields.items():
        if len(values) > 1:
            raise Refused(400, f"{key}: given more than once")
    return {key: values[0] for key, values in fields.items()}


def parse_revoke(fields: Mapping[str, Any]) -> tuple[bool, str]:
    """``terminate`` and ``signal`` from the fields; Refused 400 naming a bad one."""
    terminate = fields.get("terminate", False)
    if isinstance(terminate, str) and terminate.strip().lower() in _TRUE | _FALSE:
        terminate = terminate.strip().lower() in _TRUE
    if not isinstance(terminate, bool):
        raise Refused(400, f"terminate: expected true or false, got {str(terminate)[:50]!r}")
    signal = fields.get("signal", "SIGTERM")
    if signal not in SIGNALS:
        raise Refused(
            400, f"signal: expected one of {', '.join(SIGNALS)}, got {str(signal)[:50]!r}"
        )
    return terminate, signal


class TaskControl:
    """The POST routes of task control, over an injected :class:`Controller`."""

    def __init__(
        self,
        controller: Controller,
        state: ClusterState,
        auth_required: Callable[[], bool],
        actions: ControlActions | None = None,
        tokens: CsrfTokens | None = None,
    ) -> None:
        self.controller = controller
        self.state = state
        self.auth_required = auth_required
        self.actions = actions or ControlActions()
        self.tokens = tokens or CsrfTokens()
        self.templates = Templates()
        # One retry at a time: two clicks on Retry must not send the task twice.
        self._retrying = threading.Lock()

    def form_token(self, user: str | None) -> str | None:
        """The token for the forms a page shows ``user``; None when control cannot be used."""
        return None if user is None else self.tokens.token(user)

    def __call__(self, request: Request) -> Response | None:
        """Answer a control POST; None for other requests."""
        if request.method != "POST":
            return None
        for prefix, kind in _PREFIXES:
            if request.path.startswith(prefix):
                quoted, _, verb = request.path[len(prefix) :].rpartition("/")
                if verb in _FIELDS and quoted and "/" not in quoted:
                    return self._handle(request, kind, unquote(quoted), verb)
        return None

    def _handle(self, request: Request, kind: str, task_id: str, verb: str) -> Response:
        action, answer, user = verb, {}, request.user
        try:
            fields = self._admit(request, task_id, verb)
            if verb == "revoke":
                terminate, signal = parse_revoke(fields)
                action = "terminate" if terminate else "revoke"
                self.controller.revoke(task_id, terminate, signal)
                answer = {"id": task_id, "action": action, "requested_by": user}
            else:
                with self._retrying:
                    answer = {"id": task_id, "new_id": self._retry(task_id)}
            status, message = 202, ""
        except (Refused, ControlError) as exc:
            status, message = exc.status, str(exc)
        outcome = OUTCOMES.get(status, str(status))
        self.actions.count(action, outcome)
        log.info("task_control", user=user, action=action, task_id=task_id[:MAX_ID_LENGTH],
                 outcome=outcome, status=status, new_id=answer.get("new_id"),
                 error=message or None)  # fmt: skip
        if kind == "page":
            return self._page(request, status, task_id, action, answer, message)
        body = answer if status == 202 else {"error": message}
        return Response(status, orjson.dumps(body), JSON, COMMON_HEADERS)

    def _admit(self, request: Request, task_id: str, verb: str) -> dict[str, Any]:
        """The request's fields, once it may act; Refused otherwise."""
        if not self.auth_required() or request.user is None:
            raise Refused(403, "task control needs basic auth: add basic_auth_users to the "
                               "--web.config.file")  # fmt: skip
        why = cross_site(request.headers)
        if why is not None:
            raise Refused(403, f"cross-site request refused: {why}")
        if not task_id or len(task_id) > MAX_ID_LENGTH or not task_id.isprintable():
            raise Refused(400, f"expected a task id of 1 to {MAX_ID_LENGTH} printable characters")
        content_type = request.headers.get("Content-Type") or ""
        fields = parse_body(content_type, request.body)
        token = fields.pop("csrf_token", None)
        forged = not isinstance(token, str) or not self.tokens.valid(request.user, token)
        if forged and media_type(content_type) != JSON:
            raise Refused(403, "missing or wrong csrf_token: post from the task's page")
        for key in fields:
            if key not in _FIELDS[verb]:
                raise Refused(400, f"unknown field {str(key)[:50]!r} (known: "
                                   f"{', '.join(_FIELDS[verb][:-1]) or 'none'})")  # fmt: skip
        return fields

    def _retry(self, task_id: str) -> str:
        """Send ``task_id`` again as a new task; its id. Refused when it may not be."""
        detail = self.state.task_detail(task_id)
        if detail is not None:
            if detail.get("retried_as"):
                raise Refused(409, f"task {task_id!r} was already retried as "
                                   f"{detail['retried_as']!r}")  # fmt: skip
            if detail["state"] not in RETRYABLE:
                raise Refused(409, f"task {task_id!r} is {detail['state']}: only a failed, "
                                   "revoked or rejected task can be retried")  # fmt: skip
        if not self.controller.can_retry:
            raise Refused(409, f"retry needs a result backend: {RESULT_EXTENDED_HINT}")
        call = self.controller.stored_call(task_id)
        if detail is None and call.state not in RETRYABLE_STATES:
            if call.state == "PENDING":
                raise Refused(404, f"no task {task_id!r} is known, here or in the result backend")
            raise Refused(409, f"task {task_id!r} is {call.state} in the result backend: only "
                               "a failed, revoked or rejected task can be retried")  # fmt: skip
        if not call.complete:
            raise Refused(409, f"the result backend holds no arguments for task {task_id!r}: "
                               f"{RESULT_EXTENDED_HINT}")  # fmt: skip
        new_id = self.controller.send_again(call)
        self.state.link_retry(task_id, new_id)
        return new_id

    def _page(
        self,
        request: Request,
        status: int,
        task_id: str,
        action: str,
        answer: Mapping[str, Any],
        message: str,
    ) -> Response:
        context = {
            "root": "../" * (request.path.count("/") - 1),
            "page": "tasks",
            "refresh": False,
            "refresh_seconds": REFRESH_SECONDS,
            "now": self.state.clock(),
            "task_id": task_id,
            "action": action,
            "accepted": status == 202,
            "new_id": answer.get("new_id"),
            "user": request.user,
            "error": message,
        }
        body = self.templates.render("control.html", context)
        return Response(status, body.encode(), HTML, HEADERS)
