"""Task view memory: the exporter's peak RSS with a full in-flight table and a ring of failures.

Starts a private redis-server and the real exporter (``python -m celery_exporter``) twice, once
with the task view (the default) and once with ``--no-web.task-api``; gives each the same events
and, once ``celery_exporter_events_total`` has counted them all, reads the process's peak
(``VmHWM``) and current (``VmRSS``) resident memory from ``/proc/PID/status``. The events: one
``worker-online`` per worker, then ``--failures`` tasks received and failed with a traceback of
``--traceback-bytes`` (the finished ring), then ``--inflight`` tasks received and started (the
in-flight table), Celery-shaped like benchmarks/ingest.py's and framed by
``tests.support.events.encode_envelope``, two events per ``task.multi`` message.

    .venv/bin/python benchmarks/task_memory.py
    .venv/bin/python benchmarks/task_memory.py --profile   # also tracemalloc, in-process

``--profile`` feeds the same events to a :class:`~celery_exporter.state.ClusterState` in this
process, with and without the task view, under tracemalloc, and prints what the records hold:
the allocation sites that grew most and bytes per record. Nothing here asserts a figure:
benchmarks/README.md has the figures and the target (150 MB peak with the view on).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import random
import signal
import socket
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import redis
from ingest import (
    DEFAULT_CMD,
    EVENTS_TOTAL,
    FAILURES,
    HOST,
    SOFTWARE,
    TASK_NAMES,
    exporter_command,
    machine_info,
    on_sigterm,
    publish,
    refuse_malformed,
    revision,
    start_exporter,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.support

from tests.support.events import encode_envelope
from tests.support.launchers import RedisServer, free_port
from tests.support.scrape import fetch, scrape, total, value

Event = dict[str, Any]
MIB = 2**20
#: Frames a deep traceback repeats until it is long enough (a web client called from a task).
_FRAMES = (
    ("/usr/local/lib/python3.12/site-packages/requests/sessions.py", 589, "request",
     "resp = self.send(prep, **send_kwargs)"),
    ("/usr/local/lib/python3.12/site-packages/requests/sessions.py", 703, "send",
     "r = adapter.send(request, **kwargs)"),
    ("/usr/local/lib/python3.12/site-packages/requests/adapters.py", 667, "send",
     "resp = conn.urlopen("),
    ("/usr/local/lib/python3.12/site-packages/urllib3/connectionpool.py", 787, "urlopen",
     "response = self._make_request("),
)  # fmt: skip


def traceback_text(task: str, last_line: str, size: int) -> str:
    """A task's traceback of ``size`` ASCII bytes (at least its head), ending in ``last_line``."""
    module, _, func = task.rpartition(".")
    trace = "/usr/local/lib/python3.12/site-packages/celery/app/trace.py"
    head = [
        "Traceback (most recent call last):",
        f'  File "{trace}", line 453, in trace_task',
        "    R = retval = fun(*args, **kwargs)",
        f'  File "{trace}", line 736, in __protected_call__',
        "    return self.run(*args, **kwargs)",
        f'  File "/app/{module.replace(".", "/")}.py", line 42, in {func}',
        "    client.call(payload)",
    ]
    text = "\n".join(head) + "\n"
    tail = last_line + "\n"
    n = 0
    while True:
        where, line, func, code = _FRAMES[n % len(_FRAMES)]
        frame = f'  File "{where}", line {line + n}, in {func}\n    {code}\n'
        room = size - len(text) - len(tail)
        if len(frame) > room:  # the last frame's code line is cut to fit
            text += frame[: max(room - 1, 0)] + "\n" if room > 0 else ""
            break
        text += frame
        n += 1
    return text + tail


@dataclass
class Scene:
    """The messages (lists of events) to publish, and how many events they hold."""

    messages: list[list[Event]]
    events: int
    hosts: list[str]


