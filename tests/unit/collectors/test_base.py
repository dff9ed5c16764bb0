"""The collector contract: every collector's describe() and collect(), and the Collectors wrapper."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from celery_exporter.broker import Broker
from celery_exporter.collectors.base import Collector, Collectors, Family, Status, execute
from celery_exporter.collectors.events import EventCollector
from celery_exporter.collectors.exporter import HealthCollector
from celery_exporter.collectors.inspect import InspectCollector
from celery_exporter.collectors.process_table import ProcessTable
from celery_exporter.collectors.processes import ResourceCollector
from celery_exporter.collectors.queues import QueueCollector
from celery_exporter.internal import InternalErrors
from celery_exporter.state import ClusterState
from celery_exporter.web.health import Health
from tests.support import ManualClock, parse_metrics
from tests.support.queues import EveryFigure

T0 = 1_700_000_000.0
BUILD = {"version": "0", "celery_version": "0", "kombu_version": "0", "python_version": "0"}
STATS = {"celery@a": {"pool": {"max-concurrency": 3}, "prefetch_count": 12}}
ACTIVE_QUEUES = {"celery@a": [{"name": "celery"}]}
SCHEDULED = {"celery@a": [{"eta": "x"}]}


def events() -> EventCollector:
    """An event collector over a state that has seen a worker and every kind of task event."""
    clock = ManualClock(T0)
    state = ClusterState(clock=clock)
    base = {"hostname": "celery@a", "timestamp": T0, "utcoffset": 0}
    worker = {**base, "freq": 2.0, "sw_ident": "py-celery", "sw_ver": "5", "sw_sys": "Linux"}
    state.handle_batch(
        [
            {
                **worker,
                "type": "worker-heartbeat",
                "active": 1,
                "processed": 1,
                "loadavg": [1, 1, 1],
            },
            {**base, "type": "task-received", "uuid": "u1", "name": "app.add", "retries": 0},
            {**base, "type": "task-started", "uuid": "u1"},
        ]
    )
    return EventCollector(state)


def exporter() -> HealthCollector:
    """The exporter collector after an event stream gap."""
    health = Health()
    health.connected()
    health.gap(T0)
    return HealthCollector(health, BUILD)


def inspect() -> InspectCollector:
    """The inspect collector after one successful poll."""
    collector = InspectCollector(
        Broker("redis://127.0.0.1:1/0"),
        None,
        30,
        broadcast=lambda: (STATS, ACTIVE_QUEUES, SCHEDULED),
    )
    assert collector.poller.run_once()
    return collector


def queues(monotonic: Callable[[], float] | None = None) -> QueueCollector:
    """The queues collector after one successful poll."""
    collector = QueueCollector(EveryFigure(), None, ["celery"], 10, 60, clock=lambda: T0)
    if monotonic is not None:
        collector.poller.monotonic = monotonic
    assert collector.poller.run_once()
    return collector


def resources() -> ResourceCollector:
    """The resource collector watching this test's own process as a worker."""
    table = ProcessTable(main_pid=os.getpid(), hostname="celery@a")
    table.refresh()
    return ResourceCollector(table)


BUILDERS: dict[str, Callable[[], Collector]] = {
    "events": events,
    "exporter": exporter,
    "inspect": inspect,
    "queues": queues,
    "resources": resources,
}


def samples(*collectors: Collector, errors: InternalErrors | None = None) -> dict[Any, float]:
    """The samples a registry holding one Collectors wrapper over ``collectors`` serves."""
    registry = CollectorRegistry()
    registry.register(Collectors(collectors, errors=errors))
    return parse_metrics(generate_latest(registry).decode())


