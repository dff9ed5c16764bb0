"""Task control's web half: bodies, cross-site checks, status codes, the audit log and counter.

A real MetricsServer with basic auth serves the control routes over a real cluster state; the
controller is a recording stand-in, since these tests are about the web logic only (the real
one is tested against real workers in tests/integration/test_task_control.py).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import re
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from celery_exporter.broker.control import ControlError, StoredCall
from celery_exporter.web.api import TaskApi
from celery_exporter.web.control import (
    ControlActions,
    CsrfTokens,
    Refused,
    TaskControl,
    cross_site,
    parse_body,
    parse_revoke,
)
from celery_exporter.web.pages import LINKS, TaskPages
from celery_exporter.web.server import MetricsServer
from celery_exporter.web.webconfig import WebConfigWatcher
from tests.support.logs import captured_logs
from tests.support.taskview_scene import READY, STUCK_AFTER, Scene, scene
from tests.tls import bcrypt_hash

USER, PASSWORD = "ops", "s3cret pass"
OTHER, OTHER_PASSWORD = "viewer", "other pass"
SECRET = b"k" * 32
JSON_TYPE = {"Content-Type": "application/json"}
FORM_TYPE = {"Content-Type": "application/x-www-form-urlencoded"}


@dataclass
class Recorder:
    """Stands in for the broker-side controller: records calls, answers what it is given."""

    can_retry: bool = True
    stored: dict[str, StoredCall] = field(default_factory=dict)
    error: ControlError | None = None
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    #: Cleared, it holds send_again until set (a slow broker).
    sending: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.sending.set()

    def revoke(self, task_id: str, terminate: bool, signal: str) -> None:
        if self.error is not None:
            raise self.error
        self.calls.append(("revoke", task_id, terminate, signal))

    def stored_call(self, task_id: str) -> StoredCall:
        if self.error is not None:
            raise self.error
        return self.stored.get(task_id, StoredCall(task_id, "PENDING", None, None, None, None))

    def send_again(self, call: StoredCall) -> str:
        assert self.sending.wait(10), "send_again was never let through"
        new_id = f"new-{len(self.calls) + 1}"
        self.calls.append(("send", call.name, call.args, call.kwargs, call.queue))
        return new_id


def stored(task_id: str, state: str = "FAILURE") -> StoredCall:
    """A complete stored call of ``app.fail(1, x=2)`` on queue ``celery``."""
    return StoredCall(task_id, state, "app.fail", [1], {"x": 2}, "celery")


@dataclass
class Rig:
    """A server with control on, its scene, recorder and counter."""

    server: MetricsServer
    scene: Scene
    recorder: Recorder
    actions: ControlActions
    tokens: CsrfTokens

    def post(
        self,
        path: str,
        body: bytes | str = b"",
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = (USER, PASSWORD),
    ) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body of one POST."""
        return request(self.server, "POST", path, body, headers, auth)

    def api(self, path: str, data: Mapping[str, Any] | None = None) -> tuple[int, Any]:
        """POST ``data`` as JSON to ``path``; the status and the decoded answer."""
        status, headers, body = self.post(path, json.dumps(data or {}), JSON_TYPE)
        assert headers["Content-Type"] == "application/json"
        return status, json.loads(body)


