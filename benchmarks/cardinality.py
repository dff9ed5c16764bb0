"""Cardinality flood: a producer sending distinct task names, exception strings and hostnames.

Each task arrives as kombu's Redis envelopes (task-received, then task-failed with an exception
of its own, from a host of its own), is decoded by the same code the consumer runs, and feeds a
:class:`~celery_exporter.state.ClusterState` with the default caps. Every 10 % it prints the
series count of each label, the overflow counters and the process' RSS; at the end it renders
``/metrics`` once and prints its size and the peak RSS.

    .venv/bin/python benchmarks/cardinality.py --tasks 1000000 [--worker-label]

Nothing here asserts anything: it shows that series and memory stay bounded.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import psutil
from prometheus_client import CollectorRegistry, generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest import refuse_malformed

from celery_exporter.collectors.events import EventCollector
from celery_exporter.events.ingest import apply_envelopes
from celery_exporter.state import ClusterState, Settings
from tests.support.events import encode_envelope


def rss_mib() -> float:
    """The resident set size now, in MiB."""
    return float(psutil.Process().memory_info().rss) / 2**20


def peak_rss_mib() -> float:
    """The peak resident set size so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def series(state: ClusterState) -> dict[str, int]:
    """Distinct values of each capped label in the task counters, and the worker count."""
    snap = state.snapshot()
    received, failed = snap.counters["received"], snap.counters["failed"]
    out = {
        "task names": len({key[0] for key in received}),
        "exceptions": len({key[-1] for key in failed}),
        "workers": len(snap.workers),
        "received series": len(received),
        "failed series": len(failed),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--worker-label", action="store_true")
    args = parser.parse_args()

    state = ClusterState(Settings(worker_label=args.worker_label))
    print(f"settings: max_task_names={state.settings.max_task_names} "
          f"max_exceptions={state.settings.max_exceptions} "
          f"max_workers={state.settings.max_workers} worker_label={args.worker_label}")  # fmt: skip
    print(f"start: rss {rss_mib():.1f} MiB")
    started = time.perf_counter()
    step = max(1, args.tasks // 10)
    for i in range(args.tasks):
        host = f"celery@flood-host-{i}"
        uuid = f"flood-{i}"
        received = encode_envelope(
            {"type": "task-received", "uuid": uuid, "name": f"flood.task_{i}",
             "hostname": host, "timestamp": 1.7e9, "retries": 0},
            routing_key="task.received", hostname=host,
        )  # fmt: skip
        failed = encode_envelope(
            {"type": "task-failed", "uuid": uuid, "hostname": host, "timestamp": 1.7e9,
             "exception": f"FloodError{i}('message {i}')",
             "traceback": f"Traceback...\nFloodError{i}: message {i}\n"},
            routing_key="task.failed", hostname=host,
        )  # fmt: skip
        apply_envelopes(state, [received, failed], refuse_malformed)
        if (i + 1) % step == 0:
            snap = state.snapshot()
            print(f"{i + 1:>9} tasks  {series(state)}  overflow {snap.overflow}  "
                  f"tracked {snap.tracked_tasks}  rss {rss_mib():.1f} MiB")  # fmt: skip
    elapsed = time.perf_counter() - started
    registry = CollectorRegistry()
    registry.register(EventCollector(state))
    page = generate_latest(registry)
    samples = sum(1 for line in page.splitlines() if line and not line.startswith(b"#"))
    print(f"done: {args.tasks} tasks in {elapsed:.1f} s ({2 * args.tasks / elapsed:,.0f} events/s)")
    print(f"/metrics: {len(page) / 1024:.0f} KiB, {samples} samples")
    print(f"rss now {rss_mib():.1f} MiB, peak {peak_rss_mib():.1f} MiB")


if __name__ == "__main__":
    main()
