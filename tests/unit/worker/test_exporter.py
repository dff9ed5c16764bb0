"""The in-worker exporter driven by Celery's real signals, sent with scripted senders."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import signals
from celery.exceptions import Reject, Retry, TimeLimitExceeded

from celery_exporter.worker import WorkerExporter, install
from tests.support import (
    SignalContext as Context,
)
from tests.support import (
    SignalPool,
    SignalRequest,
    SignalWorker,
    free_port,
    parse_metrics,
    send_task_run,
    value,
    wait_for,
)
from tests.support import (
    SignalTask as Task,
)

HOST = "w1@box"
QUEUE = "images"


class App:
    """Stands for the user's Celery app: only its identity matters."""


@pytest.fixture
def exporter() -> Iterator[WorkerExporter]:
    """An exporter installed for an app, started by a worker_init of that app."""
    app = App()
    exp = install(app, port=free_port(), host="127.0.0.1", resources=False)
    signals.worker_init.send(sender=SignalWorker(app, HOST, SignalPool(4)))
    try:
        yield exp
    finally:
        exp.stop()
        exp.disconnect()


def run(name: str, task_id: str, outcome: str, exc: BaseException | None = None) -> None:
    """Send the signals a worker sends for one task run, from the queue ``images``."""
    send_task_run(name, task_id, outcome, exc, queue=QUEUE)


def samples(exp: WorkerExporter) -> dict[Any, float]:
    """What /metrics would serve now."""
    from prometheus_client import generate_latest

    return parse_metrics(generate_latest(exp.registry).decode())


def test_signals_before_worker_init_do_nothing() -> None:
    """An installed exporter stays idle in processes that are not the app's worker."""
    app = App()
    exp = install(app, port=free_port(), host="127.0.0.1", resources=False)
    try:
        signals.worker_init.send(sender=SignalWorker(App(), HOST))  # another app's worker
        run("t.a", "id-0", "success")
        assert exp.role == "idle"
        assert exp.state is None
        assert exp.server is None
    finally:
        exp.disconnect()


def test_main_process_counts(exporter: WorkerExporter) -> None:
    """Runs in the main process (solo, threads) count exactly, with hostname and queue."""
    run("t.ok", "id-1", "success")
    run("t.ok", "id-2", "success")
    run("t.bad", "id-3", "failure", ValueError("x"))
    run("t.again", "id-4", "retry", Retry(exc=RuntimeError("later")))
    run("t.no", "id-5", "reject", Reject("no", requeue=False))
    signals.task_failure.send(
        sender=Task("t.no", Context("id-5")), task_id="id-5", exception=Reject("no")
    )
    # A hard time limit: Celery's main process sends task_failure twice for one task.
    hard = Task("t.slow", Context("id-6", {"routing_key": QUEUE}))
    signals.task_received.send(
        sender=None, request=SignalRequest("id-6", "t.slow", {"routing_key": QUEUE})
    )
    signals.task_prerun.send(sender=hard, task_id="id-6", task=hard)
    for _ in range(2):
        signals.task_failure.send(sender=hard, task_id="id-6", exception=TimeLimitExceeded(1))
    signals.task_revoked.send(sender=Task("t.late", Context("id-7")), request=Context("id-7"))
    signals.task_unknown.send(sender=None, name="t.missing", id="id-8", message=None, exc=None)
    got = samples(exporter)
    labels = {"hostname": HOST, "queue_name": QUEUE}
    assert value(got, "celery_task_succeeded_total", name="t.ok", **labels) == 2
    assert (
        value(got, "celery_task_failed_total", name="t.bad", exception="ValueError", **labels) == 1
    )
    assert (
        value(got, "celery_task_retried_total", name="t.again", exception="RuntimeError", **labels)
        == 1
    )
    assert value(got, "celery_task_rejected_total", name="t.no", **labels) == 1
    assert value(got, "celery_task_failed_total", name="t.no", exception="Reject", **labels) == 1
    assert (
        value(
            got, "celery_task_failed_total", name="t.slow", exception="TimeLimitExceeded", **labels
        )
        == 1
    )
    assert value(got, "celery_task_timeouts_total", name="t.slow", kind="hard", **labels) == 1
    assert (
        value(got, "celery_task_revoked_total", name="t.late", hostname=HOST, queue_name="celery")
        == 1
    )
    assert (
        value(got, "celery_task_runtime_seconds_count", name="t.ok", state="succeeded", **labels)
        == 2
    )
    assert value(got, "celery_worker_task_errors_total", hostname=HOST, kind="unknown_task") == 1
    assert value(got, "celery_worker_pool_size", hostname=HOST) == 4
    for name in ("t.ok", "t.bad", "t.again", "t.no", "t.slow"):
        assert value(got, "celery_tasks_active", name=name, **labels) == 0, name


