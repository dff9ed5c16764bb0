"""A stand-in queue backend for unit tests of the queue collector's pure logic."""

from __future__ import annotations

from collections.abc import Sequence

from celery_exporter.broker.measure import Measurement, SentLookup


class EveryFigure:
    """A queue backend that reports every figure, 1, for each queue asked for."""

    def measure(self, queues: Sequence[str], sent: SentLookup | None = None) -> Measurement:
        """One of each figure per queue."""
        return Measurement(
            length={q: 1 for q in queues},
            unacked={q: 1 for q in queues},
            consumers={q: 1 for q in queues},
            oldest_sent={q: 1.0 for q in queues},
        )
