"""A real ``celery beat`` with the exporter installed: default scheduler and celery-redbeat.

Beat runs :mod:`tests.support.beatapp` (three entries due every second, one of which cannot be
sent) against the suite's private Redis, with no worker: what beat sent waits in the queue, so
the tests count it there and in beat's log, and compare with what ``/metrics`` says. Also: the
compose stack's beat command run here, and redbeat's Redis read surviving a Redis outage.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml
from celery import Celery
from redbeat.schedulers import RedBeatSchedulerEntry

from celery_exporter.worker.beat_schedule import RedBeatSchedule
from tests.support.beat import BeatProcess, sent_tasks
from tests.support.beatapp import BAD_OPTION, EVERY_SECOND, LAST_ENTRY, TASKS
from tests.support.launchers import RedisServer, free_port, terminate
from tests.support.processes import ROOT, START_TIMEOUT, spawn
from tests.support.scrape import Sample, fetch, scrape, value
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

RUNS = "celery_beat_entry_runs_total"
ERRORS = "celery_beat_entry_send_errors_total"
OVERFLOW = "celery_beat_entries_overflow_total"
LAST_RUN = "celery_beat_entry_last_run_timestamp_seconds"
NEXT_RUN = "celery_beat_entry_next_run_timestamp_seconds"
COUNTERS = (RUNS, ERRORS, OVERFLOW)
#: Redis databases of their own, so the tests' queues and redbeat keys never meet.
DB = {"default": 11, "redbeat": 12, "compose": 13}


@pytest.fixture
def broker(redis_server: RedisServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of an emptied Redis database for this test's beat."""
    url = redis_server.url(DB[request.param])
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    yield url


def counters(samples: dict[Sample, float]) -> dict[Sample, float]:
    """The counter samples of beat's families."""
    return {key: v for key, v in samples.items() if key[0] in COUNTERS}


def settled(
    beat: BeatProcess, broker_url: str, tracked: dict[str, str], overflowing: list[str]
) -> tuple[dict[Sample, float], Counter[str], int]:
    """A scrape that matches the queue and the log, taken between two sends of beat.

    Beat publishes a message just before it counts it, and logs a failed send just after:
    two scrapes with equal counters around the reads make sure none was in flight.
    """

    def once() -> tuple[dict[Sample, float], Counter[str], int] | None:
        before = beat.metrics()
        queued = sent_tasks(broker_url)
        logged = beat.send_errors_logged(BAD_OPTION)
        after = beat.metrics()
        if counters(before) != counters(after):
            return None
        runs_match = all(
            value(after, RUNS, entry=e, task=t) == queued[t] for e, t in tracked.items()
        )
        overflow = sum(queued[TASKS[e]] for e in overflowing)
        errors = value(after, ERRORS, entry=BAD_OPTION, task=TASKS[BAD_OPTION])
        consistent = runs_match and value(after, OVERFLOW) == overflow and errors == logged
        return (after, queued, logged) if consistent and queued[TASKS[EVERY_SECOND]] >= 3 else None

    return wait_for(once, 60, 0.05, "beat's counters to match the queue and its log")


def check_runs(beat: BeatProcess, samples: dict[Sample, float], tracked: dict[str, str]) -> None:
    """Last runs fall within beat's run; next runs are exactly one interval later."""
    now = time.time()
    for entry, task in tracked.items():
        last = value(samples, LAST_RUN, entry=entry, task=task)
        assert beat.started_at <= last <= now, entry
        assert value(samples, NEXT_RUN, entry=entry, task=task) - last == pytest.approx(
            1.0, abs=1e-6
        )
    tick = value(samples, "celery_beat_last_tick_timestamp_seconds")
    assert beat.started_at <= tick <= now


