"""A hand-run clock for the unit tests of time-dependent state."""

from __future__ import annotations


class ManualClock:
    """A clock for injecting into the state: it only moves when told to."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += seconds
