"""The README documents every metric family of the queue and inspect collectors."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from celery_exporter.broker import Broker
from celery_exporter.collectors.base import Collectors
from celery_exporter.collectors.inspect import InspectCollector
from celery_exporter.collectors.queues import QueueCollector
from tests.support.queues import EveryFigure

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def rendered_families() -> list[str]:
    """Names of the families the two collectors render, with the collectors' self-metrics."""
    inspect = InspectCollector(
        Broker("redis://127.0.0.1:1/0"), None, 30, broadcast=lambda: ({}, {}, {})
    )
    queues = QueueCollector(EveryFigure(), None, ["q"], 10, 60)
    assert inspect.poller.run_once() and queues.poller.run_once()
    registry = CollectorRegistry()
    registry.register(Collectors([inspect, queues]))
    text = generate_latest(registry).decode()
    return sorted(f.name for f in text_string_to_metric_families(text))


FAMILIES = rendered_families()


@pytest.mark.parametrize("family", FAMILIES)
def test_readme_documents_collector_family(family: str) -> None:
    """Each queue, pool and collector self-metric family is named in the README."""
    assert f"`{family}`" in README


def test_collector_families_are_the_contract() -> None:
    """The collectors render exactly the families the issue names (guards the test above)."""
    assert FAMILIES == [
        "celery_exporter_collector_duration_seconds",
        "celery_exporter_collector_last_success_timestamp_seconds",
        "celery_exporter_collector_success",
        "celery_queue_consumers",
        "celery_queue_dead_letter_info",
        "celery_queue_delayed",
        "celery_queue_length",
        "celery_queue_oldest_message_sent_timestamp_seconds",
        "celery_queue_unacked",
        "celery_worker_pool_size",
        "celery_worker_prefetch_count",
        "celery_worker_tasks_scheduled",
    ]
