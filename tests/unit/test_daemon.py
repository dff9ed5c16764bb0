"""The daemon's own timer: down workers are purged without any scrape."""

from __future__ import annotations

import threading

from celery_exporter.daemon import Purger
from celery_exporter.state import ClusterState, Settings
from tests.support.clock import ManualClock
from tests.support.waiting import wait_for

T0 = 1_700_000_000.0


def test_purger_removes_down_workers_with_no_scrape() -> None:
    """A worker down past worker_purge_after is removed by the purge timer alone."""
    clock = ManualClock(T0)
    state = ClusterState(Settings(worker_purge_after=100.0), clock=clock)
    state.handle({"type": "worker-heartbeat", "hostname": "celery@w1", "freq": 2.0})
    stop = threading.Event()
    purger = Purger(state, interval=0.01)
    purger.start(stop)
    try:
        clock.now = T0 + 100
        wait_for(lambda: not state.workers.workers, timeout=5, what="the purge")
    finally:
        stop.set()
    assert state.workers.workers == {}
    assert state.errors.counts() == {}


def test_purger_counts_its_own_failure_and_keeps_running() -> None:
    """A purge that raises is counted as an internal error, and the timer goes on."""
    state = ClusterState(Settings())
    calls: list[int] = []

    def broken() -> list[str]:
        calls.append(1)
        raise RuntimeError("a bug")

    state.purge = broken  # type: ignore[method-assign]
    stop = threading.Event()
    Purger(state, interval=0.01).start(stop)
    try:
        wait_for(lambda: len(calls) >= 2, timeout=5, what="two purge rounds")
    finally:
        stop.set()
    assert state.errors.counts()["purge"] >= 2
