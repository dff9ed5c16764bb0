"""The bounds on HTTP clients, so that slow and idle ones cannot pin the server.

Each connection has a thread, so:

- at most :data:`MAX_CONNECTIONS` connections are held at once;
- a request's line and headers must arrive in full within :data:`HEAD_TIMEOUT`, however slowly
  they trickle in: a deadline for the whole head (the socket timeout is cut to the time left
  before each read), not a timeout per read;
- a keep-alive connection may wait :data:`IDLE_TIMEOUT` for its next request;
- a head is at most :data:`MAX_HEAD_BYTES` long with :data:`MAX_HEADERS` headers: ``414`` for a
  longer request line, ``431`` otherwise, then the connection is closed;
- a request body (a POST's) is at most :data:`MAX_BODY_BYTES` (``413`` beyond, and the
  connection is closed) and must arrive within :data:`HEAD_TIMEOUT` of its head;
- one write of a response may block :data:`SEND_TIMEOUT` on a client that does not read.

When the cap is reached, a new connection makes room by closing the connection that has waited
longest without a request in progress (one still sending its head, or idle between requests);
only when every connection is in the middle of a request is the new one closed at once.
Refusing new connections instead would let a few hundred slow clients lock Prometheus out until
they time out; closing the oldest waiting one lets a scrape in, since a scrape sends its head
at once and is then in progress, no longer waiting. The limits are constants, not flags: they
bound abuse and no scrape comes near them.

What is cut off is counted by reason (``limit``, ``header_timeout``, ``idle_timeout``,
``too_large``; :meth:`Connections.counts`) and logged at debug. Options read: none.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ..log import get_logger

log = get_logger(__name__)

#: Longest a request line and its headers may take to arrive, from their first byte.
HEAD_TIMEOUT = 10.0
#: Longest a keep-alive connection may wait for its next request.
IDLE_TIMEOUT = 30.0
#: Most connections held at once (each has a thread).
MAX_CONNECTIONS = 200
#: Longest request line plus headers, in bytes.
MAX_HEAD_BYTES = 8192
#: Most header lines in one request.
MAX_HEADERS = 100
#: Longest one write of a response may block on a client that does not read.
SEND_TIMEOUT = 30.0
#: Longest request body, in bytes.
MAX_BODY_BYTES = 64 * 1024

WAITING, BUSY = "waiting", "busy"
_REASONS = {414: "URI Too Long", 431: "Request Header Fields Too Large"}


@dataclass(frozen=True)
class Limits:
    """The bounds put on each client; the module constants unless a test passes shorter ones."""

    head_timeout: float = HEAD_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    max_connections: int = MAX_CONNECTIONS
    max_head_bytes: int = MAX_HEAD_BYTES
    max_headers: int = MAX_HEADERS
    send_timeout: float = SEND_TIMEOUT
    max_body_bytes: int = MAX_BODY_BYTES


class Connection:
    """One accepted connection: its socket (the TLS one once wrapped) and what it is doing."""

    __slots__ = ("since", "sock", "state")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.state = WAITING
        self.since = time.monotonic()

    def set(self, state: str) -> None:
        """Record that the connection now waits for a request, or serves one."""
        self.state = state
        self.since = time.monotonic()

    def cut(self) -> None:
        """Shut the socket down, which wakes its thread out of any read."""
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)


class Connections:
    """The connections held, at most ``limit``: a new one makes room by cutting the oldest waiting."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._held: set[Connection] = set()
        self._counts: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._held)

    def admit(self, sock: socket.socket, client: Any) -> Connection | None:
        """Hold a new connection, or None when every one held is serving a request."""
        with self._lock:
            if len(self._held) >= self.limit:
                waiting = [c for c in self._held if c.state == WAITING]
                if not waiting:
                    self._cut_off("limit", client)
                    return None
                oldest = min(waiting, key=lambda c: c.since)
                self._held.discard(oldest)
                oldest.cut()
                self._cut_off("limit", None)
            conn = Connection(sock)
            self._held.add(conn)
            return conn

    def release(self, conn: Connection) -> None:
        """Forget a connection whose thread is done with it."""
        with self._lock:
            self._held.discard(conn)

    def close_all(self) -> None:
        """Cut every connection held (on stop)."""
        with self._lock:
            held, self._held = self._held, set()
        for conn in held:
            conn.cut()

    def count(self, reason: str, client: Any) -> None:
        """Count and log a connection cut off for ``reason``."""
        with self._lock:
            self._cut_off(reason, client)

    def counts(self) -> dict[str, int]:
        """Connections cut off so far, by reason."""
        with self._lock:
            return dict(self._counts)

    def _cut_off(self, reason: str, client: Any) -> None:
        self._counts[reason] += 1
        log.debug("http_connection_cut", reason=reason, client=str(client[0]) if client else "")


