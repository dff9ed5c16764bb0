"""The one collector contract, and the wrapper that gives every collector its self-metrics.

A collector has a ``name``, ``describe()`` and ``collect()``. :class:`Collectors` is what the
registry holds: it runs each collector's ``collect()`` through :func:`execute`, as
node_exporter does, and adds, per collector:

- ``celery_exporter_collector_success{collector}``: 1 when its last run succeeded, else 0.
- ``celery_exporter_collector_duration_seconds{collector}``: how long its last run took.
- ``celery_exporter_collector_last_success_timestamp_seconds{collector}``: background
  collectors only, when a poll last succeeded (absent until one has).

A background collector (one that polls on its own thread, :mod:`.polling`) also has
``status()``: its last poll's outcome stands for its success and duration, since its
``collect()`` only reads what that poll kept. A partial collector (:class:`Partial`, the
resource one) says itself when a read failed. A collector that raises is a bug of ours: it is
logged with its traceback and counted in ``celery_exporter_internal_errors_total``
(``where="collector_<name>"``), its success reads 0, and the others render as usual.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector as Registered

from ..internal import InternalErrors
from ..log import get_logger

log = get_logger(__name__)

_KINDS: dict[str, Callable[..., Metric]] = {
    "counter": CounterMetricFamily,
    "gauge": GaugeMetricFamily,
    "histogram": HistogramMetricFamily,
    "info": InfoMetricFamily,
}


@dataclass(frozen=True)
class Family:
    """One metric family's name, type, help and label names, defined once for both methods.

    The methods that build a family take ``leading``: label names that go before the spec's
    own, for families whose first labels are configured (the task labels).
    """

    name: str
    kind: str
    help: str
    labels: tuple[str, ...] = ()

    def _labels(self, leading: Sequence[str]) -> list[str]:
        return [*leading, *self.labels]

    def new(self, leading: Sequence[str] = ()) -> Metric:
        """An empty family to add samples to."""
        return _KINDS[self.kind](self.name, self.help, labels=self._labels(leading))

    def gauge(self, leading: Sequence[str] = ()) -> GaugeMetricFamily:
        """An empty gauge family (typed for callers that add samples)."""
        assert self.kind == "gauge"
        return GaugeMetricFamily(self.name, self.help, labels=self._labels(leading))

    def counter(self, leading: Sequence[str] = ()) -> CounterMetricFamily:
        """An empty counter family (typed for callers that add samples)."""
        assert self.kind == "counter"
        return CounterMetricFamily(self.name, self.help, labels=self._labels(leading))

    def histogram(self, leading: Sequence[str] = ()) -> HistogramMetricFamily:
        """An empty histogram family (typed for callers that add samples)."""
        assert self.kind == "histogram"
        return HistogramMetricFamily(self.name, self.help, labels=self._labels(leading))

    def info(self, leading: Sequence[str] = ()) -> InfoMetricFamily:
        """An empty info family (typed for callers that add samples)."""
        assert self.kind == "info"
        return InfoMetricFamily(self.name, self.help, labels=self._labels(leading))

    def value(self, number: float) -> Metric:
        """The unlabelled gauge or counter family with its one sample."""
        assert not self.labels
        family = self.counter() if self.kind == "counter" else self.gauge()
        family.add_metric([], number)
        return family


@dataclass(frozen=True)
class Status:
    """How a collector's last run went: success, duration and when it last succeeded."""

    success: bool
    duration: float
    last_success: float | None = None


@runtime_checkable
class Collector(Protocol):
    """What every collector of this exporter is."""

    name: str

    def describe(self) -> Iterable[Metric]:
        """Yield every family ``collect()`` may yield, without samples."""
        ...

    def collect(self) -> Iterable[Metric]:
        """Yield the families with their samples, read now."""
        ...


@runtime_checkable
class Background(Protocol):
    """A collector whose work runs on its own schedule; ``collect()`` reads its last result."""

    def status(self) -> Status | None:
        """The last poll's outcome; None before the first poll has ended."""
        ...


@runtime_checkable
class Partial(Protocol):
    """A scrape-time collector that can fail in part: what it read renders, its success is 0."""

    def collect_partial(self) -> tuple[list[Metric], bool]:
        """The families read now, and whether every read succeeded."""
        ...


def describe(families: Iterable[Family]) -> Iterator[Metric]:
    """Empty families, for a collector's ``describe()``."""
    return (family.new() for family in families)


SUCCESS = Family(
    "celery_exporter_collector_success",
    "gauge",
    "1 when the collector's last run (for a background collector, its last poll) succeeded, "
    "else 0.",
    ("collector",),
)
DURATION = Family(
    "celery_exporter_collector_duration_seconds",
    "gauge",
    "How long the collector's last run (for a background collector, its last poll) took.",
    ("collector",),
)
LAST_SUCCESS = Family(
    "celery_exporter_collector_last_success_timestamp_seconds",
    "gauge",
    "When the background collector's last successful poll ended.",
    ("collector",),
)
SELF_FAMILIES = (SUCCESS, DURATION, LAST_SUCCESS)


def execute(
    collector: Collector,
    errors: InternalErrors | None = None,
    timer: Callable[[], float] = time.perf_counter,
) -> tuple[list[Metric], Status | None]:
    """Run one collector's ``collect()``; return its families and the status to report.

    A collector that raises yields nothing and reads success 0. A :class:`Background`
    collector's status is its last poll's (None before that poll, unless ``collect()`` raised);
    a :class:`Partial` one fails when a read failed.
    """
    started = timer()
    try:
        if isinstance(collector, Partial):
            families, ok = collector.collect_partial()
        else:
            families, ok = list(collector.collect()), True
        raised = False
    except Exception:
        log.exception("collector_raised", collector=collector.name)
        if errors is not None:
            errors.count(f"collector_{collector.name}")
        families, ok, raised = [], False, True
    took = timer() - started
    if isinstance(collector, Background):
        status = collector.status()
        if raised:
            status = (
                Status(False, took)
                if status is None
                else Status(False, status.duration, status.last_success)
            )
        return families, status
    return families, Status(ok, took)


class Collectors(Registered):
    """What the registry holds: every collector, each run through :func:`execute`."""

    def __init__(
        self,
        collectors: Sequence[Collector],
        errors: InternalErrors | None = None,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        names = [c.name for c in collectors]
        if len(set(names)) != len(names):
            raise ValueError(f"collector names must differ: {names}")
        self.collectors = list(collectors)
        self.errors = errors
        self.timer = timer

    def describe(self) -> Iterator[Metric]:
        """Yield every collector's families and the self-metrics, without samples."""
        for collector in self.collectors:
            yield from collector.describe()
        yield from describe(SELF_FAMILIES)
        if self.errors is not None:
            yield from self.errors.describe()

    def collect(self) -> Iterator[Metric]:
        """Yield every collector's families, then each one's success and duration."""
        success, duration, last = SUCCESS.gauge(), DURATION.gauge(), LAST_SUCCESS.gauge()
        for collector in self.collectors:
            families, status = execute(collector, self.errors, self.timer)
            yield from families
            if status is None:
                continue
            label = [collector.name]
            success.add_metric(label, 1 if status.success else 0)
            duration.add_metric(label, status.duration)
            if status.last_success is not None:
                last.add_metric(label, status.last_success)
        yield from (success, duration, last)
        if self.errors is not None:
            yield from self.errors.collect()
