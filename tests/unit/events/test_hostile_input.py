"""Hostile and broken input, property-based: the decoder, the consumer's ingest and the handlers.

Hypothesis runs derandomized with a bounded number of examples, so the suite stays fast and
every CI run tries the same inputs.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from celery_exporter.broker import Broker
from celery_exporter.collectors.events import EventCollector
from celery_exporter.events.consumer import EventConsumer
from celery_exporter.events.envelope import (
    MALFORMED_REASONS,
    MalformedMessage,
    decode_body,
    decode_envelope,
)
from celery_exporter.events.fields import MAX_VALUE_LENGTH
from celery_exporter.state import ClusterState, Settings
from celery_exporter.state.labels import OVERFLOW
from celery_exporter.web.health import Health
from tests.support import parse_metrics
from tests.support.events import encode_envelope, failed, heartbeat, received, started, succeeded

FAST = settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TASK_TYPES = ("task-sent", "task-received", "task-started", "task-succeeded", "task-failed",
              "task-retried", "task-revoked", "task-rejected", "task-cancelled")  # fmt: skip
EVENT_TYPES = (*TASK_TYPES, "worker-online", "worker-heartbeat", "worker-offline")
#: Task event types the state applies (the in-worker exporter also sends task-ignored).
APPLIED_TASK_TYPES = frozenset((*TASK_TYPES, "task-ignored"))


def consumer(state: ClusterState) -> EventConsumer:
    """An event consumer that is never started: only its ingest path is used."""
    return EventConsumer(Broker("redis://127.0.0.1:1/0"), state, Health(), enable_events=False)


def envelope(body: bytes, content_type: Any = "application/json", encoding: Any = "utf-8") -> bytes:
    """A kombu Redis envelope around ``body`` (base64), with the given content headers."""
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-type": content_type,
            "content-encoding": encoding,
            "properties": {"body_encoding": "base64"},
        }
    ).encode()


def render(state: ClusterState) -> str:
    """Render the state's families as /metrics would."""
    registry = CollectorRegistry()
    registry.register(EventCollector(state))
    return generate_latest(registry).decode()


# -- hostile values ---------------------------------------------------------------------------

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["", "x" * 5000, "\udcff", "a\x00b", "☃" * 300]),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
timestamps = st.one_of(
    st.sampled_from([0, -1, 1e300, -1e300, 1e11, 2**70, float("nan"), float("inf"), 1.7e9]),
    json_value,
)
runtimes = st.one_of(
    st.sampled_from([float("nan"), -1.0, 1e308, float("inf"), -0.0, 2**80, True, "3.5"]),
    json_value,
)


def unusable_uuid(event: dict[str, Any]) -> bool:
    """Whether an event is a task event the state applies whose uuid cannot identify a task."""
    uuid = event.get("uuid")
    usable = isinstance(uuid, str) and 0 < len(uuid) <= 200
    return event["type"] in APPLIED_TASK_TYPES and not usable


@st.composite
def hostile_event(draw: st.DrawFn) -> dict[str, Any]:
    """An event dict with a string type (known or not) and hostile values in every field."""
    event: dict[str, Any] = {"type": draw(st.sampled_from(EVENT_TYPES) | st.text(max_size=20))}
    fields = {
        "uuid": st.one_of(st.text(max_size=10), st.just("u" * 500), json_value),
        "name": st.one_of(st.text(max_size=300), json_value),
        "hostname": st.one_of(st.text(max_size=300), json_value),
        "queue": json_value,
        "routing_key": json_value,
        "exception": st.one_of(st.text(max_size=300), json_value),
        "traceback": st.one_of(st.text(max_size=300), json_value),
        "runtime": runtimes,
        "timestamp": timestamps,
        "eta": st.one_of(st.sampled_from(["9999-12-31T23:59:59", "0001-01-01", "bad"]), json_value),
        "freq": runtimes,
        "active": json_value,
        "processed": json_value,
        "retries": json_value,
        "requeue": json_value,
        "loadavg": json_value,
    }
    for key in draw(st.lists(st.sampled_from(sorted(fields)), unique=True, max_size=len(fields))):
        event[key] = draw(fields[key])
    return event


