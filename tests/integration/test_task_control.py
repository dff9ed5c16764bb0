"""Task control against real prefork workers on a real Redis, through the real exporter process.

The stack (:mod:`tests.support.control`) runs the exporter with ``--web.enable-control`` behind
basic auth and ``--result-backend`` on the same Redis, a worker whose app stores extended
results there, and a tap that records the events on the broker.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.support import taskapp
from tests.support.control import (
    PASSWORD,
    QUEUE,
    USER,
    AuthedHttp,
    ControlStack,
    control_stack,
    stored_result,
)
from tests.support.processes import EVENT_TIMEOUT, ROOT
from tests.support.scrape import value
from tests.support.stack import running_exporter
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

SLEEP, SUCCEED = taskapp.sleep.name, taskapp.succeed.name
TOUCH, FAIL_ONCE = taskapp.touch.name, taskapp.fail_once.name
#: How long the task to terminate would run: far beyond the test.
LONG_SECONDS = 120
#: The countdown of the task revoked while it waits: time enough to revoke it first.
COUNTDOWN = 6
NEEDS_AUTH = (
    "celery-exporter: error: --web.enable-control: task control needs basic auth: add "
    "basic_auth_users (user name: bcrypt hash) to the file given with --web.config.file "
    "(see README, Task control)"
)


@pytest.fixture(scope="module")
def stack(logdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlStack]:
    """The control stack, shared by the tests of this module."""
    with control_stack(logdir, tmp_path_factory.mktemp("control")) as s:
        yield s


def actions(http: AuthedHttp, action: str, outcome: str) -> float:
    """``celery_exporter_control_actions_total`` for one action and outcome (0 when absent)."""
    return value(http.metrics(), "celery_exporter_control_actions_total",
                 action=action, outcome=outcome)  # fmt: skip


def log_lines(stack: ControlStack) -> list[dict[str, Any]]:
    """The exporter's JSON log lines so far."""
    return [
        json.loads(line) for line in stack.exporter.output().splitlines() if line.startswith("{")
    ]


def test_terminate_a_running_task(stack: ControlStack) -> None:
    """Terminating a long task: task-revoked with terminated arrives, the worker stays up, and
    the workload's other tasks, before and after, count exactly."""
    long_id = stack.client.send(SLEEP, queue=QUEUE, args=(LONG_SECONDS,))
    stack.http.wait_task(long_id, "started")
    quick = [stack.client.send(SUCCEED, queue=QUEUE, args=(i,)) for i in range(5)]
    assert stack.http.post_json(f"/api/v1/tasks/{long_id}/revoke", {"terminate": True}) == (
        202, {"id": long_id, "action": "terminate", "requested_by": USER}
    )  # fmt: skip

    def terminated() -> list[dict[str, object]]:
        return stack.tap.of("task-revoked", lambda e: e["uuid"] == long_id and e["terminated"])

    events = wait_for(terminated, EVENT_TIMEOUT, 0.1, "task-revoked with terminated")
    assert (events[0]["terminated"], events[0]["expired"], events[0]["signum"]) == (True, False, 15)
    detail = stack.http.wait_task(long_id, "revoked")
    assert [h["type"] for h in detail["history"]][-1] == "task-revoked"
    quick += [stack.client.send(SUCCEED, queue=QUEUE, args=(i,)) for i in range(5, 10)]
    for task_id in quick:
        stack.http.wait_task(task_id, "succeeded")
    assert stack.worker.process is not None and stack.worker.process.poll() is None
    workers = stack.http.get_json("/api/v1/workers")[1]["workers"]
    assert [(w["hostname"], w["up"]) for w in workers] == [(stack.worker.nodename, True)]
    samples = stack.http.metrics()
    labels = {"queue_name": QUEUE}
    assert value(samples, "celery_task_succeeded_total", name=SUCCEED, **labels) == 10
    assert value(samples, "celery_task_started_total", name=SUCCEED, **labels) == 10
    assert value(samples, "celery_task_revoked_total", name=SLEEP, **labels) == 1
    assert value(samples, "celery_task_started_total", name=SLEEP, **labels) == 1
    assert value(samples, "celery_tasks_active", name=SLEEP, **labels) == 0
    assert actions(stack.http, "terminate", "accepted") == 1