def request(
    server: MetricsServer,
    method: str,
    path: str,
    body: bytes | str = b"",
    headers: Mapping[str, str] | None = None,
    auth: tuple[str, str] | None = (USER, PASSWORD),
) -> tuple[int, dict[str, str], bytes]:
    """One request to ``server`` with basic auth ``auth``."""
    sent = dict(headers or {})
    if auth is not None:
        sent["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def web_config(tmp_path: Path, users: bool = True) -> Path:
    """A web config file with two users (or none)."""
    path = tmp_path / "web.yml"
    text = "http_server_config:\n  headers: {X-Frame-Options: deny}\n"
    if users:
        text += (
            f"basic_auth_users:\n  {USER}: {bcrypt_hash(PASSWORD)}\n"
            f"  {OTHER}: {bcrypt_hash(OTHER_PASSWORD)}\n"
        )
    path.write_text(text)
    return path


@contextlib.contextmanager
def rig(tmp_path: Path, users: bool = True, control: bool = True) -> Iterator[Rig]:
    """The scene's task view with control on (or off) behind basic auth, on 127.0.0.1."""
    s = scene(collectors=False)
    recorder, actions, tokens = Recorder(), ControlActions(), CsrfTokens(SECRET)
    web = WebConfigWatcher(str(web_config(tmp_path, users)), interval=0.0)
    api = TaskApi(s.state)
    routes: list[Any] = [api, TaskPages(api, STUCK_AFTER)]
    if control:
        route = TaskControl(recorder, s.state, lambda: web.current().auth_required, actions, tokens)
        routes = [route, api, TaskPages(api, STUCK_AFTER, form_token=route.form_token)]
    server = MetricsServer(
        "127.0.0.1", 0, CollectorRegistry(), lambda: READY, web=web, routes=routes, links=LINKS
    )
    server.start()
    try:
        yield Rig(server, s, recorder, actions, tokens)
    finally:
        server.stop()


@pytest.fixture
def r(tmp_path: Path) -> Iterator[Rig]:
    with rig(tmp_path) as made:
        yield made


# -- pure parts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body", "fields"),
    [
        ("application/json", b'{"terminate": true, "signal": "SIGKILL"}',
         {"terminate": True, "signal": "SIGKILL"}),
        ("application/json; charset=utf-8", b"", {}),
        ("application/x-www-form-urlencoded", b"terminate=true&csrf_token=abc",
         {"terminate": "true", "csrf_token": "abc"}),
        ("", b"", {}),
    ],
)  # fmt: skip
def test_parse_body_reads_json_and_forms(
    content_type: str, body: bytes, fields: dict[str, Any]
) -> None:
    """A JSON object or an urlencoded form gives its fields; an empty body none."""
    assert parse_body(content_type, body) == fields


@pytest.mark.parametrize(
    ("content_type", "body", "status", "message"),
    [
        ("application/json", b"[1]", 400, "body must be a JSON object"),
        ("application/json", b"{", 400, "body is not valid JSON: unexpected end of data: "
                                        "line 1 column 2 (char 1)"),
        ("application/x-www-form-urlencoded", b"signal=a&signal=b", 400,
         "signal: given more than once"),
        ("text/plain", b"terminate=true", 415,
         "send the fields as application/json or application/x-www-form-urlencoded"),
        ("", b"terminate=true", 415,
         "send the fields as application/json or application/x-www-form-urlencoded"),
    ],
)  # fmt: skip
def test_parse_body_refuses(content_type: str, body: bytes, status: int, message: str) -> None:
    """A body that is neither a JSON object nor a form is refused with the status and reason."""
    with pytest.raises(Refused) as caught:
        parse_body(content_type, body)
    assert (caught.value.status, str(caught.value)) == (status, message)


@pytest.mark.parametrize(
    ("fields", "parsed"),
    [
        ({}, (False, "SIGTERM")),
        ({"terminate": True}, (True, "SIGTERM")),
        ({"terminate": "on", "signal": "SIGKILL"}, (True, "SIGKILL")),
        ({"terminate": "false"}, (False, "SIGTERM")),
    ],
)
def test_parse_revoke(fields: dict[str, Any], parsed: tuple[bool, str]) -> None:
    """terminate defaults to false and signal to SIGTERM; forms give text for booleans."""
    assert parse_revoke(fields) == parsed


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"signal": "SIGHUP"}, "signal: expected one of SIGTERM, SIGKILL, got 'SIGHUP'"),
        ({"signal": 9}, "signal: expected one of SIGTERM, SIGKILL, got '9'"),
        ({"terminate": "maybe"}, "terminate: expected true or false, got 'maybe'"),
        ({"terminate": 1}, "terminate: expected true or false, got '1'"),
    ],
)
def test_parse_revoke_refuses(fields: dict[str, Any], message: str) -> None:
    """Any signal but SIGTERM and SIGKILL, and a terminate that is no boolean, are 400."""
    with pytest.raises(Refused) as caught:
        parse_revoke(fields)
    assert (caught.value.status, str(caught.value)) == (400, message)


