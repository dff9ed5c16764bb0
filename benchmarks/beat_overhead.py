"""What the beat exporter costs beat: a scheduler tick with and without it, and under scrapes.

In this process, on Celery's in-memory transport (no broker, no network): a real
``celery.beat.Scheduler`` with ``--entries`` entries (200) due every millisecond, so that every
tick sends one task, is ticked ``--ticks`` times (20 000):

- **plain**: Celery's own scheduler;
- **exporter**: the same after the beat exporter wrapped it (``BeatExporter.start``), nothing
  scraping;
- **exporter + scrapes**: the same while another thread renders ``/metrics`` without pause
  (far more often than any Prometheus: the worst case for the GIL).

Prints the CPU-time microseconds per tick of each run, the median of ``--repeat`` runs (3) in
turn, the ratios to plain, and how long one render of ``/metrics`` took on the scraping thread
(what one Prometheus scrape costs beat's process). Not a test::

    .venv/bin/python benchmarks/beat_overhead.py
    .venv/bin/python benchmarks/beat_overhead.py --entries 1000 --ticks 50000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

from celery import Celery
from celery.beat import Scheduler
from prometheus_client import generate_latest

from celery_exporter.worker import BeatExporter, WorkerExporter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.support

from tests.support.launchers import free_port


def scheduler(entries: int) -> Scheduler:
    """A scheduler of a new in-memory app with ``entries`` entries due every millisecond."""
    app = Celery("bench", broker="memory://", set_as_current=False)
    schedule = {
        f"entry-{n:05d}": {"task": f"bench.task_{n % 20}", "schedule": timedelta(milliseconds=1)}
        for n in range(entries)
    }
    app.conf.update(result_expires=None, beat_schedule=schedule)
    return Scheduler(app)


RENDERS: list[float] = []


def run(entries: int, ticks: int, mode: str) -> float:
    """CPU-time microseconds per tick of one run in ``mode`` (plain, exporter, scraped)."""
    sched = scheduler(entries)
    exporter = None
    stop = threading.Event()
    scraper = None
    if mode != "plain":
        worker = WorkerExporter(sched.app, port=free_port(), host="127.0.0.1")
        exporter = BeatExporter(worker, max_entries=entries)
        exporter.start(sched)
    if mode == "scraped":
        assert exporter is not None
        registry = exporter.registry

        def scrape() -> None:
            while not stop.is_set():
                began = time.thread_time()
                generate_latest(registry)
                RENDERS.append(time.thread_time() - began)

        scraper = threading.Thread(target=scrape, daemon=True)
        scraper.start()
    sched.tick()  # builds the heap
    began = time.thread_time()
    for _ in range(ticks):
        sched.tick()
    took = time.thread_time() - began
    stop.set()
    if scraper is not None:
        scraper.join()
    if exporter is not None:
        exporter.stop()
    return took / ticks * 1e6


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--entries", type=int, default=200)
    parser.add_argument("--ticks", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"plain": [], "exporter": [], "scraped": []}
    for _ in range(args.repeat):
        for mode, values in results.items():
            values.append(run(args.entries, args.ticks, mode))
    medians = {mode: statistics.median(values) for mode, values in results.items()}
    print(f"{args.entries} entries, {args.ticks} ticks (each sends one task), {args.repeat} runs")
    for mode, values in results.items():
        runs = " ".join(f"{v:.1f}" for v in values)
        ratio = medians[mode] / medians["plain"]
        print(f"{mode:>9}: {medians[mode]:7.1f} us/tick median (runs: {runs}), x{ratio:.3f}")
    render = statistics.median(RENDERS) * 1e3
    print(f"one /metrics render: {render:.2f} ms CPU (median of {len(RENDERS)})")


if __name__ == "__main__":
    main()