@pytest.mark.parametrize("broker", ["default"], indirect=True)
def test_default_scheduler_counts_what_beat_sent(broker: str, tmp_path: Path) -> None:
    """PersistentScheduler: runs match the queued messages, errors the logged failures, exactly."""
    tracked = {entry: TASKS[entry] for entry in (EVERY_SECOND, BAD_OPTION, LAST_ENTRY)}
    with BeatProcess(broker, tmp_path) as beat:
        samples, queued, logged = settled(beat, broker, tracked, [])
        check_runs(beat, samples, {e: t for e, t in tracked.items() if e != BAD_OPTION})
    assert queued[TASKS[BAD_OPTION]] == 0
    assert value(samples, RUNS, entry=BAD_OPTION, task=TASKS[BAD_OPTION]) == 0
    assert logged >= 3
    assert value(samples, ERRORS, entry=EVERY_SECOND, task=TASKS[EVERY_SECOND]) == 0
    # A failed send still moves the entry on: its last run is when beat tried.
    assert value(samples, LAST_RUN, entry=BAD_OPTION, task=TASKS[BAD_OPTION]) > beat.started_at
    assert value(samples, "celery_beat_info", scheduler="celery.beat.PersistentScheduler") == 1
    assert value(samples, "celery_beat_entries") == 3
    assert value(samples, OVERFLOW) == 0
    assert {k[0] for k in samples if k[0].startswith(("celery_task_", "celery_worker_"))} == set()
    assert list(tmp_path.glob("celerybeat-schedule*"))


@pytest.mark.parametrize("broker", ["redbeat"], indirect=True)
def test_redbeat_scheduler_counts_and_caps_entries(broker: str, tmp_path: Path) -> None:
    """RedBeatScheduler with a cap of 2: the first two entries by name have series, the third's
    sends are counted as overflow; its schedule is read from Redis apart from beat's thread."""
    tracked = {entry: TASKS[entry] for entry in (BAD_OPTION, EVERY_SECOND)}
    with BeatProcess(broker, tmp_path, "redbeat.RedBeatScheduler", max_entries=2) as beat:
        samples, queued, logged = settled(beat, broker, tracked, [LAST_ENTRY])
        check_runs(beat, samples, {EVERY_SECOND: TASKS[EVERY_SECOND]})
    assert queued[TASKS[LAST_ENTRY]] >= 3
    assert value(samples, OVERFLOW) == queued[TASKS[LAST_ENTRY]]
    assert not [k for k in samples if ("entry", LAST_ENTRY) in k[1]]
    assert logged >= 3
    scheduler = "redbeat.schedulers.RedBeatScheduler"
    assert value(samples, "celery_beat_info", scheduler=scheduler) == 1
    assert value(samples, "celery_beat_entries") == 3


@pytest.mark.parametrize("broker", ["compose"], indirect=True)
def test_compose_beat_command_serves_beat_metrics(broker: str, tmp_path: Path) -> None:
    """deploy/compose.yaml's beat command, run here, serves the sample schedule; its check passes."""
    beat = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())["services"]["beat"]
    port = free_port()
    celery = str(Path(sys.executable).parent / "celery")
    argv = [celery if arg == "celery" else arg for arg in [*beat["entrypoint"], *beat["command"]]]
    argv = [
        f"--schedule={tmp_path / 'schedule'}" if a.startswith("--schedule=") else a for a in argv
    ]
    env = {
        **os.environ, **{k: str(v) for k, v in beat["environment"].items()},
        "CELERY_BROKER_URL": broker, "PYTHONPATH": str(ROOT / "deploy" / "compose"),
        "SAMPLEAPP_BEAT_PORT": str(port), "SAMPLEAPP_BEAT_HOST": "127.0.0.1",
    }  # fmt: skip
    process = spawn(argv, env, tmp_path / "beat.log", "compose beat")
    try:
        url = f"http://127.0.0.1:{port}/metrics"

        def serving() -> dict[Sample, float] | None:
            if process.poll() is not None:
                raise RuntimeError((tmp_path / "beat.log").read_text())
            try:
                samples = scrape(url)
            except (OSError, RuntimeError):
                return None
            return (
                samples
                if "celery_beat_last_tick_timestamp_seconds" in {k[0] for k in samples}
                else None
            )

        samples = wait_for(serving, START_TIMEOUT, 0.2, "the compose beat to serve /metrics")
        check = [sys.executable, *beat["healthcheck"]["test"][2:]]
        check[-1] = check[-1].replace(":9810/", f":{port}/")
        assert beat["healthcheck"]["test"][:2] == ["CMD", "python"]
        assert subprocess.run(check, timeout=30).returncode == 0
        assert fetch(url.replace("/metrics", "/healthz"))[0] == 200
    finally:
        terminate(process)
    assert value(samples, "celery_beat_info", scheduler="celery.beat.PersistentScheduler") == 1
    # Celery adds its own celery.backend_cleanup entry (04:00) to the sample's two.
    entries = {dict(k[1])["entry"] for k in samples if k[0] == NEXT_RUN}
    assert entries == {"sync-inventory", "nightly-report", "celery.backend_cleanup"}
    assert value(samples, "celery_beat_entries") == 3
    nightly = value(samples, NEXT_RUN, entry="nightly-report", task="sample.build_report")
    assert time.time() < nightly <= time.time() + 86400
    assert nightly % 86400 == pytest.approx(2 * 3600, abs=0.01)  # 02:00 UTC
    inventory = value(samples, NEXT_RUN, entry="sync-inventory", task="sample.sync_inventory")
    assert 0 < inventory - time.time() <= 30