def headers_of(**values: str) -> Any:
    """A header block as the server hands it to routes."""
    from email.message import Message

    message = Message()
    for key, value in values.items():
        message[key.replace("_", "-")] = value
    return message


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"Host": "127.0.0.1:9808"}, None),
        ({"Host": "127.0.0.1:9808", "Origin": "http://127.0.0.1:9808"}, None),
        ({"Host": "127.0.0.1:9808", "Sec_Fetch_Site": "same-origin"}, None),
        ({"Host": "127.0.0.1:9808", "Sec_Fetch_Site": "none"}, None),
        ({"Host": "127.0.0.1:9808", "Origin": "http://evil.example"},
         "Origin 'http://evil.example' is not this server ('127.0.0.1:9808')"),
        ({"Host": "127.0.0.1:9808", "Origin": "null"},
         "Origin 'null' is not this server ('127.0.0.1:9808')"),
        ({"Host": "127.0.0.1:9808", "Origin": "http://127.0.0.1:9999"},
         "Origin 'http://127.0.0.1:9999' is not this server ('127.0.0.1:9808')"),
        ({"Host": "127.0.0.1:9808", "Sec_Fetch_Site": "cross-site"},
         "Sec-Fetch-Site is 'cross-site'"),
        ({"Host": "127.0.0.1:9808", "Sec_Fetch_Site": "same-site"}, "Sec-Fetch-Site is 'same-site'"),
    ],
)  # fmt: skip
def test_cross_site(headers: dict[str, str], reason: str | None) -> None:
    """Only a request from this server's own origin, or with no origin told, passes."""
    assert cross_site(headers_of(**headers)) == reason


def test_csrf_tokens_are_per_user_and_per_secret() -> None:
    """A token is the user's under one secret: another user's, or another process's, fails."""
    tokens = CsrfTokens(SECRET)
    token = tokens.token(USER)
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    assert tokens.token(USER) == token
    assert tokens.valid(USER, token)
    assert not tokens.valid(OTHER, token)
    assert not CsrfTokens(b"x" * 32).valid(USER, token)
    assert not tokens.valid(USER, "")


# -- through the server -----------------------------------------------------------------------


def test_revoke_answers_202_with_the_user(r: Rig) -> None:
    """A JSON revoke is passed on with its defaults and answered with the requesting user."""
    assert r.api("/api/v1/tasks/t-slow/revoke") == (
        202, {"id": "t-slow", "action": "revoke", "requested_by": USER}
    )  # fmt: skip
    assert r.api("/api/v1/tasks/t-fresh/revoke", {"terminate": True, "signal": "SIGKILL"}) == (
        202, {"id": "t-fresh", "action": "terminate", "requested_by": USER}
    )  # fmt: skip
    assert r.recorder.calls == [
        ("revoke", "t-slow", False, "SIGTERM"),
        ("revoke", "t-fresh", True, "SIGKILL"),
    ]


def test_bad_fields_are_400_and_nothing_is_sent(r: Rig) -> None:
    """A bad signal, a bad terminate or an unknown field is 400 naming it; nothing is sent."""
    assert r.api("/api/v1/tasks/t-slow/revoke", {"signal": "SIGINT"}) == (
        400, {"error": "signal: expected one of SIGTERM, SIGKILL, got 'SIGINT'"}
    )  # fmt: skip
    assert r.api("/api/v1/tasks/t-slow/revoke", {"terminate": "yes please"}) == (
        400, {"error": "terminate: expected true or false, got 'yes please'"}
    )  # fmt: skip
    assert r.api("/api/v1/tasks/t-slow/revoke", {"force": True}) == (
        400, {"error": "unknown field 'force' (known: terminate, signal)"}
    )  # fmt: skip
    assert r.api("/api/v1/tasks/t-fail/retry", {"queue": "x"}) == (
        400, {"error": "unknown field 'queue' (known: none)"}
    )  # fmt: skip
    assert r.recorder.calls == []