def test_revoke_a_queued_countdown_task_from_its_page(stack: ControlStack, tmp_path: Path) -> None:
    """A task waiting for its countdown, revoked with the page's form, never runs."""
    marker = tmp_path / "touched"
    task_id = stack.client.send(TOUCH, queue=QUEUE, args=(str(marker),), countdown=COUNTDOWN)
    stack.http.wait_task(task_id, "received")
    status, _, page = stack.http.call("GET", f"/tasks/{task_id}")
    assert status == 200
    (token,) = set(re.findall(r'name="csrf_token" value="([0-9a-f]{64})"', page.decode()))
    form = urlencode({"csrf_token": token})
    status, headers, page = stack.http.call(
        "POST", f"/tasks/{task_id}/revoke", form,
        {"Content-Type": "application/x-www-form-urlencoded",
         "Origin": f"http://127.0.0.1:{stack.exporter.port}"},
    )  # fmt: skip
    assert (status, headers["Content-Type"]) == (202, "text/html; charset=utf-8")
    assert f"Revoke requested by {USER}: the workers have been told." in page.decode()
    detail = stack.http.wait_task(task_id, "revoked")
    types = [h["type"] for h in detail["history"]]
    # The producer's task-sent and the worker's task-received travel apart: either comes first.
    assert (sorted(types[:2]), types[2:]) == (["task-received", "task-sent"], ["task-revoked"])
    (event,) = stack.tap.of("task-revoked", lambda e: e["uuid"] == task_id)
    assert (event["terminated"], event["expired"]) == (False, False)
    assert stack.tap.of("task-started", lambda e: e["uuid"] == task_id) == []
    assert not marker.exists()


def test_retry_a_failed_task(stack: ControlStack, tmp_path: Path) -> None:
    """A failed task is sent again as a new task with the same arguments, which succeeds; the
    old record links to the new id."""
    marker = str(tmp_path / "failed-once")
    old = stack.client.send(FAIL_ONCE, queue=QUEUE, args=(marker, 7), kwargs={"label": "again"})
    assert stack.http.wait_task(old, "failed")["exception"] == "RuntimeError"
    status, answer = stack.http.post_json(f"/api/v1/tasks/{old}/retry")
    assert status == 202 and set(answer) == {"id", "new_id"}
    new = answer["new_id"]
    assert answer["id"] == old and new != old
    detail = stack.http.wait_task(new, "succeeded")
    assert (detail["name"], detail["queue"], detail["worker"]) == (
        FAIL_ONCE, QUEUE, stack.worker.nodename
    )  # fmt: skip
    meta = stored_result(stack.redis.url(), stack.redis.url(1), new)
    assert (meta["status"], meta["result"], meta["name"], meta["queue"]) == (
        "SUCCESS", "again:7", FAIL_ONCE, QUEUE
    )  # fmt: skip
    assert (meta["args"], meta["kwargs"]) == ([marker, 7], {"label": "again"})
    assert stack.http.task(old)["retried_as"] == new  # type: ignore[index]
    page = stack.http.call("GET", f"/tasks/{old}")[2].decode()
    assert f'<a href="../tasks/{new}">{new}</a>' in page
    assert stack.http.post_json(f"/api/v1/tasks/{new}/retry") == (
        409, {"error": f"task {new!r} is succeeded: only a failed, revoked or rejected task can "
                       "be retried"},
    )  # fmt: skip
    assert actions(stack.http, "retry", "accepted") == 1
    audit = [line for line in log_lines(stack) if line.get("event") == "task_control"]
    assert [
        (e["level"], e["user"], e["action"], e["outcome"], e["status"], e["new_id"])
        for e in audit if e["task_id"] in (old, new)
    ] == [
        ("info", USER, "retry", "accepted", 202, new),
        ("info", USER, "retry", "conflict", 409, None),
    ]  # fmt: skip


