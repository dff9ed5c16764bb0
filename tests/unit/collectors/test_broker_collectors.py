"""Pure logic of the background poller, the queue collector and the inspect collector."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from celery_exporter import config
from celery_exporter.broker import Broker
from celery_exporter.broker.measure import Measurement, SentLookup, backend_for
from celery_exporter.broker.rabbitmq import RabbitMQBackend, split_credentials, vhost_of
from celery_exporter.broker.redis_queues import (
    RedisBackend,
    UnackedScan,
    message_id,
    priority_keys,
    routing_key,
)
from celery_exporter.broker.sqs import SQSBackend
from celery_exporter.collectors.base import Collectors, Status
from celery_exporter.collectors.inspect import InspectCollector, WorkerReport, merge, reports_from
from celery_exporter.collectors.polling import Poller, status_of
from celery_exporter.collectors.queues import QueueCollector
from celery_exporter.state import WorkerQueues
from tests.support import parse_metrics

SEP = "\x06\x16"


class Clock:
    """A clock that only moves when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeBackend:
    """Returns set lengths; records which queues it was asked for."""

    def __init__(self) -> None:
        self.lengths: dict[str, int] = {}
        self.asked: list[str] = []

    def measure(self, queues: Sequence[str], sent: SentLookup | None = None) -> Measurement:
        self.asked = list(queues)
        return Measurement(
            length={q: self.lengths.get(q, 0) for q in queues},
            unacked={q: 0 for q in queues},
        )


def samples_of(*collectors: Any) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    registry = CollectorRegistry()
    for c in collectors:
        registry.register(c)
    return parse_metrics(generate_latest(registry).decode())


# -- background ------------------------------------------------------------------------------


def test_poller_keeps_last_result_and_reports_success() -> None:
    """A successful poll's data is kept; its status is success, its duration and the time."""
    clock, ticks = Clock(500.0), iter([10.0, 10.25])
    poller: Poller[int] = Poller("x", lambda: 42, 5, clock=clock, monotonic=lambda: next(ticks))
    assert status_of(poller) is None
    assert poller.run_once() is True
    assert poller.data == 42
    assert status_of(poller) == Status(True, 0.25, 500.0)


def test_poller_failure_drops_data_and_keeps_last_success_time() -> None:
    """A poll that raises drops the data and reads success 0, keeping the last success time."""
    clock = Clock(500.0)
    results: list[Any] = [7, RuntimeError("broker down")]

    def poll() -> int:
        item = results.pop(0)
        if isinstance(item, Exception):
            raise item
        return int(item)

    poller: Poller[int] = Poller("x", poll, 5, clock=clock)
    assert poller.run_once() is True
    clock.now = 600.0
    assert poller.run_once() is False
    assert poller.data is None
    status = poller.status
    assert status is not None
    assert (status.success, status.last_success, status.error) == (
        False,
        500.0,
        "RuntimeError: broker down",
    )


def test_poller_timeout_counts_as_failure_and_is_not_restarted() -> None:
    """A poll that outlives its timeout fails, and no second poll starts while it still runs."""
    release = threading.Event()
    calls: list[int] = []

    def poll() -> int:
        calls.append(1)
        release.wait(30)
        return 1

    poller: Poller[int] = Poller("slow", poll, 5, timeout=0.05)
    assert poller.run_once() is False
    assert poller.run_once() is False
    assert len(calls) == 1
    status = poller.status
    assert status is not None and status.error == "the previous poll has not returned yet"
    release.set()


def test_background_collectors_without_a_poll_have_no_self_metric_samples() -> None:
    """Before their first poll the queue and inspect collectors render no samples at all."""
    queues = QueueCollector(FakeBackend(), None, ["cfg"], 10, 100)
    inspect = InspectCollector(
        Broker("redis://127.0.0.1:1/0"), None, 30, broadcast=lambda: ({}, {}, {})
    )
    assert samples_of(Collectors([queues, inspect])) == {}


def test_failed_poll_renders_success_zero_and_keeps_last_success_time() -> None:
    """After a failed poll the queues collector reads success 0 and its last success time."""
    clock = Clock(500.0)
    backend = FakeBackend()
    collector = QueueCollector(backend, None, ["cfg"], 10, 100, consumers=lambda: {}, clock=clock)
    assert collector.poller.run_once() is True

    def broken(queues: Sequence[str], sent: SentLookup | None = None) -> Measurement:
        raise ConnectionError("down")

    backend.measure = broken  # type: ignore[method-assign]
    clock.now = 600.0
    assert collector.poller.run_once() is False
    samples = samples_of(Collectors([collector]))
    label = frozenset({("collector", "queues")})
    assert samples[("celery_exporter_collector_success", label)] == 0
    assert samples[("celery_exporter_collector_last_success_timestamp_seconds", label)] == 500.0
    assert ("celery_queue_length", frozenset({("queue_name", "cfg")})) not in samples


