"""A counter family kept by our own code and read at scrape: :class:`LabelledCounter`."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, Metric

Labels = tuple[str, ...]


class LabelledCounter:
    """Counts by label values under a lock; a collector of one counter family."""

    def __init__(
        self, name: str, documentation: str, labels: Labels, start: Iterable[Labels] = ()
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self._lock = threading.Lock()
        #: Label values shown at 0 before anything is counted under them.
        self._counts: dict[Labels, int] = dict.fromkeys(start, 0)

    def count(self, *values: str) -> None:
        """Count one under these label values."""
        with self._lock:
            self._counts[values] = self._counts.get(values, 0) + 1

    def by_labels(self) -> dict[Labels, int]:
        """A copy of the counts."""
        with self._lock:
            return dict(self._counts)

    def describe(self) -> Iterator[Metric]:
        """Yield the family without samples."""
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        """Yield the family with a sample for each label values counted."""
        family = self._family()
        for values, count in sorted(self.by_labels().items()):
            family.add_metric(list(values), count)
        yield family

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=list(self.labels))
