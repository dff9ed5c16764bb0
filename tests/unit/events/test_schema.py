"""The fast way from a Redis envelope to typed events, held to the checked way's results."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from celery_exporter.events.decode import decode
from celery_exporter.events.envelope import decode_envelope
from celery_exporter.events.fields import unix_time
from celery_exporter.events.schema import (
    CLASSES,
    Event,
    TaskFailed,
    TaskReceived,
    TaskSent,
    WorkerHeartbeat,
    read_envelopes,
)
from tests.support.events import (
    PRODUCER,
    T0,
    encode_envelope,
    failed,
    heartbeat,
    received,
    sent,
    started,
    succeeded,
)


def read_envelope(payload: bytes) -> list[Event] | None:
    """The events of one message, the fast way; None when it declines."""
    events: list[Event] = []
    return events if read_envelopes((payload,), events) == 1 else None


def checked(payload: bytes) -> list[Any]:
    """The events of a message, the checked way: parsed, then each checked in Python."""
    return [decode(event) for event in decode_envelope(payload)]


def test_celery_events_take_the_fast_way() -> None:
    """Events as Celery sends them are read straight into their classes, as the checked way does."""
    events = [
        sent("u1", queue="mail"), received("u1", eta="2023-11-14T22:13:30"), started("u1"),
        succeeded("u1", 0.5), failed("u2", "KeyError('k')"), heartbeat("celery@w1"),
    ]  # fmt: skip
    payload = encode_envelope(events, routing_key="task.multi")
    fast = read_envelope(payload)
    assert fast == checked(payload)
    assert fast is not None
    assert [type(event) for event in fast] == [
        TaskSent, TaskReceived, CLASSES["task-started"], CLASSES["task-succeeded"], TaskFailed,
        WorkerHeartbeat,
    ]  # fmt: skip
    assert isinstance(fast[1], TaskReceived)
    assert (fast[1].uuid, fast[1].timestamp) == ("u1", T0)
    assert fast[1].eta is not None
    assert unix_time(fast[1].eta) == 1_700_000_010.0
    assert isinstance(fast[4], TaskFailed)
    assert (fast[4].exception, fast[4].exception_repr) == ("KeyError", "KeyError('k')")
    single = encode_envelope(sent("u3", queue="q"), routing_key="task.sent")
    assert read_envelope(single) == checked(single) == [
        TaskSent(
            uuid="u3", name="app.add", hostname=PRODUCER, timestamp=T0, queue="q", retries=0,
            root_id="u3", args="(1, 2)", kwargs="{}", routing_key="q",
        )
    ]  # fmt: skip


def test_what_needs_correcting_takes_the_checked_way() -> None:
    """A field to correct, an unknown type or another envelope shape makes the fast way decline."""
    for event in (
        {**started("u1"), "name": "n" * 201},
        {**started("u1"), "timestamp": True},
        {**started("u1"), "uuid": ""},
        {**succeeded("u1", 0.5), "runtime": -1},
        {"type": "task-custom", "uuid": "u1"},
        {**heartbeat("celery@w1"), "active": -1},
    ):
        assert read_envelope(encode_envelope(event, routing_key="task")) is None
    assert read_envelope(b"not json") is None
    plain = encode_envelope(started("u1"), routing_key="task").replace(
        b'"body_encoding": "base64"', b'"body_encoding": "utf-8"'
    )
    assert read_envelope(plain) is None


def test_hostile_keys_cannot_set_computed_fields() -> None:
    """The exception class is always worked out, whatever keys an event has."""
    error = {**failed("u1", "KeyError('k')"), "~exception": "Forged"}
    fast = read_envelope(encode_envelope(error, routing_key="task"))
    assert fast is not None
    assert isinstance(fast[0], TaskFailed)
    assert fast[0].exception == "KeyError"


_FIELDS = (
    "uuid", "name", "hostname", "timestamp", "queue", "routing_key", "eta", "exception",
    "traceback", "runtime", "requeue", "current", "total", "message", "retries", "root_id",
    "parent_id", "args", "kwargs", "freq", "active", "processed", "loadavg", "sw_ident",
    "sw_ver", "sw_sys",
)  # fmt: skip
_NUMBERS = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 0.0, T0, 1e7, 1e11, 1e15, -1e15, 3600, 1e12, -1e12]),
)
_TEXTS = (
    "", "x" * 200, "x" * 201, "2023-11-14T22:13:30", "2023-11-14t22:13:30z", "2023-11-14",
    "2023-11-14T22:13:30.1234567+01:00", "KeyError('k')",
    "Traceback\nValueError: bad\n", "celery@w1",
)  # fmt: skip
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    _NUMBERS,
    st.text(max_size=3),
    st.sampled_from(_TEXTS),
    st.lists(_NUMBERS, max_size=4),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)
_EVENT = st.builds(
    lambda etype, fields: {"type": etype, **fields},
    st.sampled_from([*CLASSES, "task-custom"]),
    st.dictionaries(st.sampled_from(_FIELDS), _VALUES),
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(_EVENT, min_size=1, max_size=3))
def test_fast_way_gives_what_the_checked_way_gives(events: list[dict[str, Any]]) -> None:
    """Whatever the events, the fast way either declines or gives exactly the checked way's."""
    payload = encode_envelope(events, routing_key="task.multi")
    fast = read_envelope(payload)
    if fast is None:
        return
    slow = checked(payload)
    assert len(fast) == len(slow)
    # A JSON integer in a float field is a float the fast way, an int the checked way: equal.
    assert [type(event) for event in fast] == [type(event) for event in slow]
    assert fast == slow


