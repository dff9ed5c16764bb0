"""Reading beat's schedule without blocking beat: what it holds in memory, or redbeat's Redis.

:class:`MemorySchedule` serves schedulers that keep their entries in a dict (Celery's
``Scheduler`` and ``PersistentScheduler``, whose shelve caches the dict): beat's own thread hands
over a reference to that dict on each tick, and a scrape copies its values (one C-level copy
under the GIL, no storage read). :class:`RedBeatSchedule` serves celery-redbeat, whose beat
holds only the entries due soon: a thread of its own reads every entry from Redis every
``refresh_interval`` seconds, and a scrape reads the last copy. Next runs are computed from each
entry's own schedule (:func:`view`).

Reads no option itself; :mod:`.beat` passes ``beat_refresh_interval``.
"""

from __future__ import annotations

import importlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..log import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class EntryView:
    """One schedule entry as the metrics show it: names, last run and next run (Unix time)."""

    name: str
    task: str
    last_run: float | None
    next_run: float | None


def _aware(sched: Any, moment: Any) -> Any:
    """``moment`` in the schedule's timezone when it is naive, as Celery reads it."""
    make_aware = getattr(sched, "maybe_make_aware", None)
    return make_aware(moment) if callable(make_aware) else moment


def next_run(sched: Any, last_run_at: Any, now: Callable[[], float] = time.time) -> float | None:
    """When ``sched`` runs next after ``last_run_at``: exact for an interval, else estimated now."""
    from celery.schedules import schedule

    if last_run_at is None:
        return None
    if type(sched) is schedule and not sched.relative:
        return float((_aware(sched, last_run_at) + sched.run_every).timestamp())
    remaining = sched.remaining_estimate(last_run_at)
    if remaining is None:
        return None
    return now() + float(remaining.total_seconds())


def view(
    name: str, task: str, sched: Any, last_run_at: Any, runs: int, enabled: bool = True
) -> EntryView:
    """The view of one entry; no last run before beat recorded one (``total_run_count`` 0)."""
    last = float(_aware(sched, last_run_at).timestamp()) if runs and last_run_at else None
    return EntryView(name, task, last, next_run(sched, last_run_at) if enabled else None)


def views(entries: Iterable[Any], wanted: Callable[[str, str], bool]) -> list[EntryView]:
    """The views of Celery ``ScheduleEntry`` objects that ``wanted(name, task)`` admits."""
    out = []
    for entry in entries:
        name, task = str(entry.name), str(entry.task)
        if wanted(name, task):
            runs = int(getattr(entry, "total_run_count", 0) or 0)
            enabled = bool(getattr(entry, "enabled", True))
            out.append(view(name, task, entry.schedule, entry.last_run_at, runs, enabled))
    return out


def holds_dict(scheduler: Any) -> bool:
    """Whether ``scheduler.schedule`` is a dict it holds, read without any storage access.

    Celery's own ``schedule`` property returns it (a shelve's cached dict for
    ``PersistentScheduler``). A scheduler that overrides the property may read storage in it
    (django-celery-beat asks its database): no entry views for it.
    """
    from celery.beat import PersistentScheduler, Scheduler

    prop = getattr(type(scheduler), "schedule", None)
    return prop is Scheduler.schedule or prop is PersistentScheduler.schedule


class MemorySchedule:
    """The dict a scheduler keeps its entries in, handed over by beat's thread on each tick."""

    def __init__(self, scheduler: Any) -> None:
        self._entries: Mapping[str, Any] | None = None
        self._readable = holds_dict(scheduler)

    def refresh(self, scheduler: Any) -> None:
        """On beat's thread, after a tick: keep a reference to the scheduler's current dict."""
        if self._readable:
            held = scheduler.schedule
            self._entries = held if isinstance(held, dict) else None

    def entries(self) -> list[Any]:
        """A copy of the entries, sorted by name."""
        held = self._entries
        if held is None:
            return []
        copied = list(held.values())
        return sorted(copied, key=lambda entry: str(entry.name))

    def size(self) -> int | None:
        """How many entries the schedule has; None for a schedule that is not read."""
        held = self._entries
        return len(held) if held is not None else None

    def start(self, stop: threading.Event) -> None:
        """Nothing runs in the background."""