def head_end(buffer: bytes) -> int:
    """Where the blank line that ends a request head ends in ``buffer``, or -1."""
    ends = [i + len(sep) for sep in (b"\r\n\r\n", b"\n\n") if (i := buffer.find(sep)) >= 0]
    return min(ends, default=-1)


def too_large(buffer: bytes, limits: Limits) -> int:
    """414 or 431 when the head at the start of ``buffer`` is over the limits, else 0."""
    end = head_end(buffer)
    head = buffer[:end] if end >= 0 else buffer
    line_end = head.find(b"\n")
    if (line_end < 0 and len(head) > limits.max_head_bytes) or line_end > limits.max_head_bytes:
        return 414
    if len(head) > limits.max_head_bytes or head.count(b"\n") - 2 > limits.max_headers:
        return 431
    return 0


class HeadReader:
    """Reads one connection's request heads within the limits, keeping what follows a head."""

    def __init__(self, sock: socket.socket, client: Any, limits: Limits, conns: Connections):
        self.sock = sock
        self.client = client
        self.limits = limits
        self.conns = conns
        self.buffer = b""
        self.served = 0

    def next_head(self) -> bytes | None:
        """The next request's line and headers, or None when the connection is done."""
        limits = self.limits
        if not self.buffer and self.served:
            self.buffer = self._receive(limits.idle_timeout, "idle_timeout")
            if not self.buffer:
                return None
        deadline = time.monotonic() + limits.head_timeout
        while (end := head_end(self.buffer)) < 0 and not too_large(self.buffer, limits):
            chunk = self._receive(deadline - time.monotonic(), "header_timeout")
            if not chunk:
                return None
            self.buffer += chunk
        if status := too_large(self.buffer, limits):
            self.conns.count("too_large", self.client)
            self._refuse(status)
            return None
        head, self.buffer = self.buffer[:end], self.buffer[end:]
        self.served += 1
        return head

    def body(self, length: int) -> bytes | None:
        """The ``length`` bytes after the head, within :data:`HEAD_TIMEOUT`; None when cut short."""
        deadline = time.monotonic() + self.limits.head_timeout
        while len(self.buffer) < length:
            chunk = self._receive(deadline - time.monotonic(), "header_timeout")
            if not chunk:
                return None
            self.buffer += chunk
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return body

    def _receive(self, timeout: float, reason: str) -> bytes:
        """What the client sends within ``timeout``; empty when it closed or took too long."""
        if timeout <= 0:
            self.conns.count(reason, self.client)
            return b""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            self.conns.count(reason, self.client)
        except OSError:
            pass
        return b""

    def _refuse(self, status: int) -> None:
        """Answer ``status`` to a head over the limits and close, reading what is left."""
        body = b"request head too large\n"
        head = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        self.sock.settimeout(1.0)
        with contextlib.suppress(OSError):
            self.sock.sendall(head.encode() + body)
            self.sock.shutdown(socket.SHUT_WR)
            for _ in range(16):
                if not self.sock.recv(65536):
                    break
