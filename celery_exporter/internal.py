"""Bugs in the exporter's own code, counted apart from bad input: ``InternalErrors``."""

from __future__ import annotations

from .counters import LabelledCounter


class InternalErrors(LabelledCounter):
    """Counts exceptions our own code raised, by where they were caught."""

    def __init__(self) -> None:
        super().__init__(
            "celery_exporter_internal_errors",
            "Exceptions raised by the exporter's own code (a bug: please report it), by where "
            "they were caught; the event or scrape they hit was skipped.",
            ("where",),
        )

    def counts(self) -> dict[str, int]:
        """A copy of the counts, by where."""
        return {where: count for (where,), count in self.by_labels().items()}
