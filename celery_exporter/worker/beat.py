"""Celery beat's own metrics, served from the beat process that ``install(app)`` runs in.

On Celery's ``beat_init``, sent by ``celery beat`` (an embedded ``worker -B`` beat shares the
worker's process and port, and is left alone), the exporter wraps the methods of that one
scheduler instance: ``tick`` notes when it ran and hands the schedule it holds to
:mod:`.beat_schedule`; ``apply_async`` counts each send and each send that raised, by entry and
task. Nothing else happens on beat's thread: a scrape computes next
runs from a copy of the entries on the HTTP thread, and a scheduler that keeps its entries
elsewhere (celery-redbeat: Redis) is read by a thread of its own. ``/metrics`` then serves the
families of :mod:`.beat_collector`, no pool or task families.

Options of :func:`celery_exporter.worker.install` read here (besides ``port``, ``host``,
``web_config_file`` and ``registry``, the same as for workers):

- ``beat_max_entries`` (500): entries with series of their own; sends of entries past it are
  counted in ``celery_beat_entries_overflow_total`` only.
- ``beat_refresh_interval`` (5 s): how often the schedule of a scheduler that keeps it in
  Redis (celery-redbeat) is read.
"""

from __future__ import annotations

import functools
import threading
import weakref
from typing import TYPE_CHECKING, Any

from ..collectors.base import Collectors
from ..log import forward_to_logging, get_logger
from ..web.health import Health
from ..web.server import MetricsServer
from ..web.webconfig import WebConfigError, WebConfigWatcher
from .beat_collector import BeatCollector
from .beat_schedule import MemorySchedule, RedBeatSchedule, schedule_for

if TYPE_CHECKING:
    from .exporter import WorkerExporter

log = get_logger(__name__)

DEFAULT_MAX_ENTRIES = 500
DEFAULT_REFRESH_INTERVAL = 5.0
#: The beat exporter connected alongside each worker exporter (see :func:`beat_of`); weak both
#: ways, so neither outlives its signal receivers for this.
_CONNECTED: weakref.WeakKeyDictionary[WorkerExporter, weakref.ref[BeatExporter]] = (
    weakref.WeakKeyDictionary()
)


def beat_of(worker: WorkerExporter) -> BeatExporter | None:
    """The beat exporter ``install()`` connected alongside ``worker``, if any."""
    ref = _CONNECTED.get(worker)
    return ref() if ref is not None else None


