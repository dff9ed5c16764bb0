"""The exporter's own condition: broker connection, event consumer, and why it is not ready."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class HealthView:
    """A copy of :class:`Health` at one moment."""

    broker_up: bool
    consuming: bool
    reconnects: int
    reason: str
    gaps: int = 0
    last_gap: float | None = None

    @property
    def ready(self) -> bool:
        """Whether the broker is connected and the event consumer runs."""
        return self.broker_up and self.consuming


class Health:
    """Written by the event consumer, read by ``/readyz`` and the self-metrics."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._broker_up = False
        self._consuming = False
        self._reconnects = 0
        self._reason = "not connected to the broker yet"
        self._gaps = 0
        self._last_gap: float | None = None
        self.started = time.time()

    def connected(self) -> None:
        """Record that the broker connection is up and events are being consumed."""
        with self._lock:
            self._broker_up = self._consuming = True
            self._reason = ""

    def disconnected(self, reason: str) -> None:
        """Record a lost or failed broker connection."""
        with self._lock:
            if self._broker_up:
                self._reconnects += 1
            self._broker_up = self._consuming = False
            self._reason = reason

    def gap(self, when: float) -> None:
        """Record that a live event subscription was cut: events were lost until it is back."""
        with self._lock:
            self._gaps += 1
            self._last_gap = when

    def stopped(self) -> None:
        """Record that the consumer has stopped for good."""
        with self._lock:
            self._consuming = False
            self._reason = "event consumer stopped"

    def view(self) -> HealthView:
        """Return the current condition."""
        with self._lock:
            return HealthView(
                self._broker_up, self._consuming, self._reconnects, self._reason, self._gaps,
                self._last_gap,
            )  # fmt: skip
