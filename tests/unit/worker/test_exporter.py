"""The in-worker exporter's lifecycle: what it applies, where it serves, when it stops."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery import signals

from celery_exporter import config
from celery_exporter.worker import DEFAULT_PORT, WorkerExporter, install
from tests.support.launchers import free_port
from tests.support.scrape import value
from tests.support.signals import SignalWorker
from tests.support.worker import HOST, App, samples


def test_default_port_is_the_worker_side_port() -> None:
    """install() listens on the worker side's one default port, 9809, unless told otherwise."""
    assert DEFAULT_PORT == config.SIDECAR_PORT == 9809
    exp = WorkerExporter(App())
    assert (exp.host, exp.port, exp.sample_interval) == ("0.0.0.0", 9809, 1.0)


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


def test_worker_shutdown_stops_serving(exporter: WorkerExporter) -> None:
    """worker_shutdown in the main process stops the server and closes the inbox."""
    assert exporter.server is not None
    signals.worker_shutdown.send(sender=None)
    assert exporter.server is None
    assert exporter.inbox is not None and exporter.inbox.sock.fileno() == -1


def test_port_in_use_leaves_the_worker_running() -> None:
    """A port already in use is logged; the exporter counts but does not serve, nothing raises."""
    app = App()
    first = install(app, port=free_port(), host="127.0.0.1", resources=False)
    signals.worker_init.send(sender=SignalWorker(app, HOST))
    assert first.server is not None
    second = install(App(), port=first.server.port, host="127.0.0.1", resources=False)
    try:
        responses = signals.worker_init.send(sender=SignalWorker(second.app, HOST))
        assert all(response is None for _, response in responses)
        assert second.role == "main"
        assert second.server is None
        assert second.internal_errors.counts() == {}
    finally:
        for exp in (first, second):
            exp.stop()
            exp.disconnect()


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
