"""Where the broker is and how to reach it: kombu connections and the one Celery app.

Reads ``--broker-url``, ``--broker-transport-option`` and ``--broker-ssl-option``; kombu is
given the transport options with 5 s connect and 10 s socket timeouts unless they say otherwise.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..redact import mask_url

#: Words in a broker's refusal that mean the credentials are wrong (Redis, RabbitMQ).
AUTH_FAILURE_MARKERS = ("WRONGPASS", "NOAUTH", "invalid password", "ACCESS_REFUSED",
                        "AccessRefused", "authentication failed", "Authentication failed")  # fmt: skip


@dataclass(frozen=True)
class Broker:
    """Where and how to connect: URL, kombu transport options and TLS options."""

    url: str
    transport_options: Mapping[str, Any] = field(default_factory=dict)
    ssl_options: Mapping[str, Any] = field(default_factory=dict)

    def connection(self) -> Any:
        """Return a new, unconnected kombu connection."""
        from kombu import Connection

        options = {"socket_connect_timeout": 5, "socket_timeout": 10, **self.transport_options}
        return Connection(
            self.url,
            transport_options=options,
            ssl=dict(self.ssl_options) or None,
            connect_timeout=5,
            heartbeat=0,
        )

    @property
    def scheme(self) -> str:
        """The transport of the (first) URL, without a ``+`` driver prefix: redis, amqp, ..."""
        return self.url.split("://", 1)[0].split("+")[-1]

    @property
    def safe_url(self) -> str:
        """The URL with its password masked, for logs."""
        return mask_url(self.url)


def celery_app(broker: Broker, name: str) -> Any:
    """A Celery app for broadcasts (``enable_events``, ``inspect``) that is never the current one."""
    from celery import Celery

    app = Celery(name, broker=broker.url, set_as_current=False)
    app.conf.broker_transport_options = dict(broker.transport_options)
    app.conf.broker_use_ssl = dict(broker.ssl_options) or None
    return app


def is_tls_failure(exc: BaseException) -> bool:
    """Whether a connection failed because the broker's certificate was refused."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


def is_auth_failure(error: str) -> bool:
    """Whether a connection error says the broker refused the credentials."""
    return any(marker in error for marker in AUTH_FAILURE_MARKERS)
