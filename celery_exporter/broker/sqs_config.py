"""Where the SQS API is and who asks it: :class:`SQSSettings`, read as kombu's SQS transport does.

It reads:

- ``--broker-url``: ``sqs://KEY:SECRET@`` gives the credentials (percent-decoded); without
  them boto3's default chain is used (``AWS_ACCESS_KEY_ID``, shared files, the instance or pod
  role). A host (and port), ``sqs://KEY:SECRET@HOST:PORT``, is the endpoint: ``http://`` unless
  ``is_secure`` is true, as kombu builds it.
- ``AWS_ENDPOINT_URL_SQS``, else ``AWS_ENDPOINT_URL``: the endpoint when the URL names no host
  (else AWS's endpoint for the region; botocore, and so kombu in the workers, reads them too).
- ``--broker-transport-option`` ``region`` (default: boto3's configured region, else
  ``us-east-1``), ``queue_name_prefix`` (put before every queue name, as kombu does),
  ``predefined_queues`` (JSON, ``{"celery": {"url": "...", "access_key_id": "...",
  "secret_access_key": "...", "region": "..."}}``, the last three optional) and ``is_secure``
  (https to the URL's host).
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3

from .connection import Broker

_TRANSLATE = {ord(c): "_" for c in string.punctuation if c not in "-_."} | {ord("."): "-"}


def entity_name(name: str) -> str:
    """The SQS name kombu gives a queue: dots become dashes, other punctuation underscores."""
    if name.endswith(".fifo"):
        return name[: -len(".fifo")].translate(_TRANSLATE) + ".fifo"
    return name.translate(_TRANSLATE)


def _flag(value: Any) -> bool | None:
    """A transport option read as a boolean (None when not given)."""
    if value is None or isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class SQSSettings:
    """Where the SQS API is and who asks it, read from the broker URL and transport options."""

    region: str
    prefix: str = ""
    predefined: Mapping[str, Mapping[str, Any]] | None = None
    endpoint: str | None = None
    use_ssl: bool = True
    access_key: str | None = None
    secret_key: str | None = None

    @classmethod
    def from_broker(cls, broker: Broker, environ: Mapping[str, str]) -> SQSSettings:
        """Read the settings as kombu's SQS transport does; ValueError on a bad option."""
        options = broker.transport_options
        parts = urlsplit(broker.url.split(";")[0].strip())
        secure = _flag(options.get("is_secure"))
        endpoint = None
        if parts.hostname:
            host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            port = f":{parts.port}" if parts.port else ""
            endpoint = f"{'https' if secure else 'http'}://{host}{port}"
        else:
            endpoint = environ.get("AWS_ENDPOINT_URL_SQS") or environ.get("AWS_ENDPOINT_URL")
        predefined = options.get("predefined_queues")
        if isinstance(predefined, str):
            predefined = json.loads(predefined)
        if predefined is not None and not (
            isinstance(predefined, Mapping)
            and all(isinstance(q, Mapping) and q.get("url") for q in predefined.values())
        ):
            raise ValueError('predefined_queues: expected {"queue": {"url": "https://..."}, ...}')
        region = options.get("region") or _configured_region()
        return cls(
            region=str(region or "us-east-1"),
            prefix=str(options.get("queue_name_prefix") or ""),
            predefined=predefined or None,
            endpoint=endpoint,
            use_ssl=True if secure is None else secure,
            access_key=unquote(parts.username) if parts.username else None,
            secret_key=unquote(parts.password) if parts.password else None,
        )

    def described(self) -> dict[str, str]:
        """What to log about the settings: no credential, only where they come from."""
        return {
            "region": self.region,
            "endpoint": self.endpoint or "AWS",
            "queue_name_prefix": self.prefix,
            "predefined_queues": ",".join(self.predefined or {}),
            "credentials": "broker URL" if self.access_key else "AWS default chain",
        }


def _configured_region() -> str | None:
    return boto3.session.Session().region_name  # type: ignore[no-any-return]
