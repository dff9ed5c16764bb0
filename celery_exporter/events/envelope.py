"""Celery event messages on the wire: decoding what workers publish.

A Celery event message is a kombu message on the ``celeryev`` exchange whose body is one event
(a JSON object with a ``type`` field) or, for the ``*.multi`` routing keys used by workers with
an event loop, a JSON list of such objects. On Redis the whole kombu message travels as a JSON
envelope (``body``, ``content-type``, ``content-encoding``, ``properties.body_encoding``) on a
pub/sub channel; other transports hand the body over already unwrapped.

Decoding never raises anything but :class:`MalformedMessage`, whose ``reason`` is one of
:data:`MALFORMED_REASONS` and becomes the ``reason`` label of
``celery_exporter_events_malformed_total``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import sys
from typing import Any

import orjson

Event = dict[str, Any]

#: Every value the ``reason`` of a :class:`MalformedMessage` can take.
MALFORMED_REASONS = ("envelope", "content_type", "encoding", "json", "schema")

if sys.version_info >= (3, 11):
    #: Strict base64 straight from the str (no copy to bytes, no separate alphabet check).
    _b64decode = functools.partial(binascii.a2b_base64, strict_mode=True)
else:  # pragma: no cover - Python 3.10

    def _b64decode(data: str) -> bytes:
        return base64.b64decode(data, validate=True)


_JSON_TYPES = frozenset({"application/json", "application/x-json", "json"})
_ENCODINGS = frozenset({"utf-8", "utf8", "binary"})


class MalformedMessage(ValueError):
    """A message that is not a Celery event message."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def decode_body(
    body: bytes | str, content_type: str | None, content_encoding: str | None
) -> list[Event]:
    """Decode a kombu message body into the list of events it carries."""
    if content_type is not None and content_type not in _JSON_TYPES:
        raise MalformedMessage("content_type", f"unsupported content type {content_type[:64]!r}")
    if content_encoding is not None and content_encoding.lower() not in _ENCODINGS:
        raise MalformedMessage(
            "encoding", f"unsupported content encoding {content_encoding[:64]!r}"
        )
    return events_from_payload(_loads(body, "body"))


def _loads(data: bytes | str, what: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if "UTF-8" in str(exc) or "surrogates" in str(exc):
            raise MalformedMessage("encoding", f"{what} is not UTF-8") from None
        reason = "envelope" if what == "envelope" else "json"
        raise MalformedMessage(reason, f"{what} is not JSON: {str(exc)[:120]}") from None


def events_from_payload(payload: Any) -> list[Event]:
    """Check a decoded body and return its events (one object, or a list of objects)."""
    if type(payload) is dict:
        events = [payload]
    elif type(payload) is list:
        events = payload
    else:
        raise MalformedMessage("schema", f"body is a JSON {type(payload).__name__}, not an event")
    for event in events:
        if type(event) is not dict or type(event.get("type")) is not str:
            raise MalformedMessage("schema", "an event is not an object with a string 'type'")
    return events


def decode_envelope(data: bytes | str) -> list[Event]:
    """Decode a kombu Redis pub/sub envelope into the list of events its body carries."""
    try:
        # The shape every Celery worker and producer sends; anything else takes the long way,
        # which names what is wrong.
        envelope = orjson.loads(data)
        if (
            envelope["properties"]["body_encoding"] == "base64"
            and envelope["content-type"] == "application/json"
            and envelope["content-encoding"] == "utf-8"
        ):
            payload = orjson.loads(_b64decode(envelope["body"]))
        else:
            payload = None
    except Exception:
        payload = None
    if payload is None:
        return _decode_envelope_checked(data)
    return events_from_payload(payload)


def _decode_envelope_checked(data: bytes | str) -> list[Event]:
    envelope = _loads(data, "envelope")
    if not isinstance(envelope, dict):
        raise MalformedMessage("envelope", "envelope is not a JSON object")
    body = envelope.get("body")
    properties = envelope.get("properties")
    body_encoding = properties.get("body_encoding") if isinstance(properties, dict) else None
    content_type = envelope.get("content-type")
    content_encoding = envelope.get("content-encoding")
    if not isinstance(body, str):
        raise MalformedMessage("envelope", "envelope has no string 'body'")
    if not isinstance(content_type, (str, type(None))) or not isinstance(
        content_encoding, (str, type(None))
    ):
        raise MalformedMessage("envelope", "content-type and content-encoding must be strings")
    if body_encoding == "base64":
        try:
            raw: bytes | str = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise MalformedMessage("encoding", "body is not valid base64") from None
    elif body_encoding is None:
        raw = body
    else:
        raise MalformedMessage("encoding", f"unsupported body encoding {str(body_encoding)[:64]!r}")
    return decode_body(raw, content_type, content_encoding)
