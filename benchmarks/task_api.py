"""Task view queries over a full in-flight table: answer times and how long they hold the lock.

In this process: builds a :class:`~celery_exporter.state.ClusterState` (the daemon's defaults,
its garbage collector tuning) and feeds it, through ``handle_batch`` 16 messages at a time, the
decoded events of benchmarks/task_memory.py's scene: ``--failures`` tasks received and failed
(4 KiB tracebacks) and ``--inflight`` received and started, over the last hour on 10 workers.
Then, for each query below, ``--runs`` times: ``ClusterState.find_tasks`` alone, and the whole
``/api/v1/tasks`` route (``TaskApi``: parameters parsed, rows built, JSON encoded), both timed
by ``time.perf_counter``; the state's lock is wrapped in a proxy that times every hold. The
copy the query takes under the lock, ``TaskRecords.all()``, is timed alone for comparison.
Besides wall time, each call's CPU time on its thread (``time.thread_time``), which what else
runs on the machine does not inflate.

Then (unless ``--no-http``) the real exporter (``python -m celery_exporter`` against a private
redis-server, as benchmarks/task_memory.py runs it) is given the same events, and each query is
sent ``--runs`` times over HTTP on 127.0.0.1 (a new connection each, ``urllib``) once every
event is counted: wall time per request, and the exporter's CPU per request (psutil, over the
runs). Nothing here asserts a figure: benchmarks/README.md has the figures and the
targets (``GET /api/v1/tasks?limit=100`` in at most 50 ms; the lock held no longer than the
copy takes).

    .venv/bin/python benchmarks/task_api.py
"""

from __future__ import annotations

import argparse
import functools
import gc
import signal
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from email.message import Message
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil
from ingest import machine_info, on_sigterm, refuse_malformed, revision
from task_memory import build_scene, commands, envelopes, fed_exporter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from celery_exporter.daemon import tune_gc
from celery_exporter.events.ingest import apply_envelopes
from celery_exporter.state import ClusterState
from celery_exporter.web.api import TaskApi, parse_params, parse_task_query
from celery_exporter.web.server import Request

#: The ``/api/v1/tasks`` query strings timed, the target's first.
QUERIES = (
    "limit=100",
    "state=failed",
    "name=billing.tasks.charge_card",
    "older_than=1800",
    "state=started&worker=celery@worker-3&older_than=600",
    "limit=1000",
)


class TimedLock:
    """A lock that records how long each hold lasted, and whether the collector ran in it."""

    def __init__(self, lock: Any) -> None:
        self._lock = lock
        self._since = 0.0
        self._held = False
        self._collected = -1
        #: (seconds held, highest generation the garbage collector collected meanwhile or -1)
        self.holds: list[tuple[float, int]] = []
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if self._held and phase == "start":
            self._collected = max(self._collected, info["generation"])

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got: bool = self._lock.acquire(blocking, timeout)
        if got:
            self._held, self._collected = True, -1
            self._since = time.perf_counter()
        return got

    def release(self) -> None:
        self.holds.append((time.perf_counter() - self._since, self._collected))
        self._held = False
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def timed(call: Callable[[], object], runs: int) -> tuple[list[float], list[float]]:
    """Wall seconds each of ``runs`` calls took, and this thread's CPU seconds for each."""
    wall, cpu = [], []
    for _ in range(runs):
        began, began_cpu = time.perf_counter(), time.thread_time()
        call()
        cpu.append(time.thread_time() - began_cpu)
        wall.append(time.perf_counter() - began)
    return wall, cpu


def ms(times: Sequence[float]) -> str:
    """Median and max of times in seconds, as milliseconds."""
    return f"{statistics.median(times) * 1000:7.2f} / {max(times) * 1000:7.2f}"


def fed_state(payloads: Sequence[bytes]) -> ClusterState:
    """A ClusterState with the daemon's defaults that has applied every payload's events."""
    state = ClusterState()
    apply_envelopes(state, payloads, refuse_malformed)  # as the daemon applies a read
    return state


