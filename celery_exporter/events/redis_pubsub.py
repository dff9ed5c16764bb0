"""Reading Celery events straight off Redis pub/sub: the fast path for ``redis://`` and ``rediss://``.

kombu's Redis transport publishes each event message as a JSON envelope on a pub/sub channel
named from these transport options (``--broker-transport-option``), which this module reads the
same way kombu does:

- ``global_keyprefix`` (default empty): put before every key and channel name.
- ``fanout_prefix`` (default true): true puts ``/{db}.`` before the exchange name, a string puts
  itself there, false puts nothing.
- ``fanout_patterns`` (default true): publishers append ``/{routing_key}``; both forms are
  subscribed, so either setting on the publishers' side is followed.

The URL and its TLS options (``rediss://``) are read by :mod:`celery_exporter.broker.redis_url`,
as for every other Redis connection the exporter makes. Replies are parsed by hiredis straight from the socket, and every
read's worth of events is handed over in one batch.
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import hiredis

from ..broker import redis_url

EXCHANGE = "celeryev"
READ_SIZE = 1 << 18
_GLOB_SPECIAL = re.compile(r"([\\*?\[\]])")


class StreamClosed(ConnectionError):
    """Redis closed the subscription (shut down, or dropped a subscriber that fell behind)."""


@dataclass(frozen=True)
class RedisTarget:
    """Where the event channels are: address, credentials, TLS and channel names."""

    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    tls: ssl.SSLContext | None
    channel: str

    @property
    def pattern(self) -> str:
        """The pattern matching ``channel/<routing key>``."""
        return _GLOB_SPECIAL.sub(r"\\\1", self.channel) + "/*"


def supports(url: str) -> bool:
    """Whether ``url`` can use this fast path (a single redis:// or rediss:// URL)."""
    return ";" not in url and url.split("://", 1)[0] in ("redis", "rediss")


def target(
    url: str, transport_options: Mapping[str, Any], ssl_options: Mapping[str, Any]
) -> RedisTarget:
    """Work out address, credentials, TLS and channel names from the broker settings."""
    where = redis_url.parse(url)
    prefix = transport_options.get("fanout_prefix", True)
    fanout = prefix if isinstance(prefix, str) else (f"/{where.db}." if prefix else "")
    keyprefix = str(transport_options.get("global_keyprefix", "") or "")
    return RedisTarget(
        host=where.host,
        port=where.port,
        db=where.db,
        username=where.username,
        password=where.password,
        tls=redis_url.TlsOptions.from_options(ssl_options).context() if where.tls else None,
        channel=f"{keyprefix}{fanout}{EXCHANGE}",
    )


def pack(*args: str | bytes) -> bytes:
    """Encode one Redis command in RESP."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class EventSubscription:
    """One subscribed connection; :meth:`read` returns the message payloads that have arrived."""

    def __init__(
        self, where: RedisTarget, timeout: float = 5.0, read_size: int = READ_SIZE
    ) -> None:
        self.where = where
        self.timeout = timeout
        self.read_size = read_size
        self.reader = hiredis.Reader()
        self.sock: socket.socket | None = None

    def open(self) -> list[bytes]:
        """Connect, authenticate and subscribe; return messages that came with the confirmations."""
        where = self.where
        sock = socket.create_connection((where.host, where.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if where.tls is not None:
            sock = where.tls.wrap_socket(sock, server_hostname=where.host)
        self.sock = sock
        if where.password is not None:
            auth = (
                ["AUTH", where.password]
                if where.username is None
                else ["AUTH", where.username, where.password]
            )
            self._command(*auth)
        self._command("CLIENT", "SETNAME", "celery-exporter")
        sock.sendall(pack("PSUBSCRIBE", where.pattern) + pack("SUBSCRIBE", where.channel))
        pending: list[bytes] = []
        confirmed: set[bytes] = set()
        while len(confirmed) < 2:
            reply = self._reply()
            if type(reply) is list and reply[0] in (b"psubscribe", b"subscribe"):
                confirmed.add(reply[0])
            elif (payload := _payload(reply)) is not None:
                pending.append(payload)
        return pending

    def _reply(self) -> Any:
        assert self.sock is not None
        while (reply := self.reader.gets()) is False:
            data = self.sock.recv(4096)
            if not data:
                raise StreamClosed("Redis closed the connection while subscribing")
            self.reader.feed(data)
        return reply

    def _command(self, *args: str) -> Any:
        assert self.sock is not None
        self.sock.sendall(pack(*args))
        reply = self._reply()
        if isinstance(reply, hiredis.ReplyError):
            raise ConnectionRefusedError(f"Redis refused {args[0]}: {reply}")
        return reply

    def read(self, timeout: float) -> list[bytes]:
        """Wait up to ``timeout`` for data; return the complete messages' payloads."""
        assert self.sock is not None
        if self.sock.gettimeout() != timeout:
            self.sock.settimeout(timeout)  # a system call each time, even to the same value
        try:
            data = self.sock.recv(self.read_size)
        except TimeoutError:
            return []
        if not data:
            raise StreamClosed("Redis closed the event subscription")
        self.reader.feed(data)
        payloads: list[bytes] = []
        gets = self.reader.gets
        while (reply := gets()) is not False:
            # Nearly every reply is a message matched by the pattern: take its data inline.
            if type(reply) is list and len(reply) == 4 and reply[0] == b"pmessage":
                payloads.append(reply[3])
            elif (payload := _payload(reply)) is not None:
                payloads.append(payload)
        return payloads

    def close(self) -> None:
        """Close the connection."""
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None


def _payload(reply: Any) -> bytes | None:
    """The data of a pub/sub message reply; None for confirmations and other replies."""
    if type(reply) is list:
        kind = reply[0]
        if kind == b"pmessage":
            return bytes(reply[3])
        if kind == b"message":
            return bytes(reply[2])
        return None
    if isinstance(reply, hiredis.ReplyError):
        raise ConnectionRefusedError(f"Redis refused the subscription: {reply}")
    return None