@pytest.mark.parametrize("auth", [None, (USER, "wrong"), ("nobody", PASSWORD)])
def test_no_or_wrong_credentials_are_401(r: Rig, auth: tuple[str, str] | None) -> None:
    """Without credentials or with a wrong password a POST is 401 and nothing is sent."""
    for path in (
        "/api/v1/tasks/t-slow/revoke",
        "/api/v1/tasks/t-fail/retry",
        "/tasks/t-slow/revoke",
    ):
        status, headers, _ = r.post(path, "{}", JSON_TYPE, auth=auth)
        assert status == 401, path
        assert headers["WWW-Authenticate"] == 'Basic realm="celery-exporter", charset="UTF-8"'
    assert r.recorder.calls == []
    assert r.actions.counts() == {("revoke", "accepted"): 0, ("terminate", "accepted"): 0,
                                  ("retry", "accepted"): 0}  # fmt: skip


def test_control_off_answers_404(tmp_path: Path) -> None:
    """Without the control route the POST paths are 404, for JSON and forms alike."""
    with rig(tmp_path, control=False) as off:
        for path in ("/api/v1/tasks/t-slow/revoke", "/api/v1/tasks/t-fail/retry",
                     "/tasks/t-slow/revoke", "/tasks/t-fail/retry"):  # fmt: skip
            assert off.post(path, "{}", JSON_TYPE)[0] == 404, path
            assert off.post(path, "terminate=true", FORM_TYPE)[0] == 404, path
        assert off.recorder.calls == []
        status, _, page = request(off.server, "GET", "/tasks/t-slow")
        assert status == 200 and b'<form class="control"' not in page and b"csrf" not in page


def test_form_post_needs_the_users_token(r: Rig) -> None:
    """A form without csrf_token, with a wrong one or another user's is 403; the user's works."""
    path = "/api/v1/tasks/t-slow/revoke"
    for token in (None, "0" * 64, r.tokens.token(OTHER)):
        fields = {"terminate": "true"} | ({} if token is None else {"csrf_token": token})
        status, _, body = r.post(path, urlencode(fields), FORM_TYPE)
        assert (status, json.loads(body)) == (
            403, {"error": "missing or wrong csrf_token: post from the task's page"}
        )  # fmt: skip
    status, _, _ = r.post(path, b"", {})  # no body, no type: a simple cross-site request
    assert status == 403
    assert r.recorder.calls == []
    fields = {"terminate": "true", "csrf_token": r.tokens.token(USER)}
    status, _, body = r.post(path, urlencode(fields), FORM_TYPE)
    assert (status, json.loads(body)) == (
        202, {"id": "t-slow", "action": "terminate", "requested_by": USER}
    )  # fmt: skip
    assert r.recorder.calls == [("revoke", "t-slow", True, "SIGTERM")]


def test_cross_site_post_is_403(r: Rig) -> None:
    """A POST from another origin is 403 even as JSON and even with the right token."""
    evil = {"Origin": "http://evil.example", **JSON_TYPE}
    status, _, body = r.post("/api/v1/tasks/t-slow/revoke", "{}", evil)
    assert (status, json.loads(body)["error"]) == (
        403, f"cross-site request refused: Origin 'http://evil.example' is not this server "
             f"('127.0.0.1:{r.server.port}')",
    )  # fmt: skip
    form = urlencode({"csrf_token": r.tokens.token(USER)})
    fetch_site = {"Sec-Fetch-Site": "cross-site", **FORM_TYPE}
    assert r.post("/tasks/t-slow/revoke", form, fetch_site)[0] == 403
    assert r.recorder.calls == []
    own = {"Origin": f"http://127.0.0.1:{r.server.port}", **JSON_TYPE}
    assert r.post("/api/v1/tasks/t-slow/revoke", "{}", own)[0] == 202


def test_without_basic_auth_control_is_403(tmp_path: Path) -> None:
    """Should the web config lose its users, control refuses rather than act for anyone."""
    with rig(tmp_path, users=False) as open_rig:
        status, _, body = open_rig.post("/api/v1/tasks/t-slow/revoke", "{}", JSON_TYPE, auth=None)
        assert (status, json.loads(body)) == (
            403,
            {
                "error": "task control needs basic auth: add "
                "basic_auth_users to the --web.config.file"
            },
        )
        assert open_rig.recorder.calls == []


