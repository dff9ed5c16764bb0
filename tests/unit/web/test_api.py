"""The task view's JSON API, served by a real MetricsServer over a real cluster state."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from celery_exporter.collectors.inspect import InspectCollector
from celery_exporter.collectors.queues import QueueCollector
from celery_exporter.config import load
from celery_exporter.daemon import Daemon
from celery_exporter.web.api import TaskApi
from celery_exporter.web.pages import LINKS, TaskPages
from tests.support import events as ev
from tests.support.launchers import free_port
from tests.support.taskview_scene import (
    HOSTILE_ID,
    NOW,
    OLDEST_SENT,
    T0,
    W1,
    W2,
    Scene,
    get,
    hostile_scene,
    new_scene,
    scene,
    serving,
)
from tests.tls import bcrypt_hash

ALL = ["t-fresh", "t-retry", "t-wait", "t-slow", "t-fail", "t-ok"]


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    with serving(scene()) as srv:
        yield srv


def api(server: Any, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """Status and decoded JSON body of a GET, after checking the JSON headers."""
    status, response_headers, body = get(server, path, headers)
    assert response_headers["Content-Type"] == "application/json"
    assert response_headers["X-Content-Type-Options"] == "nosniff"
    return status, json.loads(body)


def ids(answer: dict[str, Any]) -> list[str]:
    return [task["id"] for task in answer["tasks"]]


def test_tasks_newest_activity_first_with_the_contract_fields(server: Any) -> None:
    """/api/v1/tasks lists every task, newest activity first, each with exactly the TASK keys."""
    status, answer = api(server, "/api/v1/tasks")
    assert status == 200
    assert (ids(answer), answer["total"]) == (ALL, 6)
    assert answer["tasks"][-1] == {
        "id": "t-ok", "name": "app.add", "state": "succeeded", "queue": "celery", "worker": W1,
        "sent": T0, "received": T0 + 1, "started": T0 + 2, "finished": T0 + 2.5, "runtime": 0.5,
        "retries": 0, "exception": None, "eta": None, "progress": None,
    }  # fmt: skip
    slow = answer["tasks"][3]
    assert slow["progress"] == {
        "current": 3.0, "total": 10.0, "message": "resizing", "updated": T0 + 500
    }  # fmt: skip


@pytest.mark.parametrize(
    ("query", "expected", "total"),
    [
        ("state=failed", ["t-fail"], 1),
        ("state=started,retried", ["t-fresh", "t-retry", "t-slow"], 3),
        ("state=started&state=sent", ["t-fresh", "t-wait", "t-slow"], 3),
        ("name=app.slow", ["t-fresh", "t-slow"], 2),
        ("queue=other", ["t-wait"], 1),
        ("worker=celery%40w2", ["t-fresh", "t-slow"], 2),
        ("older_than=900", ["t-slow", "t-fail", "t-ok"], 3),
        # t-retry waits for its next run: it has neither started nor been received since.
        ("older_than=6", ["t-slow", "t-fail", "t-ok"], 3),
        ("older_than=4.5", ["t-fresh", "t-slow", "t-fail", "t-ok"], 4),
        ("state=started&older_than=900", ["t-slow"], 1),
        ("limit=2", ["t-fresh", "t-retry"], 6),
        ("limit=1000", ALL, 6),
        ("name=app.nothing", [], 0),
    ],
)
def test_task_filters(server: Any, query: str, expected: list[str], total: int) -> None:
    """Each filter keeps only the matching tasks; total counts every match before the limit."""
    status, answer = api(server, f"/api/v1/tasks?{query}")
    assert (status, ids(answer), answer["total"]) == (200, expected, total)


STATES = "sent, received, started, succeeded, failed, retried, revoked, rejected, ignored"


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("tasks?state=running", f"state: unknown value 'running' (known: {STATES})"),
        ("tasks?state=failed,", f"state: unknown value '' (known: {STATES})"),
        ("tasks?older_than=soon", "older_than: expected a number of seconds from 0, got 'soon'"),
        ("tasks?older_than=-1", "older_than: expected a number of seconds from 0, got '-1'"),
        ("tasks?older_than=nan", "older_than: expected a number of seconds from 0, got 'nan'"),
        ("tasks?limit=0", "limit: expected a whole number from 1 to 1000, got '0'"),
        ("tasks?limit=1001", "limit: expected a whole number from 1 to 1000, got '1001'"),
        ("tasks?limit=2.5", "limit: expected a whole number from 1 to 1000, got '2.5'"),
        ("tasks?limit=-3", "limit: expected a whole number from 1 to 1000, got '-3'"),
        ("tasks?limit=", "limit: expected a whole number from 1 to 1000, got ''"),
        ("tasks?name=", "name: must not be empty"),
        ("tasks?queue=a&queue=b", "queue: given more than once"),
        (
            "tasks?colour=red",
            "unknown parameter 'colour' (known: state, name, queue, worker, older_than, limit)",
        ),
        ("failures?since=0", "since: expected a number of seconds above 0, got '0'"),
        ("failures?since=day", "since: expected a number of seconds from 0 up to 86400, got 'day'"),
        (
            "failures?since=86401",
            "since: expected a number of seconds from 0 up to 86400, got '86401'",
        ),
        ("failures?limit=3", "unknown parameter 'limit' (known: since)"),
        ("workers?all=1", "unknown parameter 'all' (known: )"),
        ("queues?all=1", "unknown parameter 'all' (known: )"),
        ("tasks/t-ok?verbose=1", "unknown parameter 'verbose' (known: )"),
    ],
)
def test_bad_parameters_answer_400_naming_them(server: Any, path: str, error: str) -> None:
    """A bad or unknown query parameter answers 400 with an error that names it."""
    assert api(server, f"/api/v1/{path}") == (400, {"error": error})


def test_task_detail(server: Any) -> None:
    """/api/v1/tasks/{id} adds the exception message, traceback, lineage and history."""
    status, task = api(server, "/api/v1/tasks/t-fail")
    assert status == 200
    assert task == {
        "id": "t-fail", "name": "app.fail", "state": "failed", "queue": "celery", "worker": W1,
        "sent": None, "received": T0 + 10, "started": T0 + 11, "finished": T0 + 12,
        "runtime": 1.0, "retries": 0, "exception": "ValueError", "eta": None, "progress": None,
        "exception_message": "bad input",
        "traceback": "Traceback (most recent call last):\n  ...\nValueError('bad input')\n",
        "parent_id": None, "root_id": "t-fail", "retried_as": None,
        "history": [
            {"type": "task-received", "timestamp": T0 + 10, "worker": W1},
            {"type": "task-started", "timestamp": T0 + 11, "worker": W1},
            {"type": "task-failed", "timestamp": T0 + 12, "worker": W1},
        ],
    }  # fmt: skip


def test_traceback_only_for_failed_or_retried(server: Any) -> None:
    """A running task has no traceback; a retried one has its exception's."""
    assert api(server, "/api/v1/tasks/t-slow")[1]["traceback"] is None
    retried = api(server, "/api/v1/tasks/t-retry")[1]
    assert (retried["exception"], retried["exception_message"]) == ("KeyError", "k")
    assert retried["traceback"] == "Traceback (most recent call last):\n  ...\nKeyError('k')\n"


