"""The exporter as a process: its pages, its shutdown, and what it writes about its broker."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

import pytest

from tests.support.launchers import RedisServer, free_port
from tests.support.processes import START_TIMEOUT, ExporterProcess
from tests.support.scrape import parse_metrics, value
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

PASSWORD = "s3cretpw"


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.extend(v for k, v in attrs if k == "href" and v)


def test_landing_page_and_unknown_path(exporter: ExporterProcess) -> None:
    """/ links to /metrics, /healthz and /readyz, and a path the exporter does not serve is 404."""
    status, body = exporter.get("/")
    assert status == 200
    parser = _Links()
    parser.feed(body.decode())
    targets = {urljoin(exporter.base + "/", href) for href in parser.hrefs}
    for path in ("/metrics", "/healthz", "/readyz"):
        assert exporter.base + path in targets, (path, parser.hrefs)
        assert exporter.get(path)[0] == 200, path
    assert exporter.get("/no-such-page")[0] == 404
    assert exporter.get("/metrics/extra")[0] == 404


@pytest.mark.parametrize("broker", ["connected", "unreachable"])
def test_sigterm_exits_zero(broker: str, redis_server: RedisServer, logdir: Path) -> None:
    """SIGTERM makes the exporter exit with status 0 within 5 s, connected or retrying."""
    url = redis_server.url() if broker == "connected" else f"redis://127.0.0.1:{free_port()}/0"
    proc = ExporterProcess(url, logdir).start()
    try:
        if broker == "connected":
            proc.wait_ready()
        else:
            wait_for(lambda: '"broker_unavailable"' in proc.output(), START_TIMEOUT, 0.1)
        assert proc.process is not None
        proc.process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        try:
            status = proc.process.wait(5)
        except subprocess.TimeoutExpired:
            pytest.fail(f"exporter still running 5 s after SIGTERM:\n{proc.output()[-2000:]}")
        assert status == 0, proc.output()[-2000:]
        assert time.monotonic() - sent <= 5
        assert '"stopped"' in proc.output()
    finally:
        proc.stop()


@pytest.fixture
def unreachable(logdir: Path) -> Iterator[ExporterProcess]:
    """An exporter given a password and a port nothing listens on."""
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    proc = ExporterProcess(url, logdir).start()
    try:
        yield proc
    finally:
        proc.stop()


def test_password_never_written(unreachable: ExporterProcess) -> None:
    """With an unreachable broker the exporter stays alive, not ready, and never prints the password."""
    proc = unreachable
    # A few failed attempts, each logged.
    wait_for(
        lambda: proc.output().count('"broker_unavailable"') >= 2,
        START_TIMEOUT,
        0.2,
        "two broker_unavailable log lines",
    )
    status, body = proc.get("/readyz")
    assert status == 503
    assert body.decode().startswith("not ready: broker connection failed: "), body
    assert proc.get("/healthz") == (200, b"ok\n")
    status, page = proc.get("/metrics")
    assert status == 200
    assert value(parse_metrics(page.decode()), "celery_exporter_broker_up") == 0
    assert value(parse_metrics(page.decode()), "celery_exporter_reconnects_total") == 0

    output = proc.output()
    assert PASSWORD not in output
    assert "***" in output
    for served in (body, page, proc.get("/")[1]):
        assert PASSWORD.encode() not in served
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    unavailable = [line for line in lines if line.get("event") == "broker_unavailable"]
    assert unavailable
    assert all(line["broker"] == proc.broker_url.replace(PASSWORD, "***") for line in unavailable)
