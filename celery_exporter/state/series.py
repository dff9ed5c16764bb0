"""The task series: counters, histograms and gauges keyed by label tuples, and their copies."""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

LabelKey = tuple[str, ...]

#: Task event types counted by ``celery_task_<kind>_total``.
TASK_COUNTERS = (
    "sent",
    "received",
    "started",
    "succeeded",
    "failed",
    "retried",
    "revoked",
    "rejected",
)
_FAILURE_WINDOW = 60


class Histogram:
    """Per-bucket counts and a sum; cumulated only when rendered."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def copy(self) -> Histogram:
        """Return an independent copy."""
        other = Histogram(self.bounds)
        other.counts = self.counts[:]
        other.total = self.total
        return other


class FailureWindow:
    """Failures in the last 60 seconds, in one-second buckets."""

    __slots__ = ("counts", "seconds")

    def __init__(self) -> None:
        self.seconds = [0] * _FAILURE_WINDOW
        self.counts = [0] * _FAILURE_WINDOW

    def add(self, now: float) -> None:
        """Count one failure at ``now``."""
        second = int(now)
        slot = second % _FAILURE_WINDOW
        if self.seconds[slot] != second:
            self.seconds[slot] = second
            self.counts[slot] = 0
        self.counts[slot] += 1

    def total(self, now: float) -> int:
        """Return the failures of the 60 seconds up to ``now``."""
        newest = int(now)
        return sum(
            count
            for second, count in zip(self.seconds, self.counts, strict=True)
            if newest - _FAILURE_WINDOW < second <= newest
        )


class TaskSeries:
    """Every per-label table of the ``celery_task_*`` families."""

    def __init__(self, runtime_buckets: tuple[float, ...], wait_buckets: tuple[float, ...]) -> None:
        self.runtime_buckets = runtime_buckets
        self.wait_buckets = wait_buckets
        self.counters: dict[str, dict[LabelKey, int]] = {kind: {} for kind in TASK_COUNTERS}
        self.timeouts: dict[LabelKey, int] = {}
        self.runtime: dict[LabelKey, Histogram] = {}
        self.queue_wait: dict[LabelKey, Histogram] = {}
        self.prefetch_wait: dict[LabelKey, Histogram] = {}
        self.failure_windows: dict[LabelKey, FailureWindow] = {}
        #: Tasks started and not finished: label key to task id to start time (added by the
        #: task-started handler, taken off by :meth:`stop` or the final event's handler).
        self.running: dict[LabelKey, dict[str, float]] = {}

    def count_timeout(self, key: LabelKey) -> None:
        """Add one to ``celery_task_timeouts_total`` at ``key`` (labels and kind)."""
        self.timeouts[key] = self.timeouts.get(key, 0) + 1

    def fail(self, key: LabelKey, now: float) -> None:
        """Count a failure in the one-minute window of ``key``."""
        window = self.failure_windows.get(key)
        if window is None:
            window = self.failure_windows[key] = FailureWindow()
        window.add(now)

    def observe_runtime(self, key: LabelKey, value: float) -> None:
        """Observe a runtime at ``key`` (labels and final state)."""
        observe(self.runtime, key, value, self.runtime_buckets)

    def observe_queue_wait(self, key: LabelKey, value: float) -> None:
        """Observe a wait from task-sent (or the ETA) to the start."""
        observe(self.queue_wait, key, value, self.wait_buckets)

    def stop(self, key: LabelKey, uuid: str) -> None:
        """Take a task off ``celery_tasks_active``."""
        running = self.running.get(key)
        if running is not None:
            running.pop(uuid, None)

    def drop_host(self, host: str) -> None:
        """Remove the series labelled with a purged worker (keys whose third label is it)."""
        tables: list[dict[LabelKey, Any]] = [
            *self.counters.values(), self.timeouts, self.runtime, self.queue_wait,
            self.prefetch_wait, self.failure_windows, self.running,
        ]  # fmt: skip
        for table in tables:
            for key in [k for k in table if k[2] == host]:
                del table[key]

    def sent_queues(self) -> set[str]:
        """The queue names task-sent events have named."""
        return {key[1] for key in self.counters["sent"]}


def observe(
    hists: dict[LabelKey, Histogram], key: LabelKey, value: float, bounds: tuple[float, ...]
) -> None:
    """Observe ``value`` in the histogram at ``key`` of ``hists``, made with ``bounds`` if new."""
    hist = hists.get(key)
    if hist is None:
        hist = hists[key] = Histogram(bounds)
    # Histogram.observe, inline: this runs for most events.
    hist.counts[bisect_left(hist.bounds, value)] += 1
    hist.total += value