def test_retry_without_stored_arguments_is_409(stack: ControlStack) -> None:
    """A failed task that stored no result (ignore_result) is 409 saying how to store them."""
    task_id = stack.client.send(taskapp.fail_value.name, queue=QUEUE)
    stack.http.wait_task(task_id, "failed")
    status, answer = stack.http.post_json(f"/api/v1/tasks/{task_id}/retry")
    assert status == 409
    assert "result_extended = True" in answer["error"] and "--result-backend" in answer["error"]


def test_no_credentials_wrong_password_and_cross_site_do_nothing(
    stack: ControlStack, tmp_path: Path
) -> None:
    """No credentials and a wrong password are 401, a cross-site form without token 403; the
    task they aimed at still runs."""
    marker = tmp_path / "still-runs"
    task_id = stack.client.send(TOUCH, queue=QUEUE, args=(str(marker),), countdown=3)
    stack.http.wait_task(task_id, "received")
    path = f"/api/v1/tasks/{task_id}/revoke"
    json_type = {"Content-Type": "application/json"}
    assert stack.http.call("POST", path, "{}", json_type, auth=None)[0] == 401
    assert stack.http.call("POST", path, "{}", json_type, auth=(USER, "wrong"))[0] == 401
    cross = {"Content-Type": "application/x-www-form-urlencoded"}
    for form_path in (path, f"/tasks/{task_id}/revoke"):
        assert stack.http.call("POST", form_path, "terminate=true", cross)[0] == 403
    evil = {**cross, "Origin": "http://evil.example"}
    assert stack.http.call("POST", f"/tasks/{task_id}/revoke", "", evil)[0] == 403
    assert stack.http.wait_task(task_id, "succeeded")
    assert marker.read_text() == "ran\n"
    assert actions(stack.http, "revoke", "forbidden") == 3
    assert PASSWORD not in stack.exporter.output()


def test_control_off_answers_404(stack: ControlStack, logdir: Path, tmp_path: Path) -> None:
    """Without --web.enable-control the control paths are 404 and the task still runs."""
    marker = tmp_path / "not-revoked"
    with running_exporter(stack.redis.url(), logdir, []) as off:
        task_id = stack.client.send(TOUCH, queue=QUEUE, args=(str(marker),), countdown=2)
        http = AuthedHttp(off.port)
        for path in (f"/api/v1/tasks/{task_id}/revoke", f"/api/v1/tasks/{task_id}/retry",
                     f"/tasks/{task_id}/revoke", f"/tasks/{task_id}/retry"):  # fmt: skip
            assert http.call("POST", path, "{}", {"Content-Type": "application/json"})[0] == 404
        stack.http.wait_task(task_id, "succeeded")
        assert marker.exists()
        assert "celery_exporter_control_actions_total" not in off.get("/metrics")[1].decode()


@pytest.mark.parametrize("users", [False, True], ids=["no-web-config", "no-users"])
def test_control_without_basic_auth_exits_2(tmp_path: Path, users: bool) -> None:
    """--web.enable-control without basic_auth_users exits 2 saying how to add them."""
    args = [sys.executable, "-m", "celery_exporter", "--port", "1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_EXPORTER_")}
    if users:  # a web config without users; the flag from its variable
        config = tmp_path / "web.yml"
        config.write_text("http_server_config:\n  headers: {X-Frame-Options: deny}\n")
        args += ["--web.config.file", str(config)]
        env["CELERY_EXPORTER_WEB_ENABLE_CONTROL"] = "true"
    else:
        args.append("--web.enable-control")
    done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.rstrip("\n").splitlines()[-1] == NEEDS_AUTH