@dataclass(frozen=True)
class RedBeatEntry:
    """One redbeat entry read from Redis: what :func:`views` reads of an entry."""

    name: str
    task: str
    schedule: Any
    last_run_at: Any
    total_run_count: int
    enabled: bool


class RedBeatSchedule:
    """celery-redbeat's entries, read from Redis every ``refresh_interval`` s on a thread."""

    def __init__(self, app: Any, refresh_interval: float) -> None:
        self.app = app
        self.refresh_interval = refresh_interval
        self._entries: list[RedBeatEntry] = []
        self._size = 0
        self._failing = False
        self._unreadable: set[str] = set()

    def refresh(self, scheduler: Any) -> None:
        """Nothing to take from beat's thread: the reading thread does the work."""

    def entries(self) -> list[RedBeatEntry]:
        """The entries of the last read, sorted by name."""
        return self._entries

    def size(self) -> int | None:
        """How many entries the schedule had at the last read."""
        return self._size

    def start(self, stop: threading.Event) -> None:
        """Read once now, then every ``refresh_interval`` s on a daemon thread until ``stop``."""
        self.read()

        def loop() -> None:
            while not stop.wait(self.refresh_interval):
                self.read()

        threading.Thread(target=loop, name="beat-schedule", daemon=True).start()

    def read(self) -> None:
        """Read every entry from Redis; on failure keep the last read and log once."""
        try:
            entries, size = self._read()
        except Exception as exc:
            if not self._failing:
                log.warning("beat_schedule_unreadable", scheduler="redbeat", error=str(exc))
            self._failing = True
            return
        self._failing = False
        self._entries, self._size = entries, size

    def _read(self) -> tuple[list[RedBeatEntry], int]:
        schedulers = importlib.import_module("redbeat.schedulers")
        decoder = importlib.import_module("redbeat.decoder").RedBeatJSONDecoder
        client = schedulers.get_redis(self.app)
        keys = [_text(key) for key in client.zrange(self.app.redbeat_conf.schedule_key, 0, -1)]
        with client.pipeline() as pipe:
            for key in keys:
                pipe.hmget(key, "definition", "meta")
            rows = pipe.execute() if keys else []
        entries = []
        for key, (definition, meta) in zip(keys, rows, strict=True):
            if not definition:
                continue  # deleted between the two reads
            try:
                spec = json.loads(definition, cls=decoder)
                state = json.loads(meta, cls=decoder) if meta else {}
                entry = RedBeatEntry(
                    name=str(spec.get("name") or key),
                    task=str(spec.get("task")),
                    schedule=spec["schedule"],
                    last_run_at=state.get("last_run_at"),
                    total_run_count=int(state.get("total_run_count") or 0),
                    enabled=bool(spec.get("enabled", True)),
                )
            except Exception as exc:  # one entry redbeat cannot load either: left out
                if key not in self._unreadable:
                    log.warning("beat_entry_unreadable", key=key, error=str(exc))
                    self._unreadable.add(key)
                continue
            entries.append(entry)
        entries.sort(key=lambda entry: entry.name)
        return entries, len(keys)


def _text(key: Any) -> str:
    """A Redis key as text."""
    return key.decode() if isinstance(key, bytes) else str(key)


def schedule_for(
    scheduler: Any, app: Any, refresh_interval: float
) -> MemorySchedule | RedBeatSchedule:
    """The reader that fits ``scheduler``'s class (redbeat, or one that holds a dict)."""
    if type(scheduler).__module__.split(".")[0] == "redbeat":
        return RedBeatSchedule(app, refresh_interval)
    return MemorySchedule(scheduler)
