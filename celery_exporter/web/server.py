"""The HTTP endpoints: ``/`` landing page, ``/metrics``, ``/healthz`` and ``/readyz``.

More paths plug in as :data:`Route` callables (``routes``), tried in order after the
built-in paths and behind the same TLS and basic auth; ``links`` adds them to the landing page.
A POST reaches the routes only (404 when none answers), with its body (at most
``max_body_bytes``, 413 beyond) and the authenticated user.

A scrape only renders what the collectors already hold; nothing here talks to the broker.
Slow and idle clients are bounded as :mod:`.limits` describes (a deadline for each request's
head, an idle timeout between keep-alive requests, a cap on connections that makes room by
closing the oldest one waiting, a size limit on heads); the TLS handshake has
:data:`HANDSHAKE_TIMEOUT`. Options read: none (the caller passes host, port and the
``--web.config.file`` watcher).
"""

from __future__ import annotations

import gzip
import html
import io
import socket
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType
from typing import Any, NamedTuple

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from ..log import get_logger
from . import exposition
from .health import HealthView
from .limits import BUSY, WAITING, Connection, Connections, HeadReader, Limits
from .webconfig import WebConfig, WebConfigWatcher

log = get_logger(__name__)
TEXT = exposition.CONTENT_TYPE

#: Longest a client may take over its TLS handshake.
HANDSHAKE_TIMEOUT = 10.0
#: Connections the kernel queues before the server accepts them.
ACCEPT_BACKLOG = 128

_NO_WEB_CONFIG = WebConfig()

_LANDING = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title></head>
<body><h1>{title}</h1><p>{about}</p>
<ul>
<li><a href="metrics">/metrics</a>: Prometheus metrics</li>
<li><a href="healthz">/healthz</a>: the process is alive</li>
<li><a href="readyz">/readyz</a>: {ready}</li>
{links}</ul></body></html>
"""


@dataclass(frozen=True)
class Request:
    """One request as a route sees it: ``path`` still percent-encoded, ``query`` after the ``?``.

    ``user`` is the basic auth user the request authenticated as (None without basic auth).
    """

    method: str
    path: str
    query: str
    headers: Message
    body: bytes = b""
    user: str | None = None


class Response(NamedTuple):
    """What a route answers: status, body, content type and headers of its own."""

    status: int
    body: bytes
    content_type: str
    headers: Mapping[str, str] = MappingProxyType({})


#: A route answers the requests it knows and returns None for the others.
Route = Callable[[Request], "Response | None"]


class MetricsServer:
    """Serves a registry and the health endpoints on a background thread.

    With ``web`` (``--web.config.file``) each connection is wrapped in the TLS context and
    each request checked against the basic auth users current at that moment;
    ``healthz_open`` leaves ``/healthz`` without basic auth. ``routes`` answer the other
    paths; ``links`` are (relative href, description) pairs listed on the landing page.
    """

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        readiness: Callable[[], HealthView],
        title: str = "Celery exporter",
        about: str = "Prometheus exporter for Celery.",
        web: WebConfigWatcher | None = None,
        healthz_open: bool = False,
        limits: Limits | None = None,
        routes: Sequence[Route] = (),
        links: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.registry = registry
        self.routes = tuple(routes)
        self.links = tuple(links)
        self._render_lock = threading.Lock()
        self.readiness = readiness
        self.title = title
        self.about = about
        self.web = web
        self.healthz_open = healthz_open
        self.limits = limits or Limits()
        handler = _handler_for(self)
        server_class = _IPv6Server if ":" in host else _Server
        self.httpd = server_class((host, port), handler)
        self.httpd.web = web
        self.httpd.connections = Connections(self.limits.max_connections)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port actually bound."""
        return int(self.httpd.server_address[1])

    @property
    def rejected(self) -> dict[str, int]:
        """Connections cut off so far, by reason."""
        return self.httpd.connections.counts()

    @property
    def open_connections(self) -> int:
        """Connections held now."""
        return len(self.httpd.connections)

    def start(self) -> None:
        """Serve requests on a daemon thread."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, close the socket and every connection held."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.httpd.connections.close_all()

    def web_config(self) -> WebConfig:
        """The TLS and auth settings in force now (none without ``--web.config.file``)."""
        return self.web.current() if self.web is not None else _NO_WEB_CONFIG

    def render(self, accept: str) -> tuple[bytes, str]:
        """Render the registry in the format ``accept`` allows, one scrape at a time.

        Concurrent scrapes would only repeat the same work and multiply the memory it takes.
        """
        with self._render_lock:
            if exposition.accepts_text(accept):
                return exposition.render(self.registry.collect()), TEXT
            encoder, content_type = choose_encoder(accept)
            return encoder(self.registry), content_type

    def landing(self) -> bytes:
        """Return the landing page."""
        view = self.readiness()
        ready = "ready" if view.ready else f"not ready: {view.reason}"
        links = "".join(
            f'<li><a href="{html.escape(href)}">/{html.escape(href)}</a>: {html.escape(about)}</li>\n'
            for href, about in self.links
        )
        return _LANDING.format(
            title=html.escape(self.title),
            about=html.escape(self.about),
            ready=html.escape(ready),
            links=links,
        ).encode()

    def route(self, request: Request) -> Response | None:
        """The first route's answer to ``request``; None when no route knows the path."""
        for route in self.routes:
            response = route(request)
            if response is not None:
                return response
        return None


