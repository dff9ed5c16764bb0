"""Checking event objects into typed events: each field's type and range, and invalid events."""

from __future__ import annotations

from typing import Any

import pytest

from celery_exporter.events.decode import DECODERS, INVALID, decode
from celery_exporter.events.fields import unix_time
from celery_exporter.events.schema import (
    MAX_UUID_LENGTH,
    TaskEvent,
    TaskStarted,
    TaskWithEta,
    WorkerEvent,
    WorkerHeartbeat,
)

T0 = 1_700_000_000.0


def task(etype: str, **fields: Any) -> TaskEvent:
    """Decode a task event that must be valid."""
    event = decode({"type": etype, "uuid": "u1", **fields})
    assert isinstance(event, TaskEvent)
    assert event.type == etype
    return event


def worker(etype: str = "worker-heartbeat", **fields: Any) -> WorkerEvent:
    """Decode a worker event."""
    event = decode({"type": etype, **fields})
    assert isinstance(event, WorkerEvent)
    assert event.type == etype
    return event


def test_every_applied_type_has_a_decoder() -> None:
    """The state applies the ten task event types, task-progress and three worker event types."""
    assert sorted(DECODERS) == [
        "task-cancelled", "task-failed", "task-ignored", "task-progress", "task-received",
        "task-rejected", "task-retried", "task-revoked", "task-sent", "task-started",
        "task-succeeded", "worker-heartbeat", "worker-offline", "worker-online",
    ]  # fmt: skip


def test_celery_event_becomes_its_typed_event() -> None:
    """A task event as Celery sends it becomes its type's class with its values, the rest unset."""
    raw = {"type": "task-started", "uuid": "u1", "hostname": "celery@w1", "timestamp": T0}
    assert decode(raw) == TaskStarted(uuid="u1", hostname="celery@w1", timestamp=T0)
    heartbeat = decode({"type": "worker-heartbeat", "hostname": "celery@w1", "active": 1})
    assert heartbeat == WorkerHeartbeat(hostname="celery@w1", active=1)


def test_unknown_type_decodes_to_none() -> None:
    """An event type the state does not apply is left to be counted as 'other'."""
    assert decode({"type": "task-custom", "uuid": "u1"}) is None


@pytest.mark.parametrize(
    "uuid", [None, 5, "", "x" * (MAX_UUID_LENGTH + 1), ["u1"], {"u": 1}], ids=repr
)
def test_task_event_without_a_usable_uuid_is_invalid(uuid: Any) -> None:
    """A task event whose uuid is missing, not a string, empty or too long cannot be applied."""
    assert decode({"type": "task-started", "uuid": uuid}) is INVALID
    assert INVALID.reason == "schema"


def test_task_event_fields_as_celery_sends_them() -> None:
    """A well-formed task-received keeps its values, with the ETA as a Unix time."""
    event = task(
        "task-received",
        name="app.add",
        hostname="celery@w1",
        timestamp=T0,
        eta="2023-11-14T22:13:30+00:00",
        queue="mail",
    )
    assert (event.type, event.uuid, event.name, event.hostname) == (
        "task-received", "u1", "app.add", "celery@w1"
    )  # fmt: skip
    assert (event.timestamp, event.queue) == (T0, "mail")
    assert isinstance(event, TaskWithEta)
    assert event.eta is not None
    assert unix_time(event.eta) == 1_700_000_010.0