def test_unknown_task_answers_404(server: Any) -> None:
    """An id the state does not know answers 404 with an error."""
    assert api(server, "/api/v1/tasks/nope") == (404, {"error": "no task 'nope' is known"})


def test_unknown_endpoint_answers_404(server: Any) -> None:
    """A path under /api/v1/ that is no endpoint answers a JSON 404."""
    assert api(server, "/api/v1/nothing") == (404, {"error": "no endpoint /api/v1/nothing"})


def test_task_id_is_percent_decoded() -> None:
    """A quoted id with markup, a slash, ? # and % is found under its decoded form."""
    with serving(hostile_scene()) as srv:
        status, task = api(srv, "/api/v1/tasks/" + quote(HOSTILE_ID, safe=""))
    assert (status, task["id"]) == (200, HOSTILE_ID)


def test_workers_with_pool_size_and_queues_from_inspect(server: Any) -> None:
    """Workers come from the events; pool size and queues from inspect (null and [] unknown)."""
    status, answer = api(server, "/api/v1/workers")
    assert status == 200
    common = {"reserved": 0, "load": [0.5, 0.25, 0.1], "sw_ver": "5.7.0"}
    assert answer == {
        "workers": [
            {"hostname": W1, "up": True, "last_heartbeat": T0 + 998, "active": 1, "processed": 7,
             "pool_busy": 0, "pool_size": 4, "queues": ["celery", "fast"], **common},
            {"hostname": W2, "up": True, "last_heartbeat": T0 + 1, "active": 2, "processed": 0,
             "pool_busy": 2, "pool_size": None, "queues": [], **common},
        ]
    }  # fmt: skip


def test_queues_from_the_last_poll(server: Any) -> None:
    """Queues come from the queue collector's last poll, with the oldest message's age."""
    assert api(server, "/api/v1/queues") == (
        200,
        {
            "queues": [
                {"name": "celery", "length": 5, "unacked": None, "consumers": 1,
                 "oldest_message_age": NOW - OLDEST_SENT},
                {"name": "other", "length": 0, "unacked": None, "consumers": 0,
                 "oldest_message_age": None},
            ],
            "updated": NOW,
        },
    )  # fmt: skip


def test_without_collectors() -> None:
    """With the inspect and queue collectors off: null pool sizes, no queues, updated null."""
    with serving(scene(collectors=False)) as srv:
        workers = api(srv, "/api/v1/workers")[1]["workers"]
        assert [(w["pool_size"], w["queues"]) for w in workers] == [(None, []), (None, [])]
        assert api(srv, "/api/v1/queues") == (200, {"queues": [], "updated": None})


