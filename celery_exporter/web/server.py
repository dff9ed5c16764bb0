"""The HTTP endpoints: ``/`` landing page, ``/metrics``, ``/healthz`` and ``/readyz``.

A scrape only renders what the collectors already hold; nothing here talks to the broker.
"""

from __future__ import annotations

import gzip
import html
import socket
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from ..log import get_logger
from . import exposition
from .health import HealthView
from .webconfig import WebConfig, WebConfigWatcher

log = get_logger(__name__)
TEXT = exposition.CONTENT_TYPE

#: Longest a client may take over its TLS handshake.
HANDSHAKE_TIMEOUT = 10.0
_NO_WEB_CONFIG = WebConfig()

_LANDING = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title></head>
<body><h1>{title}</h1><p>{about}</p>
<ul>
<li><a href="metrics">/metrics</a>: Prometheus metrics</li>
<li><a href="healthz">/healthz</a>: the process is alive</li>
<li><a href="readyz">/readyz</a>: {ready}</li>
</ul></body></html>
"""


class MetricsServer:
    """Serves a registry and the health endpoints on a background thread.

    With ``web`` (``--web.config.file``) each connection is wrapped in the TLS context and
    each request checked against the basic auth users current at that moment;
    ``healthz_open`` leaves ``/healthz`` without basic auth.
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
    ) -> None:
        self.registry = registry
        self._render_lock = threading.Lock()
        self.readiness = readiness
        self.title = title
        self.about = about
        self.web = web
        self.healthz_open = healthz_open
        handler = _handler_for(self)
        server_class = _IPv6Server if ":" in host else _Server
        self.httpd = server_class((host, port), handler)
        self.httpd.web = web
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port actually bound."""
        return int(self.httpd.server_address[1])

    def start(self) -> None:
        """Serve requests on a daemon thread."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()

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
        return _LANDING.format(
            title=html.escape(self.title), about=html.escape(self.about), ready=html.escape(ready)
        ).encode()


class _Server(ThreadingHTTPServer):
    """Wraps each accepted connection in the current TLS context, on the request's thread."""

    web: WebConfigWatcher | None = None

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
        try:
            tls.settimeout(None)
            super().finish_request(tls, client_address)
        finally:
            tls.close()


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


def _handler_for(server: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "celery-exporter"
        web = _NO_WEB_CONFIG

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            self.web = server.web_config()
            if not (path == "/healthz" and server.healthz_open) and not self.web.check_header(
                self.headers.get("Authorization")
            ):
                self._send(
                    401, b"unauthorized\n", "text/plain; charset=utf-8",
                    {"WWW-Authenticate": 'Basic realm="celery-exporter", charset="UTF-8"'},
                )  # fmt: skip
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
                self._send(404, b"not found; see /\n", "text/plain; charset=utf-8")

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
            self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
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