_CELERY_EVENT = st.one_of(
    st.builds(sent, st.uuids().map(str), queue=st.sampled_from(["celery", "mail", None])),
    st.builds(received, st.uuids().map(str), eta=st.sampled_from([None, "2023-11-14T22:13:30"])),
    st.builds(started, st.uuids().map(str)),
    st.builds(succeeded, st.uuids().map(str), st.floats(min_value=0, max_value=1e6)),
    st.builds(failed, st.uuids().map(str), st.sampled_from(["KeyError('k')", "Boom()"])),
    st.builds(heartbeat, st.sampled_from(["celery@w1", "celery@w2"])),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(_CELERY_EVENT, min_size=1, max_size=4))
def test_celery_shaped_events_always_take_the_fast_way(events: list[dict[str, Any]]) -> None:
    """Every event as Celery sends it is read the fast way, equal to the checked way's."""
    payload = encode_envelope(events, routing_key="task.multi")
    fast = read_envelope(payload)
    assert fast is not None
    assert fast == checked(payload)


_EDGES: tuple[Any, ...] = (
    None, True, False, 0, 0.0, -0.0, -0.5, -1, 1, 2.5, T0, 1e7, 1e11, 1e12, -1e12, 1e15, -1e15, 3600,
    10**20, "", "x", "x" * 200, "x" * 201, "2023-11-14T22:13:30", "2023-11-14t22:13:30z",
    "2023-11-14", "2023-11-14T22:13:30.1234567", "KeyError('k')", [],
    [1, 2, 3], [1, "2", 3], [1e12, 0, 0], {}, {"a": 1},
)  # fmt: skip


def test_every_field_at_its_edges_gives_the_same_event_both_ways() -> None:
    """Each field of each event type, set to each edge value, decodes alike or is declined."""
    compared = 0
    for etype in CLASSES:
        base = {"type": etype, "uuid": "u1", "name": "app.add", "hostname": "celery@w1"}
        for field in _FIELDS:
            for value in _EDGES:
                payload = encode_envelope({**base, field: value}, routing_key="task")
                fast = read_envelope(payload)
                if fast is None:
                    continue
                slow = checked(payload)
                assert [type(e) for e in fast] == [type(e) for e in slow], (etype, field, value)
                assert fast == slow, (etype, field, value)
                compared += 1
    assert compared > 2000