# -- queues ----------------------------------------------------------------------------------


def test_priority_keys_follow_kombu() -> None:
    """Step 0 is the bare list; the others are queue + sep + step, with the key prefix."""
    assert priority_keys("q", (0, 3, 6, 9), SEP) == ["q", f"q{SEP}3", f"q{SEP}6", f"q{SEP}9"]
    assert priority_keys("q", (0, 5), ":", "p:") == ["p:q", "p:q:5"]
    assert priority_keys("q", (1, 5), SEP) == [f"q{SEP}1", f"q{SEP}5"]


def test_message_id_and_routing_key_parsing() -> None:
    """Task ids come from headers (or correlation_id); routing keys from unacked entries."""
    assert message_id(json.dumps({"headers": {"id": "abc"}})) == "abc"
    assert message_id(json.dumps({"headers": {}, "properties": {"correlation_id": "x"}})) == "x"
    assert message_id(b"not json") is None
    assert routing_key(json.dumps([{"body": ""}, "", "celery"])) == "celery"
    assert routing_key(json.dumps({"a": 1})) is None


class FakeHash:
    """HSCAN over a dict, ``count`` entries per call."""

    def __init__(self, entries: dict[bytes, bytes]) -> None:
        self.items = sorted(entries.items())

    def hscan(self, key: str, cursor: int, count: int) -> tuple[int, dict[bytes, bytes]]:
        chunk = dict(self.items[cursor : cursor + count])
        nxt = cursor + count
        return (0 if nxt >= len(self.items) else nxt), chunk


def test_unacked_scan_is_bounded_and_reports_complete_passes() -> None:
    """A hash larger than the limit is counted over several polls; partial counts never show."""
    entries = {
        f"tag{i:02d}".encode(): json.dumps([{}, "", "a" if i < 7 else "b"]).encode()
        for i in range(10)
    }
    scan = UnackedScan(limit=4, count=2)
    client = FakeHash(entries)
    assert scan.step(client, "unacked") is None
    assert scan.step(client, "unacked") is None
    assert scan.step(client, "unacked") == {"a": 7, "b": 3}
    assert scan.step(client, "unacked") == {"a": 7, "b": 3}


def test_queue_set_reports_configured_consumed_and_sent_then_purges_idle() -> None:
    """Idle unconfigured queues go after purge_after; configured ones stay; a busy one returns."""
    clock = Clock(0.0)
    backend = FakeBackend()
    consumed: dict[str, int] = {"work": 1}
    collector = QueueCollector(
        backend, None, ["cfg"], 10, 100, consumers=lambda: consumed, clock=clock
    )
    first = collector.poll()
    assert first.length == {"cfg": 0, "work": 0}
    assert first.consumers == {"cfg": 0, "work": 1}
    consumed.clear()
    clock.now = 99.0
    assert sorted(collector.poll().length) == ["cfg", "work"]
    clock.now = 100.0
    assert sorted(collector.poll().length) == ["cfg"]
    assert backend.asked == ["cfg", "work"]  # still measured
    backend.lengths["work"] = 4
    assert collector.poll().length == {"cfg": 0, "work": 4}


def test_queue_collector_renders_last_measurement() -> None:
    """The queue families hold the last successful poll's values, and nothing after a failure."""
    backend = FakeBackend()
    backend.lengths["cfg"] = 3
    collector = QueueCollector(backend, None, ["cfg"], 10, 100, consumers=lambda: {})
    collector.poller.run_once()
    samples = samples_of(collector)
    label = frozenset({("queue_name", "cfg")})
    assert samples[("celery_queue_length", label)] == 3
    assert samples[("celery_queue_unacked", label)] == 0
    assert samples[("celery_queue_consumers", label)] == 0

    def broken(queues: Sequence[str], sent: SentLookup | None = None) -> Measurement:
        raise ConnectionError("down")

    backend.measure = broken  # type: ignore[method-assign]
    assert collector.poller.run_once() is False
    assert samples_of(collector) == {}


def test_vhost_and_credentials_of_urls() -> None:
    """The vhost is read as kombu does; credentials are split off the management URL."""
    assert vhost_of("amqp://u:p@h:5672//") == "/"
    assert vhost_of("amqp://u:p@h:5672/%2F") == "/"
    assert vhost_of("amqp://u:p@h:5672/prod") == "prod"
    assert vhost_of("amqp://h") == "/"
    assert split_credentials("http://a%40b:s%3Acret@127.0.0.1:15672/x") == (
        "http://127.0.0.1:15672/x",
        "a@b",
        "s:cret",
    )