def test_queues_after_a_failed_poll_keep_the_last_success_time() -> None:
    """After a failed poll no queue figures are served, and updated says when the last worked."""
    s = scene()
    assert s.queues is not None
    s.queues.backend = None  # type: ignore[assignment]  # the next poll raises
    s.clock.now = NOW + 10
    assert s.queues.poller.run_once() is False
    with serving(s) as srv:
        assert api(srv, "/api/v1/queues") == (200, {"queues": [], "updated": NOW})


def test_failures_grouped_within_since(server: Any) -> None:
    """Failures are grouped by name and exception; since bounds how far back they count."""
    row = {
        "name": "app.fail", "exception": "ValueError", "count": 1, "last_seen": T0 + 12,
        "last_task_id": "t-fail", "last_message": "bad input",
    }  # fmt: skip
    assert api(server, "/api/v1/failures") == (200, {"failures": [row]})
    assert api(server, "/api/v1/failures?since=86400") == (200, {"failures": [row]})
    assert api(server, "/api/v1/failures?since=900") == (200, {"failures": []})


def test_failures_largest_count_first() -> None:
    """Two groups come largest count first."""
    s = new_scene()
    s.at(T0 + 1, ev.received("a", "app.a"), ev.failed("a", "KeyError('x')", at=T0 + 1))
    s.at(T0 + 2, *(ev.received(f"b{i}", "app.b") for i in range(2)),
         *(ev.failed(f"b{i}", "OSError('disk')", at=T0 + 2) for i in range(2)))  # fmt: skip
    with serving(s) as srv:
        failures = api(srv, "/api/v1/failures")[1]["failures"]
    assert [(f["name"], f["exception"], f["count"]) for f in failures] == [
        ("app.b", "OSError", 2),
        ("app.a", "KeyError", 1),
    ]


def test_args_only_with_show_task_args(server: Any) -> None:
    """args and kwargs appear only with --web.show-task-args."""
    assert "args" not in api(server, "/api/v1/tasks/t-ok")[1]
    assert all("args" not in t for t in api(server, "/api/v1/tasks")[1]["tasks"])
    with serving(scene(show_args=True)) as srv:
        task = api(srv, "/api/v1/tasks/t-ok")[1]
        listed = api(srv, "/api/v1/tasks?limit=1&state=succeeded")[1]["tasks"][0]
    assert (task["args"], task["kwargs"]) == ("(1, 2)", "{}")
    assert (listed["args"], listed["kwargs"]) == ("(1, 2)", "{}")


def test_head_answers_without_a_body(server: Any) -> None:
    """HEAD answers like GET, without the body."""
    status, headers, body = get(server, "/api/v1/tasks", method="HEAD")
    assert (status, body, headers["Content-Type"]) == (200, b"", "application/json")
    assert int(headers["Content-Length"]) == len(get(server, "/api/v1/tasks")[2])


def test_off_switch_answers_404() -> None:
    """Without the task view (--no-web.task-api) the API and pages answer 404."""
    with serving(None) as srv:
        for path in ("/api/v1/tasks", "/api/v1/workers", "/tasks", "/tasks/t-ok", "/failures"):
            assert get(srv, path)[::2] == (404, b"not found; see /\n")
        assert b"tasks" not in get(srv, "/")[2]


def test_basic_auth_guards_the_api_and_pages(tmp_path: Path) -> None:
    """With basic_auth_users in the web config every task view path needs credentials."""
    config = tmp_path / "web.yml"
    config.write_text(f"basic_auth_users:\n  ops: {bcrypt_hash('pw')}\n")
    good = {"Authorization": "Basic " + base64.b64encode(b"ops:pw").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"ops:nope").decode()}
    s: Scene = scene()
    with serving(s, web_config=config) as srv:
        for path in ("/api/v1/tasks", "/api/v1/tasks/t-ok", "/api/v1/queues", "/tasks", "/workers"):
            assert get(srv, path)[0] == 401
            assert get(srv, path, bad)[0] == 401
            assert get(srv, path, good)[0] == 200


def test_daemon_wires_the_task_view_and_its_switch() -> None:
    """The daemon serves the API and pages with its collectors, and none with --no-web.task-api."""
    base = ["--broker-url", "redis://127.0.0.1:1/0", "--host", "127.0.0.1"]
    on = [*base, "--port", str(free_port()), "--web.stuck-after", "60s", "--web.show-task-args"]
    daemon = Daemon(load(on, {}))
    try:
        api, pages = daemon.server.routes
        assert isinstance(api, TaskApi) and isinstance(pages, TaskPages)
        assert (api.state, pages.api, pages.stuck_after, api.show_args) == (
            daemon.state,
            api,
            60.0,
            True,
        )
        assert isinstance(api.inspect, InspectCollector)
        assert isinstance(api.queues, QueueCollector)
        assert daemon.server.links == LINKS
    finally:
        daemon.server.httpd.server_close()
    off = Daemon(load([*base, "--port", str(free_port()), "--no-web.task-api"], {}))
    try:
        assert (off.server.routes, off.server.links) == ((), ())
    finally:
        off.server.httpd.server_close()
