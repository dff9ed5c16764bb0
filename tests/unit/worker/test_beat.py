"""Beat's exporter in-process: a real Celery scheduler on the in-memory transport, ticked by hand."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, signals
from celery.beat import Scheduler
from celery.schedules import crontab, schedule
from prometheus_client import generate_latest

from celery_exporter.worker import BeatExporter, WorkerExporter, install
from celery_exporter.worker.beat import BeatState, beat_of
from celery_exporter.worker.beat_collector import FAMILIES
from celery_exporter.worker.beat_schedule import next_run, view
from tests.support.launchers import free_port
from tests.support.scrape import fetch, parse_metrics, value

README = (Path(__file__).resolve().parents[3] / "README.md").read_text()
EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


class Service:
    """What beat_init sends: the beat service, with its app and its one scheduler."""

    def __init__(self, app: Any, scheduler: Any) -> None:
        self.app = app
        self.scheduler = scheduler


def beat_app(**entries: dict[str, Any]) -> Celery:
    """A Celery app on the in-memory transport with ``entries`` as its beat schedule."""
    app = Celery("beat-unit", broker="memory://", set_as_current=False)
    app.conf.update(result_expires=None, beat_schedule=entries)
    return app


EVERY = {"task": "t.every", "schedule": timedelta(seconds=1)}
BAD = {"task": "t.bad", "schedule": 1.0, "options": {"serializer": "no-such-serializer"}}


@pytest.fixture
def beat() -> Iterator[tuple[BeatExporter, Scheduler]]:
    """A started beat exporter over a real scheduler with one good and one failing entry."""
    app = beat_app(every=EVERY, bad=BAD)
    worker = WorkerExporter(app, port=free_port(), host="127.0.0.1")
    exporter = BeatExporter(worker)
    scheduler = Scheduler(app)
    exporter.start(scheduler)
    yield exporter, scheduler
    exporter.stop()


def scraped(exporter: BeatExporter) -> dict[Any, float]:
    """What /metrics would serve now."""
    return parse_metrics(generate_latest(exporter.registry).decode())


def run_due(scheduler: Scheduler, entries: list[str]) -> None:
    """Make ``entries`` due and tick until beat has sent each once."""
    for name in entries:
        scheduler.schedule[name].last_run_at = EPOCH
    scheduler._heap = None  # re-read the schedule, as beat does when it changes
    for _ in range(len(entries) + 1):
        scheduler.tick()


def test_sends_and_send_errors_are_counted_by_entry(beat: tuple[BeatExporter, Scheduler]) -> None:
    """Each tick's send counts in runs_total, a send that raised in send_errors_total."""
    exporter, scheduler = beat
    run_due(scheduler, ["every", "bad"])
    run_due(scheduler, ["every"])
    got = scraped(exporter)
    runs = "celery_beat_entry_runs_total"
    errors = "celery_beat_entry_send_errors_total"
    assert value(got, runs, entry="every", task="t.every") == 2
    assert value(got, runs, entry="bad", task="t.bad") == 0
    assert value(got, errors, entry="bad", task="t.bad") == 1
    assert value(got, errors, entry="every", task="t.every") == 0
    assert scheduler.schedule["every"].total_run_count == 2
    assert value(got, "celery_beat_entries") == 2
    assert value(got, "celery_beat_entries_overflow_total") == 0
    assert value(got, "celery_beat_info", scheduler="celery.beat.Scheduler") == 1


def test_last_and_next_run_come_from_the_entry(beat: tuple[BeatExporter, Scheduler]) -> None:
    """last_run is the entry's last_run_at once it ran; next_run is one interval later."""
    exporter, scheduler = beat
    before = scraped(exporter)
    assert not [k for k in before if k[0] == "celery_beat_entry_last_run_timestamp_seconds"]
    run_due(scheduler, ["every"])
    entry = scheduler.schedule["every"]
    got = scraped(exporter)
    last = value(got, "celery_beat_entry_last_run_timestamp_seconds", entry="every", task="t.every")
    following = value(
        got, "celery_beat_entry_next_run_timestamp_seconds", entry="every", task="t.every"
    )
    assert last == entry.last_run_at.timestamp()
    assert following == (entry.last_run_at + timedelta(seconds=1)).timestamp()


def test_tick_time_is_recorded_after_each_tick() -> None:
    """celery_beat_last_tick_timestamp_seconds is the exporter clock's time of the last tick."""
    app = beat_app(every=EVERY)
    times = iter([100.0, 250.0])
    worker = WorkerExporter(app, port=free_port(), host="127.0.0.1", clock=lambda: next(times))
    exporter = BeatExporter(worker)
    scheduler = Scheduler(app)
    exporter.start(scheduler)
    try:
        assert "celery_beat_last_tick_timestamp_seconds" not in {k[0] for k in scraped(exporter)}
        scheduler.tick()
        assert value(scraped(exporter), "celery_beat_last_tick_timestamp_seconds") == 100
        scheduler.tick()
        assert value(scraped(exporter), "celery_beat_last_tick_timestamp_seconds") == 250
    finally:
        exporter.stop()


def test_entries_past_the_cap_are_counted_as_overflow() -> None:
    """With a cap of one entry, the first by name has series; the other's sends are overflow."""
    app = beat_app(a_first=EVERY, b_second={**EVERY, "task": "t.second"})
    exporter = BeatExporter(WorkerExporter(app, port=free_port(), host="127.0.0.1"), 1)
    scheduler = Scheduler(app)
    exporter.start(scheduler)
    try:
        run_due(scheduler, ["a_first", "b_second"])
        got = scraped(exporter)
    finally:
        exporter.stop()
    assert value(got, "celery_beat_entry_runs_total", entry="a_first", task="t.every") == 1
    assert not [k for k in got if ("entry", "b_second") in k[1]]
    assert value(got, "celery_beat_entries_overflow_total") == 1
    assert value(got, "celery_beat_entries") == 2