def build_scene(
    inflight: int,
    failures: int,
    traceback_bytes: int,
    *,
    workers: int = 10,
    span: float = 3600.0,
    seed: int = 1,
    now: float | None = None,
    distinct: bool = False,
) -> Scene:
    """Failures first (received, failed), then tasks left in flight (received, started).

    A failure's traceback is the same for each task name and exception (as a failing line of
    code gives); with ``distinct`` its last line names the task id, so no two are equal.

    Tasks start evenly over the last ``span`` seconds before ``now``, each on one of
    ``workers`` workers, so the newest is the one most recently active.
    """
    rng = random.Random(seed)
    now = time.time() if now is None else now
    hosts = [f"celery@worker-{n}" for n in range(1, workers + 1)]
    pids = {host: 1000 + 7 * n for n, host in enumerate(hosts, 1)}
    clock = 0
    messages: list[list[Event]] = []

    def event(host: str, etype: str, at: float, fields: Event) -> Event:
        nonlocal clock
        clock += 1
        head = {"hostname": host, "utcoffset": 0, "pid": pids[host], "clock": clock}
        return {**head, **fields, "timestamp": at, "type": etype}

    for host in hosts:
        fields = {"freq": 2.0, "active": 0, "processed": 0, "loadavg": [0.5, 0.4, 0.3]}
        messages.append([event(host, "worker-online", now - span, {**fields, **SOFTWARE})])
    tasks = inflight + failures
    tracebacks: dict[tuple[str, str], str] = {}
    for n in range(tasks):
        at = now - span + span * n / tasks
        host = hosts[rng.randrange(workers)]
        task_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        name = TASK_NAMES[rng.randrange(len(TASK_NAMES))]
        received = event(host, "task-received", at, {
            "uuid": task_id, "name": name,
            "args": f"({rng.randrange(1, 10**6)}, 'acct-{rng.randrange(10**4):04d}')",
            "kwargs": "{'priority': 3}" if rng.random() < 0.3 else "{}",
            "root_id": task_id, "parent_id": None, "retries": 0, "eta": None,
            "expires": _iso(at + 3600) if rng.random() < 0.1 else None,
        })  # fmt: skip
        if n < failures:
            exc, last = FAILURES[rng.randrange(len(FAILURES))]
            if distinct:
                last = f"{last} (task {task_id})"
            key = (name, last)
            if key not in tracebacks:
                tracebacks[key] = traceback_text(name, last, traceback_bytes)
            final = event(host, "task-failed", at + 0.5, {
                "uuid": task_id, "exception": exc, "traceback": tracebacks[key],
            })  # fmt: skip
        else:
            final = event(host, "task-started", at + 0.01, {"uuid": task_id})
        messages.append([received, final])
    return Scene(messages, len(hosts) + 2 * tasks, hosts)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()


def envelopes(scene: Scene) -> Iterator[tuple[str, bytes]]:
    """Each message's routing key and its kombu Redis envelope."""
    for events in scene.messages:
        multi = len(events) > 1
        key = "task.multi" if multi else events[0]["type"].replace("-", ".")
        hostname = events[0]["hostname"]
        yield key, encode_envelope(events if multi else events[0], routing_key=key,
                                   hostname=hostname)  # fmt: skip


