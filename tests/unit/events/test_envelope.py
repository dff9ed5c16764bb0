"""Decoding and encoding Celery event messages."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from celery_exporter.events.envelope import (
    MALFORMED_REASONS,
    MalformedMessage,
    decode_body,
    decode_envelope,
)
from tests.support.events import encode_envelope

STARTED = {"type": "task-started", "uuid": "u-1", "hostname": "celery@w1", "timestamp": 1.5}
SUCCEEDED = {"type": "task-succeeded", "uuid": "u-1", "runtime": 0.25, "timestamp": 2.0}


def envelope(body: Any, **extra: Any) -> bytes:
    """A kombu Redis envelope around ``body`` (a str used as is), base64 unless told otherwise."""
    props: dict[str, Any] = {"body_encoding": extra.pop("body_encoding", "base64")}
    fields: dict[str, Any] = {
        "body": body,
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "properties": props,
    }
    fields.update(extra)
    return json.dumps(fields).encode()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def test_round_trip_single_event() -> None:
    """A single event encoded as an envelope decodes back to a one-element list."""
    data = encode_envelope(STARTED, routing_key="task.started")
    assert decode_envelope(data) == [STARTED]


def test_round_trip_multi_list() -> None:
    """A task.multi list encoded as an envelope decodes back to the same events in order."""
    data = encode_envelope([STARTED, SUCCEEDED], routing_key="task.multi")
    assert decode_envelope(data) == [STARTED, SUCCEEDED]


def test_encoded_envelope_looks_like_kombu_redis() -> None:
    """The envelope carries base64 JSON, the routing key, exchange and hostname header."""
    envelope_obj = json.loads(
        encode_envelope([STARTED], routing_key="task.multi", hostname="celery@w9")
    )
    assert envelope_obj["content-type"] == "application/json"
    assert envelope_obj["content-encoding"] == "utf-8"
    assert envelope_obj["headers"] == {"hostname": "celery@w9"}
    assert envelope_obj["properties"]["body_encoding"] == "base64"
    assert envelope_obj["properties"]["delivery_info"] == {
        "exchange": "celeryev",
        "routing_key": "task.multi",
    }
    assert json.loads(base64.b64decode(envelope_obj["body"])) == [STARTED]


def test_plain_body_without_body_encoding() -> None:
    """An envelope whose body is not base64-encoded is decoded as JSON text."""
    assert decode_envelope(envelope(json.dumps(STARTED), body_encoding=None)) == [STARTED]


def test_decode_body_accepts_str_and_bytes() -> None:
    """decode_body takes text with no content type, and UTF-8 bytes as application/json."""
    assert decode_body(json.dumps([STARTED]), None, None) == [STARTED]
    assert decode_body(json.dumps(STARTED).encode(), "application/json", "utf-8") == [STARTED]


BAD_INPUTS = [
    ("envelope", b"{not json", "envelope is not JSON"),
    ("envelope", b"[1, 2]", "envelope is not a JSON object"),
    ("envelope", json.dumps({"body": 5}).encode(), "envelope has no string 'body'"),
    (
        "envelope",
        json.dumps({"body": "{}", "content-type": 7}).encode(),
        "content-type and content-encoding must be strings",
    ),
    ("encoding", envelope("!!!not base64!!!"), "body is not valid base64"),
    ("encoding", envelope("e3!0="), "body is not valid base64"),
    ("encoding", envelope("e30=", body_encoding="gzip"), "unsupported body encoding 'gzip'"),
    ("encoding", envelope(b64(b'{"type": "\xff\xfe"}')), "body is not UTF-8"),
    (
        "encoding",
        envelope(b64(b"{}"), **{"content-encoding": "latin-1"}),
        "unsupported content encoding 'latin-1'",
    ),
    (
        "content_type",
        envelope(b64(b"{}"), **{"content-type": "application/x-python-serialize"}),
        "unsupported content type 'application/x-python-serialize'",
    ),
    ("json", envelope(b64(b"{nope")), None),
    ("schema", envelope(b64(b'[{"type": "task-started"}, 1]')), None),
    ("schema", envelope(b64(b'{"type": 5, "uuid": "u"}')), None),
    ("schema", envelope(b64(b'{"uuid": "u"}')), None),
    ("schema", envelope(b64(b"42")), "body is a JSON int, not an event"),
]


@pytest.mark.parametrize(("reason", "data", "detail"), BAD_INPUTS)
def test_malformed_reasons(reason: str, data: bytes, detail: str | None) -> None:
    """Each kind of bad input raises MalformedMessage with its own reason (and detail)."""
    with pytest.raises(MalformedMessage) as caught:
        decode_envelope(data)
    assert caught.value.reason == reason
    if detail is not None:
        assert caught.value.detail.startswith(detail)
    assert str(caught.value) == f"{reason}: {caught.value.detail}"


def test_every_reason_is_exercised() -> None:
    """The table of bad inputs covers every reason a MalformedMessage can carry."""
    assert {reason for reason, _, _ in BAD_INPUTS} == set(MALFORMED_REASONS)


def test_schema_detail_for_non_object_event() -> None:
    """A list holding a non-object is rejected with the schema detail naming 'type'."""
    with pytest.raises(MalformedMessage) as caught:
        decode_body(b'[{"type": "x"}, "str"]', "application/json", "utf-8")
    assert caught.value.reason == "schema"
    assert caught.value.detail == "an event is not an object with a string 'type'"


def test_deeply_nested_json_is_malformed_not_recursion_error() -> None:
    """A body nested deeper than the JSON parser's recursion limit is reported as json."""
    with pytest.raises(MalformedMessage) as caught:
        decode_body("[" * 200_000, None, None)
    assert caught.value.reason == "json"