@FAST
@given(st.lists(hostile_event(), min_size=1, max_size=30))
def test_handlers_never_raise_and_render(events: list[dict[str, Any]]) -> None:
    """Any events with a string type are applied or counted malformed, no handler raises, and /metrics renders."""
    state = ClusterState(Settings(max_task_names=3, max_exceptions=3, max_queues=3, max_workers=3))
    state.handle_batch(events)
    for event in events:
        state.handle(event)
    text = render(state)
    assert "celery_exporter_events_total" in text
    snap = state.snapshot()
    assert sum(snap.events.values()) == 2 * len(events)
    assert state.errors.counts() == {}
    unusable = sum(1 for event in events if unusable_uuid(event))
    assert snap.malformed == ({"schema": 2 * unusable} if unusable else {})
    for kind, series in snap.counters.items():
        for key in series:
            assert all(isinstance(v, str) and len(v) <= MAX_VALUE_LENGTH for v in key), (kind, key)
    handlers = state.handlers
    for cap in (handlers.names, handlers.exceptions, handlers.queues, state.workers.hostnames):
        assert len(cap.seen) <= 3
    assert len(snap.workers) <= 4


@FAST
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_decode_envelope_raises_only_malformed(data: bytes) -> None:
    """Arbitrary bytes either decode into events with a string type or raise MalformedMessage."""
    try:
        events = decode_envelope(data)
    except MalformedMessage as exc:
        assert exc.reason in MALFORMED_REASONS
    else:
        assert all(isinstance(e, dict) and isinstance(e["type"], str) for e in events)


@FAST
@given(
    json_value,
    st.one_of(st.none(), st.text(max_size=20), st.sampled_from(["application/json"])),
    st.one_of(st.none(), st.text(max_size=20), st.sampled_from(["utf-8", "binary"])),
)
def test_decode_body_raises_only_malformed(body: Any, ctype: str | None, enc: str | None) -> None:
    """Any JSON value with any content headers decodes or raises MalformedMessage."""
    try:
        raw = json.dumps(body, allow_nan=True)
    except ValueError:
        return
    try:
        events = decode_body(raw.encode(), ctype, enc)
    except MalformedMessage as exc:
        assert exc.reason in MALFORMED_REASONS
    else:
        assert all(isinstance(e, dict) and isinstance(e["type"], str) for e in events)


# -- known garbage, counted exactly by reason ------------------------------------------------

GARBAGE: dict[str, Callable[[Any], bytes]] = {
    "envelope": lambda t: b"{not json" + str(t).encode(),
    "content_type": lambda t: envelope(b'{"type":"task-sent"}', content_type=f"x-{t}"),
    "encoding": lambda t: envelope(b'{"type":"t", "x":"\xff\xfe"}'),
    "json": lambda t: envelope(b"[" * 5000 + str(t).encode()),
    "schema": lambda t: envelope(json.dumps([{"type": "task-sent"}, t]).encode()),
}


@st.composite
def garbage(draw: st.DrawFn) -> tuple[str, bytes]:
    """One bad Redis envelope and the reason it must be counted under."""
    reason = draw(st.sampled_from(sorted(GARBAGE)))
    payload = GARBAGE[reason](draw(st.integers(0, 9) | st.text(max_size=5)))
    if reason == "encoding" and draw(st.booleans()):
        # Invalid base64, or an unknown body encoding, are encoding faults too.
        payload = json.dumps(
            {"body": "***", "content-type": "application/json",
             "properties": {"body_encoding": draw(st.sampled_from(["base64", "gzip"]))}}
        ).encode()  # fmt: skip
    return reason, payload


def lifecycle(i: int) -> list[bytes]:
    """The four envelopes of one task that succeeds (with a worker heartbeat)."""
    uuid = f"task-{i}"
    return [
        encode_envelope(received(uuid, name="app.real"), routing_key="task.received"),
        encode_envelope([started(uuid), heartbeat()], routing_key="task.multi"),
        encode_envelope(succeeded(uuid, runtime=0.5), routing_key="task.succeeded"),
    ]


