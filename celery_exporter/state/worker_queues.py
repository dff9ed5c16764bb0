"""The queues each worker consumes, as the inspect collector last learned them.

The inspect collector writes it after each poll; the cluster state reads it to put a task
whose events do not name a queue under its worker's queue. Readers take the mapping whole:
it is replaced, never changed in place, so a read needs no lock.
"""

from __future__ import annotations

from collections.abc import Mapping


class WorkerQueues:
    """Hostname to the names of the queues that worker consumes."""

    def __init__(self) -> None:
        self._queues: Mapping[str, tuple[str, ...]] = {}

    def replace(self, queues: Mapping[str, tuple[str, ...]]) -> None:
        """Put the latest answers in place of the previous ones."""
        self._queues = dict(queues)

    def of(self, host: str) -> tuple[str, ...] | None:
        """The queues ``host`` consumes; None when no answer names it."""
        return self._queues.get(host)
