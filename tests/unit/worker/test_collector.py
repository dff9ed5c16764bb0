"""The worker collector: its families, its place in the registry, and a scrape that fails."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import signals

from celery_exporter import __version__
from celery_exporter.collectors.base import Collector
from celery_exporter.worker import WorkerCollector, WorkerExporter, install
from tests.support.launchers import free_port
from tests.support.scrape import value
from tests.support.signals import SignalWorker
from tests.support.worker import HOST, App, samples


class Autoscaler:
    """What the exporter reads of a worker's autoscaler."""

    max_concurrency = 10


class Qos:
    """What the exporter reads of the consumer's prefetch count."""

    value = 16


class Consumer:
    """``worker_ready``'s sender."""

    qos = Qos()


@pytest.fixture
def with_resources() -> Iterator[WorkerExporter]:
    """A started exporter that also serves its own processes' resources."""
    app = App()
    exp = install(app, port=free_port(), host="127.0.0.1", sample_interval=60)
    signals.worker_init.send(sender=SignalWorker(app, HOST))
    try:
        yield exp
    finally:
        exp.stop()
        exp.disconnect()


def test_follows_the_collector_contract(exporter: WorkerExporter) -> None:
    """It is the ``worker`` collector, and describe() names exactly the families collect() yields."""
    collector = WorkerCollector(exporter)
    assert isinstance(collector, Collector)
    assert collector.name == "worker"
    described = [family.name for family in collector.describe()]
    collected = [family.name for family in collector.collect()]
    assert sorted(described) == sorted(collected)
    assert len(set(collected)) == len(collected) == 23


def test_worker_gauges(exporter: WorkerExporter) -> None:
    """The worker serves up, pool size (autoscale maximum), busy, reserved, prefetch and build."""
    exporter.worker.autoscaler = Autoscaler()
    signals.worker_ready.send(sender=Consumer())
    got = samples(exporter)
    assert value(got, "celery_worker_up", hostname=HOST) == 1
    assert value(got, "celery_worker_pool_size", hostname=HOST) == 10
    assert value(got, "celery_worker_prefetch_count", hostname=HOST) == 16
    assert ("celery_worker_pool_busy", frozenset({("hostname", HOST)})) in got
    assert ("celery_worker_tasks_reserved", frozenset({("hostname", HOST)})) in got
    build = [dict(labels) for name, labels in got if name == "celery_exporter_build_info"]
    assert [b["version"] for b in build] == [__version__]


def test_registry_holds_the_worker_and_resource_collectors(
    with_resources: WorkerExporter,
) -> None:
    """With resources on, both collectors report success through the one wrapper."""
    got = samples(with_resources)
    assert value(got, "celery_exporter_collector_success", collector="worker") == 1
    assert value(got, "celery_exporter_collector_success", collector="resources") == 1
    assert value(got, "celery_worker_pool_processes", hostname=HOST) == 0
    assert value(got, "celery_exporter_workers_found") == 1


def test_a_collector_that_raises_is_counted(
    exporter: WorkerExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the worker collector reads success 0 and counts an internal error."""

    def broken() -> int:
        raise RuntimeError("bug")

    monkeypatch.setattr(exporter, "pool_size", broken)
    got = samples(exporter)
    assert ("celery_exporter_collector_success", frozenset({("collector", "worker")})) in got
    assert value(got, "celery_exporter_collector_success", collector="worker") == 0
    assert value(got, "celery_exporter_internal_errors_total", where="collector_worker") == 1
    assert not [k for k in got if k[0] == "celery_worker_up"]


def test_a_scrape_imports_nothing(
    exporter: WorkerExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scrape runs no import: a first import from the HTTP thread can race Celery's lazy modules."""
    import builtins

    real_import = builtins.__import__
    imported: list[str] = []

    def spy(name: str, *args: object, **kwargs: object) -> object:
        imported.append(name)
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", spy)
    got = samples(exporter)
    monkeypatch.undo()
    assert imported == []
    assert value(got, "celery_exporter_collector_success", collector="worker") == 1