@FAST
@given(st.lists(garbage(), max_size=25), st.integers(1, 8), st.randoms(use_true_random=False))
def test_garbage_counted_by_reason_real_events_exact(
    bad: list[tuple[str, bytes]], tasks: int, rng: Any
) -> None:
    """Garbage between real envelopes is counted exactly by reason; the real tasks count exactly."""
    good = [lifecycle(i) for i in range(tasks)]
    stream: list[bytes] = [p for _, p in bad]
    # Keep each task's envelopes in order while shuffling garbage between them.
    for envelopes in good:
        positions = sorted(rng.randint(0, len(stream)) for _ in envelopes)
        for offset, (pos, payload) in enumerate(zip(positions, envelopes, strict=True)):
            stream.insert(pos + offset, payload)
    state = ClusterState()
    ingest = consumer(state)
    for start in range(0, len(stream), 3):
        ingest._ingest_envelopes(stream[start : start + 3])
    snap = state.snapshot()
    expected: dict[str, int] = {}
    for reason, _ in bad:
        expected[reason] = expected.get(reason, 0) + 1
    assert snap.malformed == expected
    assert snap.counters["succeeded"] == {("app.real", "celery"): tasks}
    assert snap.counters["started"] == {("app.real", "celery"): tasks}
    assert snap.tracked_tasks == 0


@FAST
@given(
    st.lists(
        st.one_of(
            st.tuples(st.one_of(st.none(), st.text(max_size=15)), st.binary(max_size=40)),
            st.tuples(st.just("application/json"), st.binary(max_size=40)),
        ),
        max_size=20,
    )
)
def test_kombu_path_never_raises(messages: list[tuple[str | None, bytes]]) -> None:
    """The kombu on_message path counts every undecodable body and never raises."""

    class Message:
        def __init__(self, ctype: str | None, body: bytes) -> None:
            self.body, self.content_type, self.content_encoding = body, ctype, "utf-8"

    state = ClusterState()
    ingest = consumer(state)
    bad = 0
    for ctype, body in messages:
        try:
            decode_body(body, ctype, "utf-8")
        except MalformedMessage:
            bad += 1
        ingest._on_message(Message(ctype, body))
    assert sum(state.snapshot().malformed.values()) >= bad


def test_each_hostile_shape_counted() -> None:
    """Each named kind of hostile message is counted under its reason, none raises."""
    cases = [
        (b"", "envelope"),
        (b"[1, 2]", "envelope"),
        (json.dumps({"body": 5}).encode(), "envelope"),
        (json.dumps({"body": "e30=", "content-type": 7}).encode(), "envelope"),
        (envelope(b"{}", content_type="application/x-python-serialize"), "content_type"),
        (envelope(b"{}", encoding="zlib"), "encoding"),
        (envelope(b"\xc3\x28"), "encoding"),
        (envelope(b'{"type": "task-sent"'), "json"),
        (envelope(b"[" * 100_000), "json"),
        (envelope(b"42"), "schema"),
        (envelope(b'[{"type": "task-sent"}, 1, "x", null]'), "schema"),
        (envelope(b'{"type": 5}'), "schema"),
        (envelope(b'{"no": "type"}'), "schema"),
    ]
    state = ClusterState()
    ingest = consumer(state)
    for payload, _ in cases:
        ingest._ingest_envelopes([payload])
    expected: dict[str, int] = {}
    for _, reason in cases:
        expected[reason] = expected.get(reason, 0) + 1
    assert state.snapshot().malformed == expected