def test_state_caps_distinct_entries_and_counts_the_rest() -> None:
    """BeatState admits up to max_entries (entry, task) pairs and counts others' sends apart."""
    state = BeatState(2)
    state.sent("a", "t", True)
    state.sent("b", "t", False)
    state.sent("c", "t", True)
    state.sent("a", "t", True)
    runs, errors, overflow = state.snapshot()
    assert runs == {("a", "t"): 2, ("b", "t"): 0}
    assert errors == {("a", "t"): 0, ("b", "t"): 1}
    assert overflow == 1
    assert state.admit("a", "t") and not state.admit("c", "t")


def test_next_run_of_an_interval_is_exact_and_of_a_crontab_estimated() -> None:
    """An interval's next run is last_run_at + run_every; a crontab's is now + remaining."""
    app = beat_app()
    every = schedule(timedelta(seconds=30), app=app)
    assert next_run(every, EPOCH) == EPOCH.timestamp() + 30
    assert next_run(every, None) is None
    hourly = crontab(minute=0, app=app, nowfun=lambda: EPOCH + timedelta(minutes=20))
    assert next_run(hourly, EPOCH, now=lambda: 1000.0) == 1000.0 + 40 * 60


def test_an_entry_that_never_ran_has_no_last_run() -> None:
    """total_run_count 0 (beat's record of no run yet) leaves last_run out; disabled: no next."""
    every = schedule(timedelta(seconds=5), app=beat_app())
    assert view("e", "t", every, EPOCH, 0).last_run is None
    assert view("e", "t", every, EPOCH, 3).last_run == EPOCH.timestamp()
    assert view("e", "t", every, EPOCH, 3, enabled=False).next_run is None


def test_install_serves_beat_on_beat_init_only_for_its_app() -> None:
    """beat_init for the installed app starts serving beat's families; another app's is ignored."""
    app = beat_app(every=EVERY)
    port = free_port()
    worker = install(app, port=port, host="127.0.0.1")
    beat = beat_of(worker)
    assert beat is not None
    try:
        other = beat_app()
        signals.beat_init.send(sender=Service(other, Scheduler(other)))
        assert beat.server is None
        signals.beat_init.send(sender=Service(app, Scheduler(app)))
        assert beat.server is not None
        status, body = fetch(f"http://127.0.0.1:{port}/metrics")
        got = parse_metrics(body.decode())
        assert status == 200
        assert value(got, "celery_beat_info", scheduler="celery.beat.Scheduler") == 1
        assert {k[0] for k in got if k[0].startswith(("celery_task_", "celery_worker_"))} == set()
    finally:
        beat.stop()
        worker.disconnect()


def test_an_embedded_beat_in_a_serving_worker_is_not_served() -> None:
    """beat_init in a worker's main process (worker -B) starts nothing: the port is the worker's."""
    app = beat_app(every=EVERY)
    worker = WorkerExporter(app, port=free_port(), host="127.0.0.1")
    beat = BeatExporter(worker)
    beat.connect()
    worker.role = "main"
    try:
        signals.beat_init.send(sender=Service(app, Scheduler(app)))
        assert (beat.started, beat.server) == (False, None)
    finally:
        worker.disconnect()


def test_a_failing_schedule_read_is_counted_and_beat_ticks_on(
    beat: tuple[BeatExporter, Scheduler],
) -> None:
    """An exception of ours on beat's thread is logged and counted; the tick's result stands."""
    exporter, scheduler = beat
    assert exporter.schedule is not None

    def broken(_: Any) -> None:
        raise RuntimeError("bug")

    exporter.schedule.refresh = broken  # type: ignore[method-assign]
    assert scheduler.tick() >= 0
    assert exporter.internal_errors.counts() == {"beat": 1}


class StorageScheduler(Scheduler):
    """A scheduler whose ``schedule`` property reads its storage (as django-celery-beat's)."""

    reads = 0

    @property
    def schedule(self) -> Any:
        """The entries, counted as one storage read."""
        self.reads += 1
        return self.data


def test_a_scheduler_that_reads_storage_is_never_read_by_the_exporter() -> None:
    """Its schedule is left alone (no entry views); sends, errors and ticks are still counted."""
    app = beat_app(every=EVERY)
    exporter = BeatExporter(WorkerExporter(app, port=free_port(), host="127.0.0.1"))
    scheduler = StorageScheduler(app)
    exporter.start(scheduler)
    try:
        assert exporter.schedule is not None
        reads = scheduler.reads
        exporter.schedule.refresh(scheduler)
        got = scraped(exporter)
        assert scheduler.reads == reads
        scheduler.data["every"].last_run_at = EPOCH
        scheduler._heap = None
        scheduler.tick()
        got = scraped(exporter)
    finally:
        exporter.stop()
    assert value(got, "celery_beat_entry_runs_total", entry="every", task="t.every") == 1
    assert {k[0] for k in got} & {NEXT, LAST, "celery_beat_entries"} == set()
    assert value(got, "celery_beat_info", scheduler=f"{__name__}.StorageScheduler") == 1


NEXT = "celery_beat_entry_next_run_timestamp_seconds"
LAST = "celery_beat_entry_last_run_timestamp_seconds"


def test_readme_documents_every_beat_family() -> None:
    """Each family beat serves is named in the README."""
    suffix = {"counter": "_total", "info": "_info"}
    names = {f.name + suffix.get(f.kind, "") for f in FAMILIES}
    for name in sorted(names):
        assert f"`{name}`" in README, name