def commands(scene: Scene, db: int = 0) -> Iterator[bytes]:
    """Each message as a pre-encoded Redis PUBLISH on its event channel."""
    prefix = f"/{db}.celeryev/".encode()
    for key, payload in envelopes(scene):
        channel = prefix + key.encode()
        yield (
            b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
            % (len(channel), channel, len(payload), payload)
        )


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS of a process, in bytes."""
    got = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            got[key] = int(rest.split()[0]) * 1024
    return got


@dataclass
class Fed:
    """An exporter that has counted every event it was given."""

    pid: int
    base_url: str
    samples: dict[Any, float]
    seconds: float
    idle_rss: int


@contextlib.contextmanager
def fed_exporter(
    extra_flags: Sequence[str], encoded: Sequence[bytes], events: int, stall: float
) -> Iterator[Fed]:
    """A private redis-server and exporter (with ``extra_flags``) that counted all ``encoded``.

    Both are stopped on leaving.
    """
    with contextlib.ExitStack() as stack:
        log_file = stack.enter_context(tempfile.TemporaryFile())
        limit = ["--client-output-buffer-limit", "pubsub 0 0 0"]  # keep a backlog, never drop
        server = stack.enter_context(RedisServer(extra_args=limit))
        client = stack.enter_context(redis.Redis(host=HOST, port=server.port))
        port = free_port()
        base_url = f"http://{HOST}:{port}"
        command = [*exporter_command(DEFAULT_CMD, server.url(0), port), *extra_flags]
        exporter = start_exporter(stack, command, client, f"{base_url}/readyz", log_file)
        idle = proc_status(exporter.pid)["VmRSS"]
        began = time.monotonic()
        with socket.create_connection((HOST, server.port)) as sock:
            for start in range(0, len(encoded), 500):
                publish(sock, encoded[start : start + 500])
        counted, changed = -1.0, time.monotonic()
        while True:
            samples = scrape(f"{base_url}/metrics", timeout=30)
            now_counted = total(samples, EVENTS_TOTAL)
            if now_counted >= events:
                break
            if now_counted != counted:
                counted, changed = now_counted, time.monotonic()
            elif time.monotonic() - changed > stall:
                log_file.seek(0)
                raise RuntimeError(
                    f"counting stalled at {now_counted:.0f} of {events} events: "
                    + log_file.read().decode(errors="replace")[-2000:]
                )
            time.sleep(0.5)
        yield Fed(exporter.pid, base_url, samples, time.monotonic() - began, idle)


def measure(
    extra_flags: Sequence[str], encoded: Sequence[bytes], scene: Scene, stall: float
) -> dict[str, Any]:
    """Run one exporter with ``extra_flags`` on the events; its memory once all are counted."""
    with fed_exporter(extra_flags, encoded, scene.events, stall) as fed:
        after = proc_status(fed.pid)
        listed = None
        if "--no-web.task-api" not in extra_flags:
            listed = {}
            for query in ("limit=1", "limit=1&state=failed", "limit=1&state=started"):
                status, body = fetch(f"{fed.base_url}/api/v1/tasks?{query}", timeout=30)
                listed[query] = json.loads(body)["total"] if status == 200 else f"HTTP {status}"
        samples = fed.samples
        return {
            "flags": " ".join(extra_flags) or "(defaults)",
            "events": int(total(samples, EVENTS_TOTAL)),
            "seconds": round(fed.seconds, 1),
            "tracked": int(value(samples, "celery_exporter_tracked_tasks")),
            "evicted": int(total(samples, "celery_exporter_tasks_evicted_total")),
            "idle_rss": fed.idle_rss,
            "vmhwm": after["VmHWM"],
            "rss": after["VmRSS"],
            "api_totals": listed,
        }


# -- in-process profile -------------------------------------------------------------------------


def profile(scene: Scene, top: int) -> None:
    """tracemalloc over a ClusterState fed the scene, with and without the task view."""
    from celery_exporter.events.ingest import apply_envelopes
    from celery_exporter.state import ClusterState
    from celery_exporter.state.settings import Settings

    payloads = [payload for _, payload in envelopes(scene)]
    del scene.messages[:]  # the builder's own dicts are not the exporter's
    gc.collect()
    grown: dict[bool, int] = {}
    for view in (False, True):
        state = ClusterState(Settings(web_task_api=view))
        gc.collect()
        tracemalloc.start(6)
        first = tracemalloc.take_snapshot()
        apply_envelopes(state, payloads, refuse_malformed)  # as the daemon applies a read
        gc.collect()
        second = tracemalloc.take_snapshot()
        tracemalloc.stop()
        stats = second.compare_to(first, "traceback")
        grown[view] = sum(s.size_diff for s in stats)
        print(f"-- ClusterState(web_task_api={view}): {grown[view] / MIB:.1f} MiB held")
        for stat in stats[:top]:
            frames = [f for f in stat.traceback if "celery_exporter" in f.filename]
            where = frames[-1] if frames else stat.traceback[-1]
            print(f"   {stat.size_diff / MIB:8.2f} MiB {stat.count_diff:>9,} blocks  "
                  f"{_short(where.filename)}:{where.lineno}")  # fmt: skip
        if view and state.records is not None:
            _per_record(state)
        del state
        gc.collect()
    print(f"-- the task view holds {(grown[True] - grown[False]) / MIB:.1f} MiB more")


def _per_record(state: Any) -> None:
    """sys.getsizeof of a typical in-flight and finished task and what it alone points to."""
    tables = (
        ("in flight", list(state.tasks.tasks.values())),
        ("failed", list(state.tasks.finished.values())),
    )
    for label, tasks in tables:
        if not tasks:
            continue
        task = tasks[-1]
        size = _counter()
        parts = {"task": sys.getsizeof(task), "history": size(task.history)}
        times = [task.received, task.started, task.finished, task.runtime]
        parts["times"] = sum(size(x) for x in [*times, *task.history[1::3]])
        parts["root_id"] = size(task.root_id)
        if task.detail is not None:
            parts["detail"] = sys.getsizeof(task.detail)
            for name in ("exception_repr", "traceback"):
                parts[name] = size(getattr(task.detail, name))
        parts["dict entry"] = round(_dict_bytes(len(tasks)) / len(tasks))
        print(f"   per {label} task: {sum(parts.values()):,} B = " +
              ", ".join(f"{k} {v:,}" for k, v in parts.items()))  # fmt: skip


def _counter() -> Callable[[Any], int]:
    """sys.getsizeof of strings, numbers and lists, each object counted once.

    Small ints are shared by the interpreter, so they count nothing.
    """
    seen: set[int] = set()

    def size(obj: Any) -> int:
        if type(obj) is int and -5 <= obj <= 256:
            return 0
        if obj is None or id(obj) in seen or not isinstance(obj, (str, int, float, list)):
            return 0
        seen.add(id(obj))
        return sys.getsizeof(obj)

    return size


def _dict_bytes(n: int) -> int:
    return sys.getsizeof({str(i): None for i in range(n)})


def _short(path: str) -> str:
    marker = "celery_exporter/"
    return path[path.index(marker) :] if marker in path else Path(path).name


# -- the run ------------------------------------------------------------------------------------


def _size(size: int) -> str:
    return f"{size / MIB:.1f} MiB ({size / 1e6:.1f} MB)"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The benchmark's flags."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = p.add_argument
    add("--inflight", type=int, default=100_000, help="tasks received and started, left running")
    add("--failures", type=int, default=10_000, help="tasks received, then failed")
    add("--traceback-bytes", type=int, default=4096, help="size of each failure's traceback")
    add(
        "--distinct-tracebacks",
        action="store_true",
        help="make every failure's traceback different (its last line names the task)",
    )
    add("--workers", type=int, default=10, help="worker hostnames")
    add("--stall", type=float, default=30.0, help="give up when the count stays this long")
    add("--profile", action="store_true", help="also profile a ClusterState in-process")
    add("--top", type=int, default=12, help="allocation sites listed by --profile")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure both ways, print the figures and the difference."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    scene = build_scene(
        args.inflight, args.failures, args.traceback_bytes, workers=args.workers,
        distinct=args.distinct_tracebacks,
    )  # fmt: skip
    encoded = list(commands(scene))
    size = sum(len(c) for c in encoded)
    m = machine_info()
    print(f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}, revision {revision()}, "
          f"{m['nproc']} cores, {m['cpu_model']}, Python {m['python']}")  # fmt: skip
    print(f"{scene.events:,} events in {len(encoded):,} messages ({size / MIB:.1f} MiB): "
          f"{args.failures:,} failed with {args.traceback_bytes} B tracebacks"
          f"{' (all different)' if args.distinct_tracebacks else ''}, "
          f"{args.inflight:,} in flight")  # fmt: skip
    runs = []
    try:
        for flags in ((), ("--no-web.task-api",)):
            run = measure(flags, encoded, scene, args.stall)
            runs.append(run)
            print(f"{run['flags']:>18}: VmHWM {_size(run['vmhwm'])}, VmRSS {_size(run['rss'])} "
                  f"(idle before: {_size(run['idle_rss'])}); {run['events']:,} events counted "
                  f"in {run['seconds']} s, tracked {run['tracked']:,}, evicted "
                  f"{run['evicted']:,}; API totals {run['api_totals']}")  # fmt: skip
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    on, off = runs
    print(f"{'task view costs':>18}: VmHWM +{_size(on['vmhwm'] - off['vmhwm'])}, "
          f"VmRSS +{_size(on['rss'] - off['rss'])}")  # fmt: skip
    if args.profile:
        profile(scene, args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