def test_task_events_without_usable_uuid_are_schema_and_batch_goes_on() -> None:
    """Task events whose uuid is missing, not text or too long count as schema; the rest counts."""
    state = ClusterState()
    bad = [
        {"type": "task-received", "name": "x"},
        {"type": "task-received", "uuid": 7},
        {"type": "task-received", "uuid": "u" * 201},
        {"type": "task-succeeded", "uuid": ["a"]},
    ]
    state.handle_batch([*bad, received("ok"), started("ok"), succeeded("ok", runtime=1.0)])
    snap = state.snapshot()
    assert snap.malformed == {"schema": 4}
    assert snap.counters["succeeded"] == {("app.add", "celery"): 1}


def test_absurd_runtimes_and_timestamps_observe_nothing_absurd() -> None:
    """NaN, negative, huge and non-number runtimes give way to event times; far timestamps do no harm."""
    state = ClusterState()
    runtimes = [float("nan"), -1.0, 1e308, float("inf"), "3", True, None, 2**80]
    for i, runtime in enumerate(runtimes):
        uuid = f"r{i}"
        at = [0.0, -5.0, 1e300, 4e10, 1.7e9, float("nan"), 2**70, 1e11][i]
        state.handle_batch(
            [received(uuid, at=at), started(uuid, at=at), succeeded(uuid, runtime, at=at)]
        )
    snap = state.snapshot()
    assert snap.counters["succeeded"] == {("app.add", "celery"): len(runtimes)}
    histogram = snap.runtime.get(("app.add", "celery", "succeeded"))
    # The absurd runtime is ignored and the started-to-succeeded time (0 here) observed instead.
    assert histogram is not None
    assert (histogram.counts[0], sum(histogram.counts), histogram.total) == (8, 8, 0.0)
    samples = parse_metrics(render(state))
    assert all(math.isfinite(v) for v in samples.values())
    assert snap.malformed == {}


# -- caps ------------------------------------------------------------------------------------


@FAST
@given(st.lists(st.text(min_size=1, max_size=50), min_size=1, max_size=200), st.integers(1, 10))
def test_caps_hold_for_any_names(names: list[str], cap: int) -> None:
    """However many distinct names, hosts and exceptions arrive, series stay within cap + other."""
    state = ClusterState(
        Settings(max_task_names=cap, max_exceptions=cap, max_workers=cap, worker_label=True)
    )
    for i, name in enumerate(names):
        state.handle_batch(
            [
                received(f"t{i}", name=name, host=f"{name}@h"),
                failed(f"t{i}", f"E{name}('x')", host=f"{name}@h"),
            ]
        )
    snap = state.snapshot()
    labels = {key[0] for key in snap.counters["received"]}
    hosts = {key[2] for key in snap.counters["received"]}
    exceptions = {key[3] for key in snap.counters["failed"]}
    distinct = len(dict.fromkeys(names))
    assert len(labels) == min(distinct, cap) + (distinct > cap)
    assert len(hosts) <= cap + 1
    assert len(exceptions) <= cap + 1
    assert len(snap.workers) <= cap + 1
    assert sum(snap.counters["received"].values()) == len(names)
    if distinct > cap:
        assert OVERFLOW in labels
        assert snap.overflow["name"] == sum(1 for n in names if n not in state.handlers.names.seen)


def test_flood_of_distinct_values_stays_under_default_caps() -> None:
    """20 000 distinct task names, exception strings and hostnames: the default caps hold exactly."""
    state = ClusterState(Settings(worker_label=True))
    flood = 20_000
    for i in range(flood):
        host = f"celery@host-{i}"
        state.handle_batch(
            [
                received(f"t{i}", name=f"tasks.n{i}", host=host),
                failed(f"t{i}", f"Err{i}('boom {i}')", host=host),
            ]
        )
    snap = state.snapshot()
    assert len({key[0] for key in snap.counters["received"]}) == 1000 + 1
    assert len({key[3] for key in snap.counters["failed"]}) == 200 + 1
    assert len(snap.workers) == 1000 + 1
    # Names: the first 1000 are admitted; each later task overflows once (its received).
    assert snap.overflow["name"] == flood - 1000
    assert snap.overflow["exception"] == flood - 200
    assert snap.overflow["hostname"] >= flood - 1000
    assert snap.counters["received"][("other", "celery", "other")] == flood - 1000