class _Server(ThreadingHTTPServer):
    """Holds each accepted connection within the cap and wraps it in the current TLS context."""

    web: WebConfigWatcher | None = None
    connections: Connections
    request_queue_size = ACCEPT_BACKLOG

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._local = threading.local()
        super().__init__(*args, **kwargs)

    def current(self) -> Connection:
        """The connection this thread serves."""
        conn: Connection = self._local.conn
        return conn

    def process_request(self, request: Any, client_address: Any) -> None:
        conn = self.connections.admit(request, client_address)
        if conn is None:
            self.shutdown_request(request)
            return
        thread = threading.Thread(
            target=self._serve, args=(request, client_address, conn), daemon=True
        )
        thread.start()

    def _serve(self, request: Any, client_address: Any, conn: Connection) -> None:
        self._local.conn = conn
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.connections.release(conn)
            self.shutdown_request(request)

    def finish_request(self, request: Any, client_address: Any) -> None:
        context = self.web.current().ssl_context if self.web is not None else None
        if context is None:
            super().finish_request(request, client_address)
            return
        try:
            request.settimeout(HANDSHAKE_TIMEOUT)
            tls = context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.debug("tls_handshake_failed", client=str(client_address[0]), error=str(exc))
            return
        self.current().sock = tls
        try:
            tls.settimeout(None)
            super().finish_request(tls, client_address)
        finally:
            tls.close()


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


def _handler_for(server: MetricsServer) -> type[BaseHTTPRequestHandler]:
    limits = server.limits

    class Handler(BaseHTTPRequestHandler):
        server_version = "celery-exporter"
        protocol_version = "HTTP/1.1"
        web = _NO_WEB_CONFIG
        _reader: HeadReader | None = None

        def handle_one_request(self) -> None:
            httpd: _Server = self.server  # type: ignore[assignment]
            conn = httpd.current()
            if self._reader is None:
                self._reader = HeadReader(
                    self.connection, self.client_address, limits, httpd.connections
                )
            head = self._reader.next_head()
            if head is None:
                self.close_connection = True
                return
            conn.set(BUSY)
            self.connection.settimeout(limits.send_timeout)
            self.rfile.close()
            self.rfile = io.BytesIO(head)
            super().handle_one_request()
            conn.set(WAITING)

        def _authenticate(self, path: str) -> tuple[bool, str | None]:
            """Whether the request may go on, and as which user; answers 401 when it may not."""
            self.web = server.web_config()
            if not self.web.auth_required or (path == "/healthz" and server.healthz_open):
                return True, None
            user = self.web.user_of(self.headers.get("Authorization"))
            if user is None:
                self._send(
                    401, b"unauthorized\n", "text/plain; charset=utf-8",
                    {"WWW-Authenticate": 'Basic realm="celery-exporter", charset="UTF-8"'},
                )  # fmt: skip
            return user is not None, user

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            self.web = server.web_config()
            length = self.headers.get("Content-Length", "0").strip()
            if self.headers.get("Transfer-Encoding") or not length.isdigit():
                self.close_connection = True
                self._send(411, b"a POST needs a Content-Length\n", "text/plain; charset=utf-8",
                           {"Connection": "close"})  # fmt: skip
                return
            if int(length) > limits.max_body_bytes:
                self.close_connection = True
                body = f"request body over {limits.max_body_bytes} bytes\n".encode()
                self._send(413, body, "text/plain; charset=utf-8", {"Connection": "close"})
                return
            assert self._reader is not None
            data = self._reader.body(int(length))
            if data is None:
                self.close_connection = True
                return
            allowed, user = self._authenticate(path)
            if allowed:
                self._routed(path, data, user)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            allowed, user = self._authenticate(path)
            if not allowed:
                return
            if path == "/metrics":
                self._metrics()
            elif path == "/healthz":
                self._send(200, b"ok\n", "text/plain; charset=utf-8")
            elif path == "/readyz":
                view = server.readiness()
                if view.ready:
                    self._send(200, b"ready\n", "text/plain; charset=utf-8")
                else:
                    body = f"not ready: {view.reason}\n".encode()
                    self._send(503, body, "text/plain; charset=utf-8")
            elif path in ("/", ""):
                self._send(200, server.landing(), "text/html; charset=utf-8")
            else:
                self._routed(path, b"", user)

        def _routed(self, path: str, body: bytes, user: str | None) -> None:
            query = self.path.split("?", 1)[1] if "?" in self.path else ""
            try:
                response = server.route(
                    Request(self.command, path, query, self.headers, body, user)
                )
            except Exception:
                log.exception("route_failed", path=path[:200])
                self._send(500, b"internal error\n", "text/plain; charset=utf-8")
                return
            if response is None:
                self._send(404, b"not found; see /\n", "text/plain; charset=utf-8")
            else:
                self._send(*response)

        def _metrics(self) -> None:
            try:
                body, content_type = server.render(self.headers.get("Accept", ""))
            except Exception:
                log.exception("render_failed")
                self._send(500, b"failed to render metrics\n", "text/plain; charset=utf-8")
                return
            headers = {}
            if "gzip" in self.headers.get("Accept-Encoding", ""):
                body = gzip.compress(body, compresslevel=1)
                headers["Content-Encoding"] = "gzip"
            self._send(200, body, content_type, headers)

        def _send(
            self,
            status: int,
            body: bytes,
            content_type: str,
            headers: Mapping[str, str] | None = None,
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in {**self.web.headers, **(headers or {})}.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self) -> None:
            self.do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http_request", request=format % args)

    return Handler
