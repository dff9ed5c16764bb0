"""Waiting until an exporter's ``/metrics`` shows what the test made happen."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from tests.support.processes import EVENT_TIMEOUT, START_TIMEOUT, ExporterProcess, WorkerProcess
from tests.support.scrape import Sample, value
from tests.support.waiting import wait_for


class Scraped(Protocol):
    """Anything with a ``/metrics`` page: the exporter, an in-worker exporter, the sidecar."""

    def metrics(self) -> dict[Sample, float]:
        """Scrape ``/metrics``."""
        ...


def wait_metrics(
    exporter: Scraped,
    expected: Mapping[Sample, float],
    base: Mapping[Sample, float] | None = None,
    timeout: float = EVENT_TIMEOUT,
    worker: WorkerProcess | None = None,
) -> dict[Sample, float]:
    """Poll ``/metrics`` until every expected sample has its value (minus ``base``); return it.

    On timeout, the error lists the samples that did not reach their value, the task counters
    that did move, and the end of the worker's log.
    """
    base = base or {}
    last: dict[Sample, float] = {}

    def reached() -> bool:
        nonlocal last
        last = exporter.metrics()
        return all(
            last.get(key, 0.0) - base.get(key, 0.0) == want for key, want in expected.items()
        )

    try:
        wait_for(reached, timeout, 0.2, "metrics to reach their expected values")
    except TimeoutError:
        missing = {
            f"{name}{dict(sorted(labels))}": (
                last.get((name, labels), 0.0) - base.get((name, labels), 0.0),
                want,
            )
            for (name, labels), want in expected.items()
            if last.get((name, labels), 0.0) - base.get((name, labels), 0.0) != want
        }
        moved = {
            f"{name}{dict(sorted(labels))}": v - base.get((name, labels), 0.0)
            for (name, labels), v in last.items()
            if name.startswith("celery_task_")
            and name.endswith("_total")
            and v != base.get((name, labels), 0.0)
        }
        tail = f"\nworker log:\n{worker.log_tail()}" if worker is not None else ""
        raise AssertionError(
            f"(got, wanted) after {timeout}s: {missing}\ntask counters moved: {moved}{tail}"
        ) from None
    return last


def wait_heartbeat_after(exporter: ExporterProcess, hostname: str, since: float) -> None:
    """Wait until the exporter gets a heartbeat from ``hostname`` sent after ``since``.

    A worker publishes its task events and heartbeats on one connection, so once a later
    heartbeat is in, every task event the worker sent before it has been counted.
    """

    def newer() -> bool:
        seen = value(
            exporter.metrics(), "celery_worker_last_heartbeat_timestamp_seconds", hostname=hostname
        )
        return seen > since

    wait_for(newer, EVENT_TIMEOUT, 0.2, f"a heartbeat from {hostname}")


def wait_worker_up(exporter: ExporterProcess, worker: WorkerProcess) -> None:
    """Wait until the exporter reports the worker up (its heartbeats arrive)."""

    def up() -> bool:
        if worker.process is not None and worker.process.poll() is not None:
            raise RuntimeError(f"worker {worker.nodename} exited:\n{worker.log_tail()}")
        return value(exporter.metrics(), "celery_worker_up", hostname=worker.nodename) == 1

    wait_for(up, START_TIMEOUT, 0.2, f"worker {worker.nodename} to be up")
