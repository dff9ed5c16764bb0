"""The HTTP endpoints served by MetricsServer on a free loopback port."""

from __future__ import annotations

import gzip
import http.client
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from celery_exporter.web.health import HealthView
from celery_exporter.web.server import MetricsServer, Request, Response

READY = HealthView(broker_up=True, consuming=True, reconnects=0, reason="")
NOT_READY = HealthView(broker_up=False, consuming=False, reconnects=2, reason="broker <down>")


class Readiness:
    """A readiness callable whose answer the test sets."""

    def __init__(self) -> None:
        self.view = READY

    def __call__(self) -> HealthView:
        return self.view


@pytest.fixture(scope="module")
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    counter = Counter("demo_things", "Things counted by the test.", ["kind"], registry=registry)
    counter.labels("a").inc(3)
    return registry


@pytest.fixture(scope="module")
def readiness() -> Readiness:
    return Readiness()


@pytest.fixture(scope="module")
def server(registry: CollectorRegistry, readiness: Readiness) -> Iterator[MetricsServer]:
    srv = MetricsServer("127.0.0.1", 0, registry, readiness, title="Test <exporter>")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def reset_readiness(readiness: Readiness) -> None:
    readiness.view = READY


def get(
    server: MetricsServer, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_binds_a_free_port(server: MetricsServer) -> None:
    """Port 0 binds a real free port, reported by .port."""
    assert 0 < server.port < 65536


def test_metrics(server: MetricsServer, registry: CollectorRegistry) -> None:
    """/metrics answers 200 with the registry in the text format."""
    status, headers, body = get(server, "/metrics")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert body == generate_latest(registry)
    assert b'demo_things_total{kind="a"} 3.0\n' in body
    assert "Content-Encoding" not in headers
    assert headers["Content-Length"] == str(len(body))


def test_metrics_query_string_ignored(server: MetricsServer, registry: CollectorRegistry) -> None:
    """A query string after /metrics is ignored."""
    status, _, body = get(server, "/metrics?name[]=demo_things_total")
    assert status == 200
    assert body == generate_latest(registry)


def test_metrics_gzip(server: MetricsServer, registry: CollectorRegistry) -> None:
    """/metrics is gzip-compressed when the client accepts gzip."""
    status, headers, body = get(server, "/metrics", {"Accept-Encoding": "gzip, deflate"})
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == generate_latest(registry)


def test_healthz(server: MetricsServer, readiness: Readiness) -> None:
    """/healthz answers 200 even when the exporter is not ready."""
    readiness.view = NOT_READY
    assert get(server, "/healthz")[::2] == (200, b"ok\n")


def test_readyz_ready(server: MetricsServer) -> None:
    """/readyz answers 200 when the broker is connected and events are consumed."""
    status, headers, body = get(server, "/readyz")
    assert (status, body) == (200, b"ready\n")
    assert headers["Content-Type"] == "text/plain; charset=utf-8"


def test_readyz_not_ready(server: MetricsServer, readiness: Readiness) -> None:
    """/readyz answers 503 with the reason when not ready."""
    readiness.view = NOT_READY
    assert get(server, "/readyz")[::2] == (503, b"not ready: broker <down>\n")


def test_readyz_connected_but_not_consuming(server: MetricsServer, readiness: Readiness) -> None:
    """A connected broker without a running consumer is not ready."""
    readiness.view = HealthView(True, False, 0, "event consumer stopped")
    assert get(server, "/readyz")[::2] == (503, b"not ready: event consumer stopped\n")


def test_landing_page(server: MetricsServer, readiness: Readiness) -> None:
    """/ serves an HTML page linking the endpoints, with text escaped."""
    status, headers, body = get(server, "/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    page = body.decode()
    assert "<title>Test &lt;exporter&gt;</title>" in page
    assert '<a href="metrics">/metrics</a>' in page
    assert '<li><a href="readyz">/readyz</a>: ready</li>' in page
    readiness.view = NOT_READY
    page = get(server, "/")[2].decode()
    assert '<li><a href="readyz">/readyz</a>: not ready: broker &lt;down&gt;</li>' in page


def test_not_found(server: MetricsServer) -> None:
    """Any other path answers 404."""
    assert get(server, "/metricz")[::2] == (404, b"not found; see /\n")


def test_head_has_no_body(server: MetricsServer) -> None:
    """HEAD answers like GET, with the length but no body."""
    status, headers, body = get(server, "/healthz", method="HEAD")
    assert (status, body, headers["Content-Length"]) == (200, b"", "3")


def test_render_failure_answers_500() -> None:
    """A collector that raises makes /metrics answer 500 instead of dropping the connection."""

    class Broken:
        def collect(self) -> Iterator[object]:
            raise RuntimeError("boom")

    registry = CollectorRegistry()
    registry.register(Broken())  # type: ignore[arg-type]
    srv = MetricsServer("127.0.0.1", 0, registry, Readiness())
    srv.start()
    try:
        assert get(srv, "/metrics")[::2] == (500, b"failed to render metrics\n")
    finally:
        srv.stop()


def test_routes_answer_other_paths_in_order() -> None:
    """Routes see method, path and query; the first answer wins; none or a crash is 404 or 500."""
    seen: list[tuple[str, str, str]] = []

    def first(request: Request) -> Response | None:
        seen.append((request.method, request.path, request.query))
        if request.path == "/boom":
            raise RuntimeError("a bug")
        return (
            Response(201, b"first", "text/x-first", {"X-Route": "1"})
            if request.path == "/a"
            else None
        )

    def second(request: Request) -> Response | None:
        return Response(200, b"second", "text/x-second") if request.path.startswith("/a") else None

    srv = MetricsServer(
        "127.0.0.1", 0, CollectorRegistry(), Readiness(), routes=[first, second],
        links=[("a", "the <a> page")],
    )  # fmt: skip
    srv.start()
    try:
        status, headers, body = get(srv, "/a?x=1&y=%3C")
        assert (status, body, headers["Content-Type"], headers["X-Route"]) == (
            201, b"first", "text/x-first", "1"
        )  # fmt: skip
        assert get(srv, "/ab")[::2] == (200, b"second")
        assert get(srv, "/b")[::2] == (404, b"not found; see /\n")
        assert get(srv, "/boom")[::2] == (500, b"internal error\n")
        assert get(srv, "/metrics")[0] == 200
        assert get(srv, "/a", method="HEAD")[::2] == (201, b"")
        assert seen == [
            ("GET", "/a", "x=1&y=%3C"), ("GET", "/ab", ""), ("GET", "/b", ""),
            ("GET", "/boom", ""), ("HEAD", "/a", ""),
        ]  # fmt: skip
        landing = get(srv, "/")[2].decode()
        assert '<li><a href="a">/a</a>: the &lt;a&gt; page</li>\n</ul>' in landing
    finally:
        srv.stop()