def test_retry_sends_the_stored_call_and_links_the_records(r: Rig) -> None:
    """A failed task is sent again with its stored call; the old record links to the new id."""
    r.recorder.stored["t-fail"] = stored("t-fail")
    assert r.api("/api/v1/tasks/t-fail/retry") == (202, {"id": "t-fail", "new_id": "new-1"})
    assert r.recorder.calls == [("send", "app.fail", [1], {"x": 2}, "celery")]
    detail = json.loads(request(r.server, "GET", "/api/v1/tasks/t-fail")[2])
    assert detail["retried_as"] == "new-1"
    status, _, page = request(r.server, "GET", "/tasks/t-fail")
    assert status == 200 and b'<a href="../tasks/new-1">new-1</a>' in page
    assert r.api("/api/v1/tasks/t-fail/retry") == (
        409, {"error": "task 't-fail' was already retried as 'new-1'"}
    )  # fmt: skip
    assert len(r.recorder.calls) == 1


def test_two_retries_at_once_send_one_task(r: Rig) -> None:
    """Two Retry clicks at once: the first sends the task, the second is 409, not a second copy."""
    r.recorder.stored["t-fail"] = stored("t-fail")
    r.recorder.sending.clear()
    answers: list[tuple[int, Any]] = []
    threads = [
        threading.Thread(target=lambda: answers.append(r.api("/api/v1/tasks/t-fail/retry")))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # both requests are in: one waits on the broker, the other on the first
    r.recorder.sending.set()
    for thread in threads:
        thread.join(10)
    assert sorted(answers, key=lambda a: a[0]) == [
        (202, {"id": "t-fail", "new_id": "new-1"}),
        (409, {"error": "task 't-fail' was already retried as 'new-1'"}),
    ]
    assert r.recorder.calls == [("send", "app.fail", [1], {"x": 2}, "celery")]


@pytest.mark.parametrize(
    ("task_id", "state"),
    [("t-ok", "succeeded"), ("t-slow", "started"), ("t-wait", "sent"), ("t-retry", "retried")],
)
def test_retry_of_a_task_not_failed_is_409(r: Rig, task_id: str, state: str) -> None:
    """A task that succeeded, or still waits or runs, is not retried: 409 and nothing sent."""
    r.recorder.stored[task_id] = stored(task_id)
    assert r.api(f"/api/v1/tasks/{task_id}/retry") == (
        409, {"error": f"task {task_id!r} is {state}: only a failed, revoked or rejected task "
                       "can be retried"},
    )  # fmt: skip
    assert r.recorder.calls == []


def test_retry_without_stored_arguments_says_how_to_store_them(r: Rig) -> None:
    """No arguments in the backend (or no backend) is 409 naming result_extended."""
    hint = (
        "set result_extended = True and a result_backend in the Celery app's configuration, so "
        "that workers store each task's name, arguments and queue, and give the exporter that "
        "backend with --result-backend"
    )
    r.recorder.stored["t-fail"] = StoredCall("t-fail", "FAILURE", None, None, None, None)
    assert r.api("/api/v1/tasks/t-fail/retry") == (
        409, {"error": f"the result backend holds no arguments for task 't-fail': {hint}"}
    )  # fmt: skip
    r.recorder.can_retry = False
    assert r.api("/api/v1/tasks/t-fail/retry") == (
        409, {"error": f"retry needs a result backend: {hint}"}
    )  # fmt: skip
    assert r.recorder.calls == []


def test_retry_of_a_task_without_record_follows_the_backend(r: Rig) -> None:
    """An id the view never saw: 404 when the backend knows nothing, 409 unless it failed."""
    assert r.api("/api/v1/tasks/gone/retry") == (
        404, {"error": "no task 'gone' is known, here or in the result backend"}
    )  # fmt: skip
    r.recorder.stored["done"] = stored("done", "SUCCESS")
    assert r.api("/api/v1/tasks/done/retry")[0] == 409
    r.recorder.stored["lost"] = stored("lost", "REVOKED")
    assert r.api("/api/v1/tasks/lost/retry") == (202, {"id": "lost", "new_id": "new-1"})
    assert r.recorder.calls == [("send", "app.fail", [1], {"x": 2}, "celery")]


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (ControlError(503, "revoke broadcast to the broker failed: OperationalError: refused"),
         "failed"),
        (ControlError(504, "revoke broadcast to the broker: no answer within 10 s"), "timeout"),
    ],
)  # fmt: skip
def test_broker_errors_answer_503_and_504(r: Rig, error: ControlError, outcome: str) -> None:
    """A broker that refuses is 503, one that does not answer 504, each with its message."""
    r.recorder.error = error
    assert r.api("/api/v1/tasks/t-slow/revoke") == (error.status, {"error": str(error)})
    assert r.actions.counts()[("revoke", outcome)] == 1