def test_wrong_typed_labels_become_strings() -> None:
    """Labels of any JSON type become strings: none is 'unknown', others their text, cut to 200."""
    event = task("task-started", name=None, hostname=7)
    assert (event.name, event.hostname) == ("unknown", "7")
    assert task("task-started", name="n" * 300).name == "n" * 200
    assert task("task-started", name="").name == "unknown"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(T0, T0), (1_700_000_000, T0), (-5, None), (0, None), (1e12, None), (float("nan"), None),
     (float("inf"), None), (True, None), ("x", None), (10**400, None)],
    ids=repr,
)  # fmt: skip
def test_timestamp_in_range_or_none(value: Any, expected: float | None) -> None:
    """Only a positive number before year 5138 is a timestamp; anything else means 'now'."""
    assert task("task-started", timestamp=value).timestamp == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.25, 0.25), (0, 0.0), (2, 2.0), (-1, None), (1e7, None), (float("nan"), None),
     (False, None), ("1", None)],
    ids=repr,
)  # fmt: skip
def test_runtime_in_range_or_none(value: Any, expected: float | None) -> None:
    """A task-succeeded runtime is a number from 0 up to 1e7 seconds, else unknown."""
    assert task("task-succeeded", runtime=value).runtime == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2023-11-14T22:13:30", 1_700_000_010.0), ("bad", None), (12, None), (None, None), ("", None)],
    ids=repr,
)
def test_eta_is_iso_time_naive_meaning_utc(value: Any, expected: float | None) -> None:
    """An ETA is an ISO 8601 time (naive means UTC); anything else is no ETA."""
    event = task("task-sent", eta=value)
    assert isinstance(event, TaskWithEta)
    assert (unix_time(event.eta) if event.eta is not None else None) == expected


def test_sent_queue_comes_from_queue_then_routing_key() -> None:
    """task-sent names its queue in 'queue', else in 'routing_key'; other types give their text."""
    assert task("task-sent", queue="a", routing_key="b").queue == "a"
    assert task("task-sent", routing_key="b").queue == "b"
    assert task("task-sent", queue=5).queue == "5"
    assert task("task-sent").queue is None


def test_worker_queue_field_must_be_a_string() -> None:
    """A worker-side task event's queue is used only when it is a non-empty string."""
    assert task("task-started", queue="q").queue == "q"
    assert task("task-started", queue=5).queue is None
    assert task("task-started", queue="").queue is None


def test_failure_exception_class_from_repr_or_traceback() -> None:
    """task-failed and task-retried carry the exception's class name, from its repr or traceback."""
    assert task("task-failed", exception="KeyError('k')").exception == "KeyError"
    hard = task(
        "task-failed",
        exception="ExceptionWithTraceback()",
        traceback="Traceback...\nbilliard.exceptions.TimeLimitExceeded: TimeLimitExceeded(1,)\n",
    )
    assert hard.exception == "TimeLimitExceeded"
    assert task("task-retried", exception=None, traceback=7).exception == "unknown"


def test_requeue_only_when_true() -> None:
    """A rejected task goes back to its queue only when requeue is the JSON value true."""
    assert task("task-rejected", requeue=True).requeue is True
    assert task("task-rejected", requeue="true").requeue is False
    assert task("task-rejected").requeue is False


def test_heartbeat_fields_checked() -> None:
    """Heartbeat numbers of the right type and range are kept; the rest are None."""
    good = worker(
        hostname="celery@w1", freq=2, active=3, processed=10, loadavg=[0.5, 0.25, 0.1],
        sw_ident="py-celery", sw_ver="5.7.0", sw_sys="Linux",
    )  # fmt: skip
    assert (good.hostname, good.freq, good.active, good.processed) == (
        "celery@w1",
        2.0,
        3,
        10,
    )
    assert good.loadavg == (0.5, 0.25, 0.1)
    assert (good.sw_ident, good.sw_ver, good.sw_sys) == ("py-celery", "5.7.0", "Linux")
    bad = worker(freq=3600, active=-1, processed=True, loadavg=[1, "2", 3], sw_ident=5, sw_ver=None)
    assert (bad.hostname, bad.freq, bad.active, bad.processed, bad.loadavg) == (
        "unknown", None, None, None, None
    )  # fmt: skip
    assert (bad.sw_ident, bad.sw_ver, bad.sw_sys) == (None, None, None)
    assert worker(loadavg=[1e12, 0, 0]).loadavg is None
