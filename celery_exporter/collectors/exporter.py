"""The ``exporter`` collector: build facts and the broker connection of the exporter itself."""

from __future__ import annotations

import platform
from collections.abc import Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from .. import __version__
from ..web.health import Health
from .base import Family, describe

BUILD = Family("celery_exporter_build", "info", "Version of the exporter and its libraries.")
BROKER_UP = Family(
    "celery_exporter_broker_up",
    "gauge",
    "1 when the exporter is connected to the broker and consuming events (on SQS: when the "
    "SQS API answered the last queue poll).",
)
RECONNECTS = Family(
    "celery_exporter_reconnects",
    "counter",
    "Times the broker connection was lost and the exporter reconnected or tried to.",
)
GAPS = Family(
    "celery_exporter_event_stream_gaps",
    "counter",
    "Times a live event subscription was cut (events published until it was back are lost).",
)
LAST_GAP = Family(
    "celery_exporter_event_stream_last_gap_timestamp_seconds",
    "gauge",
    "When the event subscription was last cut.",
)
FAMILIES = (BUILD, BROKER_UP, RECONNECTS, GAPS, LAST_GAP)


def build_info() -> Mapping[str, str]:
    """Versions of the exporter, Celery, kombu and Python, for ``celery_exporter_build_info``."""

    def dist(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "unknown"

    return {
        "version": __version__,
        "celery_version": dist("celery"),
        "kombu_version": dist("kombu"),
        "python_version": platform.python_version(),
    }


class HealthCollector(Collector):
    """Broker connection and build facts about the exporter itself."""

    name = "exporter"

    def __init__(self, health: Health, build: Mapping[str, str]) -> None:
        self.health = health
        self.build = dict(build)

    def describe(self) -> Iterator[Metric]:
        """Yield the exporter families without samples."""
        return describe(FAMILIES)

    def collect(self) -> Iterator[Metric]:
        """Yield build info, broker up, reconnects and event stream gaps."""
        view = self.health.view()
        info = BUILD.info()
        info.add_metric([], self.build)
        yield info
        yield BROKER_UP.value(1 if view.broker_up else 0)
        yield RECONNECTS.value(view.reconnects)
        yield GAPS.value(view.gaps)
        if view.last_gap is not None:
            yield LAST_GAP.value(view.last_gap)
