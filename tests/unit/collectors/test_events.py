"""Metric families rendered from the state: a byte-for-byte golden file and a few exact checks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from celery_exporter.collectors.base import Collectors
from celery_exporter.collectors.events import EventCollector
from celery_exporter.collectors.exporter import HealthCollector
from celery_exporter.internal import InternalErrors
from celery_exporter.state import ClusterState, Settings
from celery_exporter.web import exposition
from celery_exporter.web.health import Health
from tests.support import ManualClock, parse_metrics
from tests.support.events import HARD_LIMIT_TRACEBACK, PRODUCER, T0, W1, W2, iso

GOLDEN = Path(__file__).resolve().parents[2] / "golden" / "metrics.txt"
W3, W4 = "celery@w3", "celery@w4"
BUILD = {
    "version": "0.1.0",
    "celery_version": "5.7.0",
    "kombu_version": "5.7.0",
    "python_version": "3.11.7",
}


def task(etype: str, uuid: str, at: float, **fields: Any) -> dict[str, Any]:
    """A task event with the fields every task event has."""
    return {"type": f"task-{etype}", "uuid": uuid, "timestamp": at, "utcoffset": 0, **fields}


def sent(uuid: str, name: str, queue: str, at: float) -> dict[str, Any]:
    return task(
        "sent", uuid, at, name=name, queue=queue, routing_key=queue, exchange="", args="()",
        kwargs="{}", retries=0, eta=None, expires=None, hostname=PRODUCER, pid=4242,
    )  # fmt: skip


def received(uuid: str, name: str, host: str, at: float, **extra: Any) -> dict[str, Any]:
    fields = {"args": "()", "kwargs": "{}", "retries": 0, "eta": None, **extra}
    return task("received", uuid, at, name=name, hostname=host, **fields)


def worker(kind: str, host: str, at: float, **fields: Any) -> dict[str, Any]:
    return {
        "type": f"worker-{kind}", "hostname": host, "timestamp": at, "freq": 2.0,
        "sw_ident": "py-celery", "sw_ver": "5.7.0", "sw_sys": "Linux", "utcoffset": 0,
        **fields,
    }  # fmt: skip


def replay() -> tuple[CollectorRegistry, ClusterState, ManualClock]:
    """Run a scripted cluster through every family and return a registry over it at T0+60."""
    clock = ManualClock(T0)
    state = ClusterState(
        Settings(runtime_buckets=(0.1, 1.0, 10.0), wait_buckets=(1.0, 10.0), max_task_names=5),
        clock=clock,
    )
    health = Health()
    health.connected()
    health.disconnected("broker connection failed: ConnectionError: boom")
    health.connected()

    def at(ts: float, *events: dict[str, Any]) -> None:
        clock.now = ts
        state.handle_batch(list(events))

    load = {"active": 0, "processed": 0}
    at(
        T0,
        worker("online", W1, T0, loadavg=[0.5, 0.25, 0.1], **load),
        worker("online", W2, T0, loadavg=[1.0, 0.75, 0.5], **load),
        worker("online", W3, T0, loadavg=[0.0, 0.0, 0.0], **load),
        worker("online", W4, T0, loadavg=[0.0, 0.0, 0.0], **load),
    )
    # a1: sent, received, started, succeeded (runtime 0.3; queue wait 1.5; prefetch wait 1.0)
    at(T0, sent("a1", "app.add", "celery", T0))
    at(
        T0 + 1.8,
        received("a1", "app.add", W1, T0 + 0.5),
        task("started", "a1", T0 + 1.5, hostname=W1),
        task("succeeded", "a1", T0 + 1.8, hostname=W1, runtime=0.3, result="3"),
    )
    # f1: fails with ValueError after 0.0625 s
    at(
        T0 + 2.0625,
        received("f1", "app.fail", W1, T0 + 2),
        task("started", "f1", T0 + 2, hostname=W1),
        task("failed", "f1", T0 + 2.0625, hostname=W1, exception="ValueError('bad')",
             traceback="Traceback (most recent call last):\nValueError: bad\n"),
    )  # fmt: skip
    # h1: hard time limit after 1 s, reported twice
    at(
        T0 + 4,
        received("h1", "app.slow", W2, T0 + 3),
        task("started", "h1", T0 + 3, hostname=W2),
        task("failed", "h1", T0 + 4, hostname=W2, exception="ExceptionWithTraceback()",
             traceback=HARD_LIMIT_TRACEBACK),
        task("failed", "h1", T0 + 4, hostname=W2, exception="ExceptionWithTraceback()",
             traceback=HARD_LIMIT_TRACEBACK),
    )  # fmt: skip
    # s1: soft time limit after 0.5 s
    at(
        T0 + 5.5,
        received("s1", "app.slow", W2, T0 + 5),
        task("started", "s1", T0 + 5, hostname=W2),
        task("failed", "s1", T0 + 5.5, hostname=W2, exception="SoftTimeLimitExceeded()",
             traceback="Traceback ...\nbilliard.exceptions.SoftTimeLimitExceeded: SoftTimeLimitExceeded()\n"),
    )  # fmt: skip
    # r1: retried on w1, then runs on w2 at its ETA for 12 s
    at(T0 + 6, sent("r1", "app.add", "celery", T0 + 6))
    at(
        T0 + 6.75,
        received("r1", "app.add", W1, T0 + 6.25),
        task("started", "r1", T0 + 6.5, hostname=W1),
        task("retried", "r1", T0 + 6.75, hostname=W1, exception="ConnectionError('refused')",
             traceback="Traceback ...\nConnectionError: refused\n"),
    )  # fmt: skip
    at(T0 + 7, received("r1", "app.add", W2, T0 + 7, retries=1, eta=iso(T0 + 9)))
    at(T0 + 9, task("started", "r1", T0 + 9, hostname=W2))
    at(T0 + 21, task("succeeded", "r1", T0 + 21, hostname=W2, runtime=12.0, result="None"))
    # v1: revoked while reserved
    at(
        T0 + 23,
        received("v1", "app.add", W1, T0 + 22),
        task("revoked", "v1", T0 + 23, hostname=W1, terminated=False, signum=None, expired=False),
    )
    # j1: Reject(requeue=False): task-failed then task-rejected
    at(
        T0 + 24.125,
        received("j1", "app.reject", W1, T0 + 24),
        task("started", "j1", T0 + 24, hostname=W1),
        task("failed", "j1", T0 + 24.125, hostname=W1, exception="Reject('bad input', False)",
             traceback="Traceback ...\ncelery.exceptions.Reject: ('bad input', False)\n"),
        task("rejected", "j1", T0 + 24.125, hostname=W1, requeue=False),
    )  # fmt: skip
    # l1: still running on w2 (queue wait 1.0 from its task-sent)
    at(T0 + 25, sent("l1", "app.long", "priority", T0 + 25))
    at(
        T0 + 26,
        received("l1", "app.long", W2, T0 + 25.5),
        task("started", "l1", T0 + 26, hostname=W2),
    )
    # x1: a sixth task name, over the cap of five: reserved on w1 as name="other"
    at(T0 + 27, received("x1", "app.extra", W1, T0 + 27))
    # p1: sent, waiting in the broker
    at(T0 + 28, sent("p1", "app.add", "priority", T0 + 28))
    # an event type the exporter does not know, and a message it could not decode
    at(T0 + 29, {"type": "task-custom", "uuid": "c1", "timestamp": T0 + 29})
    state.count_malformed("json")
    # w4 shuts down (a deploy): it says so
    at(T0 + 40, worker("offline", W4, T0 + 40))
    # w1 and w2 keep beating; w3 has been silent since T0
    at(
        T0 + 59,
        worker("heartbeat", W1, T0 + 59, active=0, processed=6, loadavg=[0.5, 0.25, 0.1]),
        worker("heartbeat", W2, T0 + 59, active=1, processed=4, loadavg=[1.0, 0.75, 0.5]),
    )
    clock.now = T0 + 60
    registry = CollectorRegistry()
    collectors = Collectors(
        [EventCollector(state), HealthCollector(health, build=BUILD)],
        errors=InternalErrors(),
        timer=lambda: 0.0,
    )
    registry.register(collectors)
    return registry, state, clock


def test_golden_metrics() -> None:
    """The scripted cluster renders byte-for-byte as tests/golden/metrics.txt (UPDATE_GOLDEN=1 rewrites it)."""
    registry, _, _ = replay()
    text = exposition.render(registry.collect())
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_bytes(text)
    assert text == GOLDEN.read_bytes()


def test_golden_key_values() -> None:
    """Spot values of the scripted cluster, independent of the golden file."""
    registry, _, _ = replay()
    samples = parse_metrics(generate_latest(registry).decode())

    def value(metric: str, /, **labels: str) -> float:
        return samples[(metric, frozenset(labels.items()))]

    add = {"name": "app.add", "queue_name": "celery"}
    slow = {"name": "app.slow", "queue_name": "celery"}
    assert value("celery_task_sent_total", **add) == 2
    assert value("celery_task_started_total", **add) == 3
    assert value("celery_task_succeeded_total", **add) == 2
    assert value("celery_task_retried_total", **add, exception="ConnectionError") == 1
    assert value("celery_task_failed_total", **slow, exception="TimeLimitExceeded") == 1
    assert value("celery_task_timeouts_total", **slow, kind="hard") == 1
    assert value("celery_task_timeouts_total", **slow, kind="soft") == 1
    assert value("celery_task_runtime_seconds_bucket", **add, state="succeeded", le="1.0") == 1
    assert value("celery_task_runtime_seconds_bucket", **add, state="succeeded", le="+Inf") == 2
    assert value("celery_task_runtime_seconds_sum", **add, state="succeeded") == 12.3
    assert value("celery_task_failures_per_minute", **slow) == 2
    long = {"name": "app.long", "queue_name": "priority"}
    assert value("celery_tasks_active", **long) == 1
    assert value("celery_tasks_active_oldest_start_timestamp_seconds", **long) == T0 + 26
    assert value("celery_worker_up", hostname=W3) == 0
    assert value("celery_worker_up", hostname=W4) == 0
    assert value("celery_worker_up", hostname=W2) == 1
    # Only the worker that announced its shutdown has a shutdown time; the lost one has none.
    shutdowns = {
        k: v for k, v in samples.items() if k[0] == "celery_worker_shutdown_timestamp_seconds"
    }
    assert shutdowns == {
        ("celery_worker_shutdown_timestamp_seconds", frozenset({("hostname", W4)})): T0 + 40
    }
    assert value("celery_worker_pool_busy", hostname=W2) == 1
    assert value("celery_worker_tasks_reserved", hostname=W1) == 1
    assert value("celery_exporter_events_duplicate_total") == 1
    assert value("celery_exporter_tracked_tasks") == 3
    assert value("celery_exporter_label_overflow_total", label="name") == 1
    assert value("celery_exporter_reconnects_total") == 1
    assert value("celery_exporter_broker_up") == 1


def test_down_worker_renders_zero_gauges() -> None:
    """A worker that timed out shows up=0 and zero active, busy and reserved tasks."""
    clock = ManualClock(T0)
    state = ClusterState(clock=clock)
    state.handle_batch(
        [
            worker("heartbeat", W1, T0, active=2, processed=9, loadavg=[1, 1, 1]),
            received("u1", "app.add", W1, T0),
            received("u2", "app.add", W1, T0),
            task("started", "u1", T0, hostname=W1),
        ]
    )
    registry = CollectorRegistry()
    registry.register(EventCollector(state))
    samples = parse_metrics(generate_latest(registry).decode())
    host = frozenset({("hostname", W1)})
    got = {
        n: samples[(n, host)] for n in ("celery_worker_pool_busy", "celery_worker_tasks_reserved")
    }
    assert got == {"celery_worker_pool_busy": 1, "celery_worker_tasks_reserved": 1}
    clock.now = T0 + 6.5
    samples = parse_metrics(generate_latest(registry).decode())
    names = (
        "celery_worker_up",
        "celery_worker_tasks_active",
        "celery_worker_pool_busy",
        "celery_worker_tasks_reserved",
        "celery_worker_tasks_processed_total",
    )
    assert {n: samples[(n, host)] for n in names} == {
        "celery_worker_up": 0,
        "celery_worker_tasks_active": 0,
        "celery_worker_pool_busy": 0,
        "celery_worker_tasks_reserved": 0,
        "celery_worker_tasks_processed_total": 9,
    }


def test_empty_state_renders_families_without_samples() -> None:
    """Before any event, the families with fixed series report zero and no last-event gauge."""
    registry = CollectorRegistry()
    registry.register(EventCollector(ClusterState(clock=ManualClock(T0))))
    samples = parse_metrics(generate_latest(registry).decode())
    assert samples == {
        ("celery_exporter_events_duplicate_total", frozenset()): 0.0,
        ("celery_exporter_tracked_tasks", frozenset()): 0.0,
        ("celery_exporter_tracked_tasks_evicted_total", frozenset()): 0.0,
        ("celery_exporter_label_overflow_total", frozenset({("label", "name")})): 0.0,
        ("celery_exporter_label_overflow_total", frozenset({("label", "exception")})): 0.0,
        ("celery_exporter_label_overflow_total", frozenset({("label", "queue_name")})): 0.0,
        ("celery_exporter_label_overflow_total", frozenset({("label", "hostname")})): 0.0,
        ("celery_exporter_events_malformed_total", frozenset({("reason", "envelope")})): 0.0,
        ("celery_exporter_events_malformed_total", frozenset({("reason", "content_type")})): 0.0,
        ("celery_exporter_events_malformed_total", frozenset({("reason", "encoding")})): 0.0,
        ("celery_exporter_events_malformed_total", frozenset({("reason", "json")})): 0.0,
        ("celery_exporter_events_malformed_total", frozenset({("reason", "schema")})): 0.0,
    }


def test_worker_label_renders_hostname_label() -> None:
    """With worker_label, task series carry a hostname label."""
    state = ClusterState(Settings(worker_label=True), clock=ManualClock(T0))
    state.handle_batch([received("u1", "app.add", W1, T0)])
    registry = CollectorRegistry()
    registry.register(EventCollector(state))
    text = generate_latest(registry).decode()
    assert (
        'celery_task_received_total{hostname="celery@w1",name="app.add",queue_name="celery"} 1.0'
        in text.splitlines()
    )


def test_fast_text_writer_matches_prometheus_client() -> None:
    """The exporter's own text writer gives the same bytes as prometheus_client's."""
    registry, _, _ = replay()
    numbers = GaugeMetricFamily("celery_numbers", "Numbers of every shape.", labels=["v"])
    for value in (0, 7, 999_999, 1_000_000, 1_234_567, 2**53, -3, 0.1, 1.7e9 + 0.25, -1e-7):
        numbers.add_metric([str(value)], value)
    for value in (float("inf"), float("-inf"), float("nan")):
        numbers.add_metric([str(value)], value)

    class Fixed:
        def collect(self) -> list[GaugeMetricFamily]:
            return [numbers]

    registry.register(Fixed())  # type: ignore[arg-type]
    assert exposition.render(registry.collect()) == generate_latest(registry)


def test_fast_text_writer_escapes_label_values() -> None:
    """Backslashes, quotes and newlines in label values are escaped as the format requires."""
    family = GaugeMetricFamily("celery_x", "doc\\with\nnewline", labels=["name"])
    family.add_metric(['a"b\\c\nd'], 1.5)
    family.add_metric(["plain"], 1.5e6)
    assert exposition.render([family]) == (
        b"# HELP celery_x doc\\\\with\\nnewline\n# TYPE celery_x gauge\n"
        b'celery_x{name="a\\"b\\\\c\\nd"} 1.5\n'
        b'celery_x{name="plain"} 1.5e+06\n'
    )


@pytest.mark.parametrize(
    ("accept", "text"),
    [
        ("", True),
        ("text/plain;version=0.0.4", True),
        ("*/*", True),
        (
            "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3",
            True,
        ),
        ("application/openmetrics-text;version=1.0.0", False),
    ],
)
def test_text_format_chosen_whenever_accepted(accept: str, text: bool) -> None:
    """/metrics answers in the text format unless the client accepts only OpenMetrics."""
    assert exposition.accepts_text(accept) is text