def test_audit_log_and_counter(r: Rig) -> None:
    """Each action is logged at info with user, action, task id and outcome, and counted."""
    r.recorder.stored["t-fail"] = stored("t-fail")
    with captured_logs() as logs:
        r.api("/api/v1/tasks/t-slow/revoke", {"terminate": True})
        r.api("/api/v1/tasks/t-fail/retry")
        r.api("/api/v1/tasks/t-ok/retry")
        r.post("/api/v1/tasks/t-slow/revoke", "", FORM_TYPE)
    audit = [entry for entry in logs if entry["event"] == "task_control"]
    assert [
        (e["log_level"], e["user"], e["action"], e["task_id"], e["outcome"], e["new_id"])
        for e in audit
    ] == [
        ("info", USER, "terminate", "t-slow", "accepted", None),
        ("info", USER, "retry", "t-fail", "accepted", "new-2"),
        ("info", USER, "retry", "t-ok", "conflict", None),
        ("info", USER, "revoke", "t-slow", "forbidden", None),
    ]
    assert PASSWORD not in repr(logs)
    registry = CollectorRegistry()
    registry.register(r.actions)
    lines = [
        line for line in generate_latest(registry).decode().splitlines()
        if line.startswith("celery_exporter_control_actions_total")
    ]  # fmt: skip
    assert lines == [
        'celery_exporter_control_actions_total{action="retry",outcome="accepted"} 1.0',
        'celery_exporter_control_actions_total{action="retry",outcome="conflict"} 1.0',
        'celery_exporter_control_actions_total{action="revoke",outcome="accepted"} 0.0',
        'celery_exporter_control_actions_total{action="revoke",outcome="forbidden"} 1.0',
        'celery_exporter_control_actions_total{action="terminate",outcome="accepted"} 1.0',
    ]


def test_task_page_shows_the_buttons_with_the_users_token(r: Rig) -> None:
    """/tasks/<id> has Revoke, Terminate and Retry forms posting the user's token."""
    status, _, page = request(r.server, "GET", "/tasks/t-slow")
    text = page.decode()
    assert status == 200
    token = r.tokens.token(USER)
    assert text.count(f'<input type="hidden" name="csrf_token" value="{token}">') == 3
    assert text.count('action="../tasks/t-slow/revoke"') == 2
    assert 'action="../tasks/t-slow/retry"' in text
    assert re.findall(r"<button type=\"submit\"( disabled)?>(\w+)</button>", text) == [
        ("", "Apply"), ("", "Revoke"), ("", "Terminate"), (" disabled", "Retry"),
    ]  # fmt: skip
    failed = request(r.server, "GET", "/tasks/t-fail")[2].decode()
    assert re.findall(r"<button type=\"submit\"( disabled)?>(\w+)</button>", failed) == [
        ("", "Apply"), (" disabled", "Revoke"), (" disabled", "Terminate"), ("", "Retry"),
    ]  # fmt: skip


def test_page_post_answers_a_page(r: Rig) -> None:
    """A button's post answers an HTML page linking back to the task (and to the new one)."""
    r.recorder.stored["t-fail"] = stored("t-fail")
    form = urlencode({"csrf_token": r.tokens.token(USER)})
    status, headers, page = r.post("/tasks/t-fail/retry", form, FORM_TYPE)
    assert (status, headers["Content-Type"]) == (202, "text/html; charset=utf-8")
    assert headers["X-Frame-Options"] == "deny"
    assert "script-src" not in headers["Content-Security-Policy"]
    text = page.decode()
    assert 'Sent again as a new task: <a href="../../tasks/new-1">new-1</a>' in text
    assert 'Back to <a href="../../tasks/t-fail">t-fail</a>' in text
    status, _, page = r.post("/tasks/t-ok/retry", form, FORM_TYPE)
    assert status == 409
    assert "is succeeded: only a failed, revoked or rejected task can be retried" in page.decode()