def success(name: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return ("celery_exporter_collector_success", frozenset({("collector", name)}))


def duration(name: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return ("celery_exporter_collector_duration_seconds", frozenset({("collector", name)}))


def last_success(name: str) -> tuple[str, frozenset[tuple[str, str]]]:
    key = "celery_exporter_collector_last_success_timestamp_seconds"
    return (key, frozenset({("collector", name)}))


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_collector_describes_exactly_the_families_it_collects(name: str) -> None:
    """For every collector, describe() names the same families collect() yields, all of them."""
    collector = BUILDERS[name]()
    assert collector.name == name
    described = sorted(m.name for m in collector.describe())
    collected = sorted(m.name for m in collector.collect())
    assert described == collected
    assert len(described) == len(set(described))


def test_wrapper_describes_exactly_the_families_it_collects() -> None:
    """The wrapper describes every collector's families, the self-metrics and internal errors."""
    wrapper = Collectors([build() for build in BUILDERS.values()], errors=InternalErrors())
    described = sorted(m.name for m in wrapper.describe())
    assert described == sorted(m.name for m in wrapper.collect())
    assert {
        "celery_exporter_collector_success",
        "celery_exporter_collector_duration_seconds",
        "celery_exporter_collector_last_success_timestamp_seconds",
        "celery_exporter_internal_errors",
    } <= set(described)


def test_every_collector_reports_success_and_duration() -> None:
    """Each of the five collectors has success 1 and a duration; only pollers a success time."""
    got = samples(*(build() for build in BUILDERS.values()))
    assert {name: got[success(name)] for name in BUILDERS} == dict.fromkeys(BUILDERS, 1.0)
    assert all(got[duration(name)] >= 0 for name in BUILDERS)
    assert {k[1] for k in got if k[0] == last_success("x")[0]} == {
        frozenset({("collector", "inspect")}),
        frozenset({("collector", "queues")}),
    }


def test_collector_that_raises_reads_zero_and_is_counted_while_others_render() -> None:
    """A raising collector: success 0, one internal error where=collector_<name>, others intact."""
    broken = events()

    def snapshot() -> Any:
        raise RuntimeError("a bug")

    broken.state.snapshot = snapshot  # type: ignore[method-assign]
    errors = InternalErrors()
    got = samples(broken, exporter(), queues(), errors=errors)
    assert got[success("events")] == 0
    assert (got[success("exporter")], got[success("queues")]) == (1, 1)
    where = frozenset({("where", "collector_events")})
    assert got[("celery_exporter_internal_errors_total", where)] == 1
    assert errors.counts() == {"collector_events": 1}
    assert got[("celery_exporter_broker_up", frozenset())] == 1
    assert got[("celery_queue_length", frozenset({("queue_name", "celery")}))] == 1
    assert not [k for k in got if k[0].startswith("celery_task_")]


def test_background_collector_reports_its_poll_not_the_scrape() -> None:
    """A poller's duration is its poll's (0.25 s), not the scrape's (7 s); its success time too."""
    ticks = iter([100.0, 100.25])
    collector = queues(monotonic=lambda: next(ticks))
    slow_scrape = itertools.count(0.0, 7.0)
    families, status = execute(collector, timer=lambda: next(slow_scrape))
    assert status == Status(True, 0.25, T0)
    assert next(f.name for f in families) == "celery_queue_length"


def test_background_collector_that_raises_keeps_its_poll_figures() -> None:
    """A poller whose collect() raises reads success 0 with its last poll's duration and time."""
    ticks = iter([100.0, 100.25])
    collector = queues(monotonic=lambda: next(ticks))

    def collect() -> Iterator[Metric]:
        raise RuntimeError("a bug")

    collector.collect = collect  # type: ignore[method-assign]
    errors = InternalErrors()
    assert execute(collector, errors) == ([], Status(False, 0.25, T0))
    assert errors.counts() == {"collector_queues": 1}


def test_background_collector_that_raises_before_any_poll_reads_zero() -> None:
    """Before its first poll, a poller whose collect() raises still reads success 0."""
    collector = QueueCollector(EveryFigure(), None, ["celery"], 10, 60)

    def collect() -> Iterator[Metric]:
        raise RuntimeError("a bug")

    collector.collect = collect  # type: ignore[method-assign]
    got = samples(collector, errors=InternalErrors())
    assert got[success("queues")] == 0
    assert last_success("queues") not in got


class HalfRead:
    """A partial collector that read one figure and failed to read another."""

    name = "half"
    FAMILY = Family("celery_half", "gauge", "Half of it.")

    def describe(self) -> Iterator[Metric]:
        yield self.FAMILY.new()

    def collect(self) -> list[Metric]:
        return self.collect_partial()[0]

    def collect_partial(self) -> tuple[list[Metric], bool]:
        return [self.FAMILY.value(1)], False


def test_partial_collector_renders_what_it_read_with_success_zero() -> None:
    """A collector that could read only part renders that part, success 0, no internal error."""
    errors = InternalErrors()
    got = samples(HalfRead(), errors=errors)
    assert got[("celery_half", frozenset())] == 1
    assert got[success("half")] == 0
    assert errors.counts() == {}


def test_registry_takes_the_wrapper_and_checks_its_described_names() -> None:
    """The registry calls describe() at register: a family the wrapper holds cannot come twice."""
    registry = CollectorRegistry()
    registry.register(Collectors([queues()], errors=InternalErrors()))
    clash = GaugeMetricFamily("celery_queue_length", "Again.", value=1)

    class Clash:
        def describe(self) -> list[Metric]:
            return [clash]

        def collect(self) -> list[Metric]:
            return [clash]

    with pytest.raises(ValueError, match="celery_queue_length"):
        registry.register(Clash())
    text = generate_latest(registry).decode()
    assert 'celery_exporter_collector_success{collector="queues"} 1.0' in text.splitlines()


def test_collector_names_must_differ() -> None:
    """Two collectors with one name would share their self-metric series: refused."""
    with pytest.raises(ValueError, match="must differ"):
        Collectors([queues(), queues()])