def in_process(payloads: Sequence[bytes], runs: int) -> None:
    """Time the queries and the lock holds on a state fed in this process."""
    tune_gc()
    began = time.perf_counter()
    state = fed_state(payloads)
    records = state.records
    assert records is not None, "the task view is off by default?"
    print(f"fed {len(payloads):,} messages in {time.perf_counter() - began:.1f} s: "
          f"{len(state.tasks.tasks):,} in flight, {len(state.tasks.finished):,} finished, "
          f"{state.tasks.evicted} evicted")  # fmt: skip
    lock = TimedLock(state.lock)
    state.lock = lock  # type: ignore[assignment]
    api = TaskApi(state)
    copy, copy_cpu = timed(state.tasks.all, runs)
    print(f"copy alone (TaskTable.all(), {len(state.tasks.all()):,} tasks), ms median / max: "
          f"{ms(copy)}, CPU {ms(copy_cpu)}")  # fmt: skip
    print("ms median / max; CPU: this thread's")
    print(f"{'query':<54} {'found':>7} {'find_tasks':>17} {'CPU':>17} {'route':>17} {'CPU':>17} "
          f"{'copy hold':>17} {'rows hold':>17} {'answer':>9}")  # fmt: skip
    all_holds: list[tuple[float, int]] = []
    for text in QUERIES:
        query = parse_task_query(parse_params(text))
        request = Request("GET", "/api/v1/tasks", text, Message())
        lock.holds.clear()
        find, find_cpu = timed(functools.partial(state.find_tasks, query), runs)
        answer = api(request)
        assert answer is not None and answer.status == 200, answer
        route, route_cpu = timed(functools.partial(api, request), runs)
        found = state.find_tasks(query)[1]
        holds = lock.holds
        all_holds += holds
        # find_tasks takes the lock twice: to copy the list of records, then to build the rows
        copying, rows = [h for h, _ in holds[0::2]], [h for h, _ in holds[1::2]]
        print(f"{'/api/v1/tasks?' + text:<54} {found:>7,} {ms(find):>17} {ms(find_cpu):>17} "
              f"{ms(route):>17} {ms(route_cpu):>17} {ms(copying):>17} {ms(rows):>17} "
              f"{len(answer.body):>8,}B")  # fmt: skip
    longest = max(h for h, _ in all_holds)
    clean = [h for h, gen in all_holds if gen < 0]
    collected = [(h, gen) for h, gen in all_holds if gen >= 0]
    print(f"{len(all_holds)} lock holds, longest {longest * 1000:.2f} ms; "
          f"{len(collected)} had a garbage collection in them (generations "
          f"{sorted({gen for _, gen in collected})}, longest "
          f"{max((h for h, _ in collected), default=0) * 1000:.2f} ms); without one, longest "
          f"{max(clean, default=0) * 1000:.2f} ms. The copy alone: median "
          f"{statistics.median(copy) * 1000:.2f} ms, max {max(copy) * 1000:.2f} ms")  # fmt: skip


def over_http(encoded: Sequence[bytes], events: int, runs: int) -> None:
    """Time the queries over HTTP against the real exporter given the same events."""
    with fed_exporter((), encoded, events, stall=30.0) as fed:
        print(f"exporter pid {fed.pid} counted {events:,} events in {fed.seconds:.1f} s")
        exporter = psutil.Process(fed.pid)
        print(f"{'GET':<54} {'ms median / max':>17} {'exporter CPU ms':>16} {'bytes':>9}")
        for text in QUERIES:
            url = f"{fed.base_url}/api/v1/tasks?{text}"
            size = 0

            def get(url: str = url) -> None:
                nonlocal size
                with urllib.request.urlopen(url, timeout=30) as response:
                    size = len(response.read())

            before = exporter.cpu_times()
            times, _ = timed(get, runs)
            after = exporter.cpu_times()
            used = after.user + after.system - before.user - before.system
            print(f"{'/api/v1/tasks?' + text:<54} {ms(times):>17} {used * 1000 / runs:>16.2f} "
                  f"{size:>9,}")  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The benchmark's flags."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = p.add_argument
    add("--inflight", type=int, default=100_000, help="tasks received and started, left running")
    add("--failures", type=int, default=10_000, help="tasks received, then failed")
    add("--runs", type=int, default=50, help="times each query is timed")
    add("--no-http", action="store_true", help="skip the run against the real exporter")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Build the scene, time the queries in-process, then over HTTP."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    m = machine_info()
    print(f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}, revision {revision()}, "
          f"{m['nproc']} cores, {m['cpu_model']}, Python {m['python']}")  # fmt: skip
    scene = build_scene(args.inflight, args.failures, 4096)
    events = scene.events
    payloads = [payload for _, payload in envelopes(scene)]
    encoded = [] if args.no_http else list(commands(scene))
    del scene
    gc.collect()
    try:
        in_process(payloads, args.runs)
        if not args.no_http:
            del payloads
            over_http(encoded, events, args.runs)
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