class BeatState:
    """Sends and send errors by (entry, task), the last tick, and which entries have series."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._tracked: set[tuple[str, str]] = set()
        self.runs: dict[tuple[str, str], int] = {}
        self.errors: dict[tuple[str, str], int] = {}
        self.overflow = 0
        self.last_tick: float | None = None

    def admit(self, name: str, task: str) -> bool:
        """Whether (name, task) has series: it has, or there is room under the cap."""
        with self._lock:
            return self._admit((name, task))

    def _admit(self, key: tuple[str, str]) -> bool:
        """:meth:`admit`, with the lock held."""
        if key in self._tracked:
            return True
        if len(self._tracked) >= self.max_entries:
            return False
        self._tracked.add(key)
        self.runs[key] = 0
        self.errors[key] = 0
        return True

    def sent(self, name: str, task: str, ok: bool) -> None:
        """Count one send of an entry (``ok``) or one that raised."""
        key = (name, task)
        with self._lock:
            if not self._admit(key):
                self.overflow += 1
            elif ok:
                self.runs[key] += 1
            else:
                self.errors[key] += 1

    def snapshot(self) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int], int]:
        """Copies of the send counts, the error counts and the overflow."""
        with self._lock:
            return dict(self.runs), dict(self.errors), self.overflow


class BeatExporter:
    """Wraps one beat's scheduler and serves its metrics; built by ``install()`` for every app."""

    def __init__(
        self,
        worker: WorkerExporter,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
    ) -> None:
        self.worker = worker
        self.app = worker.app
        self.clock = worker.clock
        self.internal_errors = worker.internal_errors
        self.refresh_interval = refresh_interval
        # worker_init never comes in a beat process: the worker's registry is beat's to serve.
        self.registry = worker.registry
        self.state = BeatState(max_entries)
        self.schedule: MemorySchedule | RedBeatSchedule | None = None
        self.scheduler_name = ""
        self.server: MetricsServer | None = None
        self.started = False
        self._stop = threading.Event()

    def connect(self) -> None:
        """Start on ``beat_init``, through the worker exporter's receivers (same guard)."""
        self.worker.receivers.attach("beat_init", self._on_beat_init)
        _CONNECTED[self.worker] = weakref.ref(self)

    def _on_beat_init(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not self.app or self.started:
            return
        if self.worker.role != "idle":
            # An embedded beat (worker -B) shares the worker's process and port: not served.
            log.warning("beat_exporter_embedded_beat_not_served", hint="run celery beat apart")
            return
        self.start(sender.scheduler)

    def start(self, scheduler: Any) -> None:
        """Observe ``scheduler`` (beat's one instance) and serve its metrics."""
        forward_to_logging()
        self.started = True
        cls = type(scheduler)
        self.scheduler_name = f"{cls.__module__}.{cls.__qualname__}"
        self.schedule = schedule_for(scheduler, self.app, self.refresh_interval)
        self.schedule.refresh(scheduler)
        self.schedule.start(self._stop)  # redbeat: one first read of Redis, here
        for entry in self.schedule.entries():  # the first entries by name get series
            self.state.admit(str(entry.name), str(entry.task))
        self._wrap(scheduler)
        collector = BeatCollector(self.state, self.schedule, self.scheduler_name)
        self.registry.register(Collectors([collector], self.internal_errors))
        self._serve(self.worker.port)

    def _wrap(self, scheduler: Any) -> None:
        """Replace this instance's ``tick`` and ``apply_async`` with counting ones."""
        tick, apply_async = scheduler.tick, scheduler.apply_async
        state, schedule, clock = self.state, self.schedule, self.clock
        assert schedule is not None

        @functools.wraps(tick)
        def counted_tick(*args: Any, **kwargs: Any) -> Any:
            # A tick that raised did not finish (at shutdown beat's SystemExit comes through
            # here, after the store was closed): nothing is noted then.
            result = tick(*args, **kwargs)
            state.last_tick = clock()
            self._guarded(schedule.refresh, scheduler)
            return result

        @functools.wraps(apply_async)
        def counted_apply_async(entry: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                result = apply_async(entry, *args, **kwargs)
            except Exception:  # not beat's SystemExit at shutdown: no send error
                self._guarded(self._count, entry, False)
                raise
            self._guarded(self._count, entry, True)
            return result

        scheduler.tick = counted_tick
        scheduler.apply_async = counted_apply_async

    def _count(self, entry: Any, ok: bool) -> None:
        self.state.sent(str(entry.name), str(entry.task), ok)

    def _guarded(self, func: Any, *args: Any) -> None:
        """Call ``func``; an exception (a bug of ours) is logged and counted, never raised."""
        try:
            func(*args)
        except Exception:
            log.exception("beat_observer_failed")
            self.internal_errors.count("beat")

    def _serve(self, port: int) -> None:
        """Serve /metrics, or log why it cannot and let beat run on without it."""
        health = Health()
        health.connected()
        host, config = self.worker.host, self.worker.web_config_file
        try:
            web = WebConfigWatcher(config) if config else None
            self.server = MetricsServer(
                host, port, self.registry, health.view, title="Celery beat exporter",
                about=f"Metrics of Celery beat ({self.scheduler_name}).", web=web,
            )  # fmt: skip
        except OSError as exc:
            log.error(
                "beat_exporter_cannot_listen", host=host, port=port, error=str(exc),
                hint="pass another port to celery_exporter.worker.install(app, port=...)",
            )  # fmt: skip
            return
        except WebConfigError as exc:
            log.error(
                "beat_exporter_bad_web_config", path=config, error=str(exc),
                hint="fix the file given to celery_exporter.worker.install(web_config_file=...)",
            )  # fmt: skip
            return
        self.server.start()
        log.info("beat_exporter_listening", scheduler=self.scheduler_name, port=self.server.port)

    def stop(self) -> None:
        """Stop serving and reading the schedule."""
        self._stop.set()
        if self.server is not None:
            self.server.stop()
            self.server = None
