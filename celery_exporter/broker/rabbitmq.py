"""Queue depth on RabbitMQ: passive declares, and the management API for unacked messages.

A passive ``queue_declare`` gives ready messages and consumers (a queue that does not exist
reads 0). With ``--rabbitmq-management-url`` the management API's ``/api/queues/<vhost>``
gives unacknowledged messages. Credentials come from that URL, else from the broker URL; the
password is never logged. When the API fails, the unacknowledged series are left out and a
warning is logged; lengths are still reported.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from ..log import get_logger
from ..redact import mask_url
from .connection import Broker
from .measure import Measurement, SentLookup

log = get_logger(__name__)

#: Seconds the management API may take.
MANAGEMENT_TIMEOUT = 5.0


def vhost_of(url: str) -> str:
    """The virtual host of an AMQP URL, as kombu reads it ('/' when none is given)."""
    path = urlsplit(url.split(";")[0].strip()).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """The URL without user info, and its user name and password."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    bare = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return bare, user, password


class RabbitMQBackend:
    """Passive declares for ready messages and consumers; the management API for unacked."""

    def __init__(self, broker: Broker, management_url: str | None = None) -> None:
        self.broker = broker
        self.management_url = management_url
        self._api_error: str | None = None

    def measure(self, queues: Sequence[str], sent: SentLookup | None = None) -> Measurement:
        """Declare each queue passively on one connection; ask the API for unacked counts.

        RabbitMQ cannot show the oldest message without taking it: ``sent`` is not used.
        """
        out = Measurement(consumers={})
        assert out.consumers is not None
        with self.broker.connection() as conn:
            conn.ensure_connection(max_retries=1)
            channel = conn.channel()
            try:
                for queue in queues:
                    try:
                        _, ready, consumers = channel.queue_declare(queue=queue, passive=True)
                    except conn.channel_errors:
                        # A missing queue (404) closes the channel: report 0, open another.
                        channel = conn.channel()
                        ready = consumers = 0
                    out.length[queue] = int(ready)
                    out.consumers[queue] = int(consumers)
            finally:
                channel.close()
        if self.management_url:
            out.unacked = self._unacked(queues)
        return out

    def _unacked(self, queues: Sequence[str]) -> dict[str, int] | None:
        assert self.management_url is not None
        try:
            rows = self._api_queues()
        except Exception as exc:
            error = mask_url(f"{type(exc).__name__}: {exc}")
            if error != self._api_error:
                log.warning(
                    "rabbitmq_management_failed", url=mask_url(self.management_url), error=error
                )
            self._api_error = error
            return None
        self._api_error = None
        found = {
            str(row["name"]): int(row.get("messages_unacknowledged") or 0)
            for row in rows
            if isinstance(row, dict) and "name" in row
        }
        return {q: found.get(q, 0) for q in queues}

    def _api_queues(self) -> list[Any]:
        assert self.management_url is not None
        base, user, password = split_credentials(self.management_url.rstrip("/"))
        if user is None:
            _, user, password = split_credentials(self.broker.url.split(";")[0].strip())
        vhost = quote(vhost_of(self.broker.url), safe="")
        request = urllib.request.Request(
            f"{base}/api/queues/{vhost}?columns=name,messages_unacknowledged"
        )
        if user is not None:
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=MANAGEMENT_TIMEOUT) as response:
            rows = json.loads(response.read())
        if not isinstance(rows, list):
            raise ValueError("the management API did not answer a list of queues")
        return rows