def test_redbeat_schedule_keeps_its_last_read_while_redis_is_down() -> None:
    """A failed read of redbeat's Redis keeps the last entries; the next good read replaces them."""
    with RedisServer() as server:
        app = Celery("redbeat-read", broker=server.url(), set_as_current=False)
        app.conf.update(redbeat_redis_url=server.url(), redbeat_key_prefix="read-test:")
        every = RedBeatSchedulerEntry("every", "t.every", 5.0, app=app)
        every.save()
        reader = RedBeatSchedule(app, refresh_interval=3600)
        reader.read()
        assert [(e.name, e.task, e.total_run_count) for e in reader.entries()] == [
            ("every", "t.every", 0)
        ]
        assert reader.size() == 1
        # An entry whose definition cannot be decoded is left out; the others are read.
        client = redis.Redis.from_url(server.url())
        client.hset("read-test:broken", "definition", "{not json")
        client.zadd(app.redbeat_conf.schedule_key, {"read-test:broken": 0})
        client.close()
        reader.read()
        assert [e.name for e in reader.entries()] == ["every"]
        assert reader.size() == 2
        server.stop()
        reader.read()
        assert [e.name for e in reader.entries()] == ["every"]
        assert reader.size() == 2
        server.start()  # a new, empty Redis on the same port
        wait_for(lambda: _reads_empty(reader), 10, 0.1, "a read of the empty Redis")
        assert (reader.entries(), reader.size()) == ([], 0)


def _reads_empty(reader: RedBeatSchedule) -> bool:
    """Read once; whether the schedule read is empty."""
    reader.read()
    return reader.size() == 0


def test_beat_blocked_on_an_unreachable_broker_still_answers_with_a_stale_tick(
    tmp_path: Path,
) -> None:
    """While beat waits for the broker in a tick, /metrics answers, its last tick stays put and
    nothing is counted; once the broker is up, beat ticks again and its sends are counted."""
    server = RedisServer()  # not started yet: its port refuses connections
    with BeatProcess(server.url(), tmp_path) as beat:
        # The first tick that sends waits in beat's connection retries ("beat: Connection
        # error ... Trying again"); the ticks before it finish.
        def tick() -> float:
            return value(beat.metrics(), "celery_beat_last_tick_timestamp_seconds")

        def stuck() -> float | None:
            before = tick()
            time.sleep(2.0)
            return before if before and tick() == before else None

        stuck_at = wait_for(stuck, START_TIMEOUT, 0.1, "beat's tick to stop moving")
        blocked = beat.metrics()
        assert value(blocked, "celery_beat_last_tick_timestamp_seconds") == stuck_at
        assert time.time() - stuck_at > 2.0
        assert value(blocked, RUNS, entry=EVERY_SECOND, task=TASKS[EVERY_SECOND]) == 0
        assert value(blocked, NEXT_RUN, entry=EVERY_SECOND, task=TASKS[EVERY_SECOND]) > 0
        with server:

            def sending() -> dict[Sample, float] | None:
                samples = beat.metrics()
                runs = value(samples, RUNS, entry=EVERY_SECOND, task=TASKS[EVERY_SECOND])
                return samples if runs >= 1 else None

            samples = wait_for(sending, 60, 0.2, "beat to reach the broker and send")
            last_tick = value(samples, "celery_beat_last_tick_timestamp_seconds")
            assert stuck_at + 2.0 < last_tick <= time.time()
    assert "beat_observer_failed" not in beat.log()
