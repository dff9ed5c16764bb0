"""Bugs in the exporter's own code, counted apart from bad input: ``InternalErrors``."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric


class InternalErrors:
    """Counts exceptions our own code raised, by where they were caught."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def count(self, where: str) -> None:
        """Count one exception caught at ``where``."""
        with self._lock:
            self._counts[where] = self._counts.get(where, 0) + 1

    def counts(self) -> dict[str, int]:
        """A copy of the counts."""
        with self._lock:
            return dict(self._counts)

    def describe(self) -> Iterator[Metric]:
        """Yield the family without samples."""
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        """Yield ``celery_exporter_internal_errors_total{where}``."""
        family = self._family()
        for where, count in sorted(self.counts().items()):
            family.add_metric([where], count)
        yield family

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily(
            "celery_exporter_internal_errors",
            "Exceptions raised by the exporter's own code (a bug: please report it), by where "
            "they were caught; the event or scrape they hit was skipped.",
            labels=["where"],
        )
