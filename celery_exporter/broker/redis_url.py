"""The one reading of a Redis broker URL and its TLS options, for pub/sub and redis-py alike.

The URL gives host, port, database, user name and password (``sentinel://`` URLs, several
separated by ``;``, give the sentinels). ``rediss://`` reads these ``--broker-ssl-option`` keys:

- ``ssl_cert_reqs`` (default ``CERT_REQUIRED``; ``CERT_OPTIONAL``, ``CERT_NONE``, or the
  words ``required``, ``optional``, ``none``): whether the server's certificate is checked.
- ``ssl_ca_certs``: the CA bundle to check it against (default: the system's).
- ``ssl_certfile``, ``ssl_keyfile``: a client certificate and its key.
- ``ssl_check_hostname`` (default true, as in redis-py; always false with ``CERT_NONE``):
  whether the certificate must name the host in the URL.

:func:`cert_reqs` and :func:`check_hostname` are also what ``--broker-ssl-option`` is checked
with at start, so a value these cannot read stops the exporter before it connects.

The transport options ``socket_timeout`` and ``socket_connect_timeout`` (default 5 s) and, for
Sentinel, ``master_name`` and ``sentinel_kwargs`` are read by :func:`client`.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
#: Seconds per command and per connection attempt, unless the transport options say otherwise.
DEFAULT_TIMEOUT = 5.0
_CERT_REQS = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}
#: Option keys naming a certificate requirement: redis-py's, and py-amqp's for ``amqps://``.
CERT_REQS_KEYS = ("ssl_cert_reqs", "cert_reqs")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def cert_reqs(value: Any, key: str = "ssl_cert_reqs") -> ssl.VerifyMode:
    """A certificate requirement: an ssl constant, its name, or required, optional or none."""
    if isinstance(value, str):
        word = value.strip().lower().removeprefix("cert_")
        if word in _CERT_REQS:
            return _CERT_REQS[word]
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            return ssl.VerifyMode(value)
        except ValueError:
            pass
    raise ValueError(
        f"{key} must be CERT_REQUIRED, CERT_OPTIONAL or CERT_NONE (or required, optional, none)"
    )


def check_hostname(value: Any) -> bool:
    """An ``ssl_check_hostname`` value: true or false (also yes/no, on/off, 1/0)."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError("ssl_check_hostname must be true or false")


@dataclass(frozen=True)
class RedisURL:
    """What a Redis broker URL says: scheme, address, database and credentials."""

    scheme: str
    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    #: The sentinels' addresses, for ``sentinel://``.
    sentinels: tuple[tuple[str, int], ...] = ()

    @property
    def tls(self) -> bool:
        """Whether the connection is wrapped in TLS (``rediss://``)."""
        return self.scheme == "rediss"


def parse(url: str) -> RedisURL:
    """Read a ``redis://``, ``rediss://`` or ``sentinel://`` URL (the first of several)."""
    parts_list = [part.strip() for part in url.split(";") if part.strip()]
    first = urlsplit(parts_list[0])
    path = first.path.strip("/")
    try:
        db = int(path) if path else 0
    except ValueError:
        raise ValueError(f"database number in the broker URL is not a number: {path!r}") from None
    sentinels: tuple[tuple[str, int], ...] = ()
    if first.scheme == "sentinel":
        sentinels = tuple(
            (where.hostname or "localhost", where.port or DEFAULT_SENTINEL_PORT)
            for where in map(urlsplit, parts_list)
        )
    return RedisURL(
        scheme=first.scheme,
        host=first.hostname or "localhost",
        port=first.port or DEFAULT_PORT,
        db=db,
        username=unquote(first.username) if first.username else None,
        password=unquote(first.password) if first.password else None,
        sentinels=sentinels,
    )


@dataclass(frozen=True)
class TlsOptions:
    """``--broker-ssl-option`` values for Redis, with their defaults filled in."""

    cert_reqs: ssl.VerifyMode = ssl.CERT_REQUIRED
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    check_hostname: bool = True

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> TlsOptions:
        """Read the ``ssl_*`` keys; a value that cannot be read raises ValueError."""
        mode = cert_reqs(options.get("ssl_cert_reqs", ssl.CERT_REQUIRED))
        check = check_hostname(options.get("ssl_check_hostname", True))
        return cls(
            cert_reqs=mode,
            ca_certs=_path(options.get("ssl_ca_certs")),
            certfile=_path(options.get("ssl_certfile")),
            keyfile=_path(options.get("ssl_keyfile")),
            check_hostname=check and mode != ssl.CERT_NONE,
        )

    def context(self) -> ssl.SSLContext:
        """An SSL context that checks the server as these options say."""
        context = ssl.create_default_context(cafile=self.ca_certs)
        if self.certfile:
            context.load_cert_chain(self.certfile, self.keyfile)
        context.check_hostname = self.check_hostname
        context.verify_mode = self.cert_reqs
        return context

    def redis_kwargs(self) -> dict[str, Any]:
        """The same options as redis-py's connection arguments."""
        return {
            "ssl": True,
            "ssl_cert_reqs": self.cert_reqs,
            "ssl_ca_certs": self.ca_certs,
            "ssl_certfile": self.certfile,
            "ssl_keyfile": self.keyfile,
            "ssl_check_hostname": self.check_hostname,
        }


def _path(value: Any) -> str | None:
    return str(value) if value else None


def timeouts(transport_options: Mapping[str, Any]) -> dict[str, float]:
    """redis-py's socket timeouts from the transport options."""
    return {
        "socket_timeout": float(transport_options.get("socket_timeout", DEFAULT_TIMEOUT)),
        "socket_connect_timeout": float(
            transport_options.get("socket_connect_timeout", DEFAULT_TIMEOUT)
        ),
    }


def client(
    url: str, transport_options: Mapping[str, Any], ssl_options: Mapping[str, Any], name: str
) -> Any:
    """A redis-py client for the broker (for Sentinel, of the current master)."""
    import redis
    import redis.sentinel

    where = parse(url)
    limits = timeouts(transport_options)
    if where.scheme == "sentinel":
        master = transport_options.get("master_name")
        if not master:
            raise ValueError("a sentinel:// broker needs --broker-transport-option master_name=")
        sentinel = redis.sentinel.Sentinel(
            list(where.sentinels),
            sentinel_kwargs=transport_options.get("sentinel_kwargs") or {},
            **limits,
        )
        return sentinel.master_for(
            str(master), db=where.db, username=where.username, password=where.password, **limits
        )
    tls = TlsOptions.from_options(ssl_options).redis_kwargs() if where.tls else {}
    return redis.Redis(
        host=where.host,
        port=where.port,
        db=where.db,
        username=where.username,
        password=where.password,
        client_name=name,
        **limits,
        **tls,
    )