def test_hostile_task_id_is_escaped(r: Rig) -> None:
    """A task id with markup comes back escaped on the page and as data in JSON."""
    hostile = "<script>alert(1)</script>"
    quoted = "%3Cscript%3Ealert%281%29%3C%2Fscript%3E"
    assert r.api(f"/api/v1/tasks/{quoted}/revoke")[1]["id"] == hostile
    form = urlencode({"csrf_token": r.tokens.token(USER)})
    page = r.post(f"/tasks/{quoted}/revoke", form, FORM_TYPE)[2].decode()
    assert hostile not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_body_over_the_cap_is_413(r: Rig) -> None:
    """A body over 64 KiB is refused with 413 before it is read; nothing is sent."""
    status, headers, _ = r.post("/api/v1/tasks/t-slow/revoke", b"x" * (64 * 1024 + 1), JSON_TYPE)
    assert (status, headers["Connection"]) == (413, "close")
    assert r.recorder.calls == []


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One whole response from ``sock``: its head and its body (by Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the body"
        body += chunk
    assert len(body) == length, "more than one response"
    return head, body


def test_body_in_pieces_and_keep_alive(r: Rig) -> None:
    """A body sent in several packets is read whole, and the connection serves the next request."""
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    body = b'{"terminate": true}'
    head = (
        f"POST /api/v1/tasks/t-slow/revoke HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Basic {auth}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", r.server.port), timeout=10) as sock:
        sock.sendall(head + body[:5])
        time.sleep(0.05)
        sock.sendall(body[5:])
        first, answer = read_response(sock)
        assert first.startswith(b"HTTP/1.1 202 ")
        assert json.loads(answer) == {"id": "t-slow", "action": "terminate", "requested_by": USER}
        sock.sendall(
            f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\n\r\n".encode()
        )
        assert read_response(sock)[0].startswith(b"HTTP/1.1 200 ")
    assert r.recorder.calls == [("revoke", "t-slow", True, "SIGTERM")]


def test_get_on_a_control_path_does_nothing(r: Rig) -> None:
    """A GET of a control path never acts (it is an unknown task id to the read-only API)."""
    assert request(r.server, "GET", "/api/v1/tasks/t-slow/revoke")[0] == 404
    assert request(r.server, "GET", "/tasks/t-slow/retry")[0] == 404
    assert r.recorder.calls == []


def test_daemon_wires_control_only_when_asked(tmp_path: Path) -> None:
    """--web.enable-control puts the control route first and registers its counter; off, neither."""
    from celery_exporter.config import load
    from celery_exporter.daemon import Daemon
    from tests.support.launchers import free_port

    base = ["--broker-url", "redis://127.0.0.1:1/0", "--host", "127.0.0.1",
            "--web.config.file", str(web_config(tmp_path))]  # fmt: skip
    on = Daemon(load([*base, "--port", str(free_port()), "--web.enable-control",
                      "--result-backend", "redis://127.0.0.1:1/1"], {}))  # fmt: skip
    try:
        control, api, pages = on.server.routes
        assert isinstance(control, TaskControl) and isinstance(api, TaskApi)
        assert isinstance(pages, TaskPages) and pages.form_token == control.form_token
        assert (control.state, control.controller.can_retry) == (on.state, True)
        assert control.auth_required() is True
        text = generate_latest(on.registry).decode()
        assert (
            'celery_exporter_control_actions_total{action="retry",outcome="accepted"} 0.0' in text
        )
    finally:
        on.server.httpd.server_close()
    off = Daemon(load([*base, "--port", str(free_port())], {}))
    try:
        assert [type(route) for route in off.server.routes] == [TaskApi, TaskPages]
        assert off.server.routes[1].form_token is None  # type: ignore[attr-defined]
        assert "celery_exporter_control_actions" not in generate_latest(off.registry).decode()
    finally:
        off.server.httpd.server_close()