def test_backend_for_reads_transport_options() -> None:
    """Redis options come from the transport options, SQS gets its own backend, others are refused."""
    backend = backend_for(
        Broker(
            "redis://127.0.0.1:1/2",
            {"global_keyprefix": "p:", "sep": ":", "priority_steps": [9, 0, 5]},
        ),
        None,
    )
    assert isinstance(backend, RedisBackend)
    assert (backend.prefix, backend.sep, backend.steps) == ("p:", ":", (0, 5, 9))
    assert backend.unacked_key == "p:unacked"
    assert isinstance(backend_for(Broker("amqp://g:g@127.0.0.1//"), None), RabbitMQBackend)
    sqs = backend_for(Broker("sqs://", {"region": "eu-west-1"}), None)
    assert isinstance(sqs, SQSBackend) and sqs.settings.region == "eu-west-1"
    with pytest.raises(ValueError, match="not supported"):
        backend_for(Broker("memory://"), None)


# -- pools -----------------------------------------------------------------------------------

STATS = {
    "celery@a": {"pool": {"max-concurrency": 3}, "prefetch_count": 12},
    "celery@b": {
        "pool": {"max-concurrency": 1},
        "autoscaler": {"max": 8, "min": 1},
        "prefetch_count": 4,
    },
}
ACTIVE_QUEUES = {"celery@a": [{"name": "celery"}, {"name": "hi"}], "celery@b": [{"name": "hi"}]}
SCHEDULED = {"celery@a": [{"eta": "x"}, {"eta": "y"}], "celery@b": []}


def test_reports_from_replies() -> None:
    """Pool size is max-concurrency, or the autoscaler's max; scheduled is the list's length."""
    reports = reports_from(STATS, ACTIVE_QUEUES, SCHEDULED, 5.0)
    assert reports["celery@a"] == WorkerReport(3, 12, 2, ("celery", "hi"), 5.0)
    assert reports["celery@b"] == WorkerReport(8, 4, 0, ("hi",), 5.0)


def test_merge_keeps_silent_workers_for_a_while() -> None:
    """A worker that did not answer keeps its last report until keep_for has passed."""
    old = {"celery@a": WorkerReport(3, 12, 0, ("celery",), 0.0)}
    assert merge(old, {}, 89.0, 90.0) == old
    assert merge(old, {}, 90.0, 90.0) == {}


def test_inspect_collector_renders_pools_and_learns_worker_queues() -> None:
    """Pool families per worker; active_queues go to WorkerQueues and to the consumer counts."""
    queues = WorkerQueues()
    collector = InspectCollector(
        Broker("redis://127.0.0.1:1/0"),
        queues,
        30,
        broadcast=lambda: (STATS, ACTIVE_QUEUES, SCHEDULED),
    )
    assert collector.consumers() is None
    collector.poller.run_once()
    assert (queues.of("celery@a"), queues.of("celery@b")) == (("celery", "hi"), ("hi",))
    assert queues.of("celery@c") is None
    assert collector.consumers() == {"celery": 1, "hi": 2}
    samples = samples_of(collector)

    def get(name: str, host: str) -> float:
        return samples[(name, frozenset({("hostname", host)}))]

    assert get("celery_worker_pool_size", "celery@a") == 3
    assert get("celery_worker_pool_size", "celery@b") == 8
    assert get("celery_worker_prefetch_count", "celery@a") == 12
    assert get("celery_worker_tasks_scheduled", "celery@a") == 2
    assert get("celery_worker_tasks_scheduled", "celery@b") == 0


# -- flags -----------------------------------------------------------------------------------


def test_collector_flags_and_defaults() -> None:
    """The collector flags parse into the config; defaults are 10 s, 30 s, 1 h and on."""
    default = config.load([], {})
    assert (default.queues, default.queue_interval, default.inspect_interval) == ((), 10.0, 30.0)
    assert (default.queue_purge_after, default.queue_collector, default.inspect_collector) == (
        3600.0,
        True,
        True,
    )
    cfg = config.load(
        ["--queues", "a, b,a", "--queue-interval", "500ms", "--no-inspect-collector"],
        {
            "CELERY_EXPORTER_QUEUE_COLLECTOR": "off",
            "CELERY_EXPORTER_RABBITMQ_MANAGEMENT_URL": "http://u:p@127.0.0.1:15672",
        },
    )
    assert (cfg.queues, cfg.queue_interval) == (("a", "b"), 0.5)
    assert (cfg.queue_collector, cfg.inspect_collector) == (False, False)
    assert cfg.rabbitmq_management_url == "http://u:p@127.0.0.1:15672"


@pytest.mark.parametrize(
    "argv",
    [
        ["--queues", " , "],
        ["--queue-interval", "0"],
        ["--inspect-interval", "soon"],
        ["--queue-purge-after", "-1"],
        ["--rabbitmq-management-url", "ftp://u:secret@127.0.0.1"],
    ],
)
def test_bad_collector_flags_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A bad collector flag stops the exporter with status 2, and never shows the password."""
    with pytest.raises(SystemExit) as exc:
        config.load(argv, {})
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert argv[0] in err
    assert "secret" not in err
