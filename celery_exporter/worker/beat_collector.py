"""Celery beat's families: its entries' last and next runs, its sends, its ticks, its scheduler.

Reads no option itself; the cap on entries is :class:`~.beat.BeatState`'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from ..collectors.base import Family, describe
from ..collectors.exporter import BUILD, build_info
from ..log import get_logger
from .beat_schedule import EntryView, MemorySchedule, RedBeatSchedule, views

if TYPE_CHECKING:
    from .beat import BeatState

log = get_logger(__name__)

_ENTRY = ("entry", "task")
LAST_RUN = Family(
    "celery_beat_entry_last_run_timestamp_seconds",
    "gauge",
    "When beat last sent the entry's task, as its schedule records it (absent before a first run).",
    _ENTRY,
)
NEXT_RUN = Family(
    "celery_beat_entry_next_run_timestamp_seconds",
    "gauge",
    "When the entry is due next, from its schedule and its last run.",
    _ENTRY,
)
RUNS = Family(
    "celery_beat_entry_runs",
    "counter",
    "Tasks this beat has sent for the entry since it started.",
    _ENTRY,
)
SEND_ERRORS = Family(
    "celery_beat_entry_send_errors",
    "counter",
    "Times this beat could not send the entry's task (the broker refused, a bad option).",
    _ENTRY,
)
LAST_TICK = Family(
    "celery_beat_last_tick_timestamp_seconds",
    "gauge",
    "When beat's scheduler last finished a tick (it ticks at least every beat_max_loop_interval).",
)
ENTRIES = Family("celery_beat_entries", "gauge", "Entries in beat's schedule, past the cap too.")
OVERFLOW = Family(
    "celery_beat_entries_overflow",
    "counter",
    "Sends and send errors of entries past the cap on entries, which no entry series counts.",
)
INFO = Family("celery_beat", "info", "The scheduler class beat runs.", ("scheduler",))
FAMILIES = (LAST_RUN, NEXT_RUN, RUNS, SEND_ERRORS, LAST_TICK, ENTRIES, OVERFLOW, INFO)


class BeatCollector:
    """Beat's families, from the counts of :class:`~.beat.BeatState` and a copy of the schedule."""

    name = "beat"

    def __init__(
        self, state: BeatState, schedule: MemorySchedule | RedBeatSchedule, scheduler: str
    ) -> None:
        self.state = state
        self.schedule = schedule
        self.scheduler = scheduler
        self.build = dict(build_info())
        self.failed_entries: set[str] = set()

    def describe(self) -> Iterable[Metric]:
        """Yield every family ``collect()`` yields, without samples."""
        return describe((*FAMILIES, BUILD))

    def entry_views(self) -> list[EntryView]:
        """The entries with series of their own, their runs computed now."""
        out = []
        for entry in self.schedule.entries():
            try:
                out.extend(views([entry], self.state.admit))
            except Exception as exc:
                # A schedule that cannot say its next run (beat logs it too): left out.
                name = str(getattr(entry, "name", ""))
                if name not in self.failed_entries:
                    log.warning("beat_entry_unreadable", entry=name, error=str(exc))
                    self.failed_entries.add(name)
        return out

    def collect(self) -> Iterator[Metric]:
        """Yield the entry families, the last tick, the entry count, overflow and info."""
        last, following = LAST_RUN.gauge(), NEXT_RUN.gauge()
        for entry in self.entry_views():
            if entry.last_run is not None:
                last.add_metric([entry.name, entry.task], entry.last_run)
            if entry.next_run is not None:
                following.add_metric([entry.name, entry.task], entry.next_run)
        yield last
        yield following
        runs, errors, overflow = self.state.snapshot()
        runs_family, errors_family = RUNS.counter(), SEND_ERRORS.counter()
        for (name, task), count in sorted(runs.items()):
            runs_family.add_metric([name, task], count)
        for (name, task), count in sorted(errors.items()):
            errors_family.add_metric([name, task], count)
        yield runs_family
        yield errors_family
        tick = LAST_TICK.gauge()
        if self.state.last_tick is not None:
            tick.add_metric([], self.state.last_tick)
        yield tick
        size, entries = self.schedule.size(), ENTRIES.gauge()
        if size is not None:  # absent for a scheduler whose schedule is not read
            entries.add_metric([], size)
        yield entries
        yield OVERFLOW.value(overflow)
        info = INFO.info()
        info.add_metric([self.scheduler], {})
        yield info
        build = BUILD.info()
        build.add_metric([], self.build)
        yield build
