"""MetricsServer bounds slow, idle and oversized clients (real sockets on 127.0.0.1)."""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric

from celery_exporter.web.health import HealthView
from celery_exporter.web.limits import Limits
from celery_exporter.web.server import MetricsServer
from celery_exporter.web.webconfig import WebConfigWatcher
from tests.tls import Pki, make_pki

READY = HealthView(broker_up=True, consuming=True, reconnects=0, reason="")
LIMITS = Limits(head_timeout=1.0, idle_timeout=1.0, max_connections=4, max_head_bytes=1024)


def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("demo_things", "Things.", registry=registry).inc(2)
    return registry


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    srv = MetricsServer("127.0.0.1", 0, registry(), lambda: READY, limits=LIMITS)
    srv.start()
    yield srv
    srv.stop()


def connect(server: MetricsServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def scrape(server: MetricsServer) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read()
        assert b"demo_things_total 2.0" in body
        return response.status
    finally:
        conn.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_trickling_client_cut_off_at_head_deadline(server: MetricsServer) -> None:
    """A client sending one byte every 0.3 s is closed when the whole head's deadline passes."""
    sock = connect(server)
    started = time.monotonic()
    closed_after = None
    for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\n":
        try:
            sock.sendall(bytes([byte]))
            sock.settimeout(0.3)
            if sock.recv(1) == b"":
                closed_after = time.monotonic() - started
                break
        except TimeoutError:
            continue
        except ConnectionResetError:
            closed_after = time.monotonic() - started
            break
    sock.close()
    assert closed_after is not None
    assert 0.9 <= closed_after < 1.8
    assert server.rejected == {"header_timeout": 1}


def test_idle_keep_alive_closed_after_idle_timeout(server: MetricsServer) -> None:
    """A keep-alive connection is answered, reused, then closed after the idle timeout."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/healthz")
    assert conn.getresponse().read() == b"ok\n"
    sock = conn.sock
    assert sock is not None
    conn.request("HEAD", "/metrics")
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"")
    assert conn.sock is sock
    started = time.monotonic()
    assert sock.recv(1) == b""
    assert 0.9 <= time.monotonic() - started < 1.8
    assert server.rejected == {"idle_timeout": 1}
    conn.close()


def test_cap_closes_oldest_waiting_connection(server: MetricsServer) -> None:
    """Past the cap, the oldest connection still sending its head is closed; /metrics answers."""
    held = [connect(server) for _ in range(4)]
    for sock in held:
        sock.sendall(b"GET /metrics HTTP/1.1\r\n")
    wait_for(lambda: server.open_connections == 4)
    assert scrape(server) == 200
    held[0].settimeout(1)
    assert held[0].recv(1) == b""
    for sock in held[1:]:
        sock.settimeout(0.1)
        with pytest.raises(TimeoutError):
            sock.recv(1)
    assert server.rejected == {"limit": 1}
    for sock in held:
        sock.close()


class Blocking:
    """A collector whose collect() waits until the test releases it."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def collect(self) -> Iterable[Metric]:
        self.entered.release()
        self.release.wait(5)
        yield GaugeMetricFamily("demo_blocked", "Blocked.", value=1)


def test_cap_refuses_when_every_connection_is_serving() -> None:
    """When every held connection is mid-request, a new connection is closed at once."""
    blocking = Blocking()
    reg = CollectorRegistry()
    reg.register(blocking)
    srv = MetricsServer("127.0.0.1", 0, reg, lambda: READY, limits=LIMITS)
    srv.start()
    busy = []
    try:
        for _ in range(4):
            sock = connect(srv)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            busy.append(sock)
        assert blocking.entered.acquire(timeout=3)
        time.sleep(0.2)
        late = connect(srv)
        late.settimeout(1)
        started = time.monotonic()
        assert late.recv(1) == b""
        assert time.monotonic() - started < 0.5
        late.close()
        assert srv.rejected == {"limit": 1}
        blocking.release.set()
        for sock in busy:
            assert sock.recv(12) == b"HTTP/1.1 200"
    finally:
        blocking.release.set()
        for sock in busy:
            sock.close()
        srv.stop()


def test_oversized_headers_get_431(server: MetricsServer) -> None:
    """Headers over the byte limit are answered 431 and the connection closed."""
    sock = connect(server)
    sock.sendall(b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 2000 + b"\r\n\r\n")
    answer = read_all(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert answer.endswith(b"\r\n\r\nrequest head too large\n")
    assert server.rejected == {"too_large": 1}


def test_too_many_headers_get_431(server: MetricsServer) -> None:
    """More header lines than the limit are answered 431, even within the byte limit."""
    sock = connect(server)
    sock.sendall(b"GET /metrics HTTP/1.1\r\n" + b"A: b\r\n" * 101 + b"\r\n")
    assert read_all(sock).startswith(b"HTTP/1.1 431 ")
    sock.close()


def test_long_request_line_gets_414(server: MetricsServer) -> None:
    """A request line over the limit is answered 414 before its end arrives."""
    sock = connect(server)
    sock.sendall(b"GET /" + b"a" * 1100)
    assert read_all(sock).startswith(b"HTTP/1.1 414 URI Too Long\r\n")
    sock.close()
    assert server.rejected == {"too_large": 1}


def test_pipelined_requests_on_one_connection(server: MetricsServer) -> None:
    """Two requests sent together on one connection are both answered, in order."""
    sock = connect(server)
    sock.sendall(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    answer = read_all(sock)
    sock.close()
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert answer.endswith(b"\r\n\r\nready\n")
    assert b"\r\n\r\nok\nHTTP/1.1 200 OK\r\n" in answer
    assert server.rejected == {}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_cap_over_tls_closes_oldest_waiting(tmp_path: Path, pki: Pki) -> None:
    """Over TLS too, past the cap the oldest waiting connection is closed and a scrape answers."""
    path = tmp_path / "web.yml"
    path.write_text(
        f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n"
    )
    srv = MetricsServer(
        "127.0.0.1", 0, registry(), lambda: READY, web=WebConfigWatcher(path, 0.0), limits=LIMITS
    )
    srv.start()
    context = ssl.create_default_context(cafile=str(pki.ca))
    held: list[ssl.SSLSocket] = []
    try:
        for _ in range(4):
            sock = context.wrap_socket(connect(srv), server_hostname="127.0.0.1")
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")
            held.append(sock)
        wait_for(lambda: srv.open_connections == 4)
        conn = http.client.HTTPSConnection("127.0.0.1", srv.port, context=context, timeout=5)
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert (response.status, b"demo_things_total 2.0" in response.read()) == (200, True)
        conn.close()
        held[0].settimeout(1)
        started = time.monotonic()
        with contextlib.suppress(ssl.SSLError, ConnectionResetError):  # a TLS close may be abrupt
            assert held[0].recv(1) == b""
        assert time.monotonic() - started < 0.5
        assert srv.rejected == {"limit": 1}
    finally:
        for sock in held:
            sock.close()
        srv.stop()