def test_pool_process_events_reach_the_main_process(exporter: WorkerExporter) -> None:
    """A forked pool process sends its signals to the main process, which counts them."""
    pid = os.fork()
    if pid == 0:  # the pool process
        try:
            signals.worker_process_init.send(sender=None)
            for i in range(50):
                run("t.child", f"child-{i}", "success")
            os._exit(0 if exporter.role == "pool" else 3)
        finally:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    labels = {"name": "t.child", "hostname": HOST, "queue_name": QUEUE}
    wait_for(
        lambda: value(samples(exporter), "celery_task_succeeded_total", **labels) == 50, 10, 0.05
    )
    got = samples(exporter)
    assert value(got, "celery_task_started_total", **labels) == 50
    assert value(got, "celery_task_received_total", **labels) == 50
    assert value(got, "celery_exporter_worker_events_dropped_total") == 0
    assert exporter.role == "main"


def test_ignored_task_is_retired(exporter: WorkerExporter) -> None:
    """A task that raises Ignore leaves the active gauge and the in-flight table, counted nowhere."""
    task = Task("t.replaced", Context("id-9", {"routing_key": QUEUE}))
    signals.task_received.send(
        sender=None, request=SignalRequest("id-9", task.name, {"routing_key": QUEUE})
    )
    signals.task_prerun.send(sender=task, task_id="id-9", task=task)
    signals.task_postrun.send(sender=task, task_id="id-9", task=task, state="IGNORED", retval=None)
    got = samples(exporter)
    labels = {"name": "t.replaced", "hostname": HOST, "queue_name": QUEUE}
    assert value(got, "celery_tasks_active", **labels) == 0
    assert value(got, "celery_task_started_total", **labels) == 1
    assert value(got, "celery_task_succeeded_total", **labels) == 0
    assert exporter.state is not None and exporter.state.tasks == {}


def test_main_process_applies_only_its_own_task_events(exporter: WorkerExporter) -> None:
    """Events of other types are ignored, and every event counts for this worker's hostname."""
    exporter.apply({"type": "worker-offline", "hostname": "evil@h"})
    exporter.apply({"type": "task-succeeded", "uuid": "x-1", "name": "t.x", "hostname": "evil@h"})
    exporter.apply({"type": "_dropped", "count": 2**62})
    got = samples(exporter)
    assert (
        value(got, "celery_task_succeeded_total", name="t.x", hostname=HOST, queue_name="celery")
        == 1
    )
    assert not [k for k in got if ("hostname", "evil@h") in k[1]]
    assert value(got, "celery_exporter_worker_events_dropped_total") == 0


def test_web_config_guards_the_worker_endpoint(tmp_path: Path) -> None:
    """With web_config_file's basic auth, /metrics answers 401 without credentials, 200 with."""
    import base64
    import urllib.error
    import urllib.request

    import bcrypt

    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  prometheus: {hashed}\n")
    app = App()
    exp = install(
        app, port=free_port(), host="127.0.0.1", resources=False, web_config_file=str(web)
    )
    signals.worker_init.send(sender=SignalWorker(app, HOST))
    try:
        assert exp.server is not None
        url = f"http://127.0.0.1:{exp.server.port}/metrics"
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(url, timeout=5)
        assert denied.value.code == 401
        token = base64.b64encode(b"prometheus:s3cret").decode()
        request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
    finally:
        exp.stop()
        exp.disconnect()


def test_unusable_web_config_leaves_the_worker_running(tmp_path: Path) -> None:
    """A web config file that cannot be used is logged; the exporter does not serve, nothing raises."""
    app = App()
    missing = str(tmp_path / "missing.yml")
    exp = install(app, port=free_port(), host="127.0.0.1", resources=False, web_config_file=missing)
    try:
        signals.worker_init.send(sender=SignalWorker(app, HOST))
        assert exp.role == "main"
        assert exp.server is None
    finally:
        exp.stop()
        exp.disconnect()
