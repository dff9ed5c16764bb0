"""Ingest benchmark: how fast one exporter process turns a burst of Celery events into counters.

Starts a private redis-server and the exporter (pinned to one CPU core), pre-builds realistic
Celery 5 worker traffic framed as kombu's Redis transport publishes it, publishes it all as fast
as Redis takes it from a separate process (pinned to the other core), and polls ``/metrics``
until the exporter has counted every event or stops counting. Then it reports throughput, the
exporter's CPU per event, its peak memory, the cost of a scrape, and the events lost.

    .venv/bin/python benchmarks/ingest.py --events 200000 [--json]
    .venv/bin/python benchmarks/ingest.py --events 200000 --baseline --repeat 5
    .venv/bin/python benchmarks/ingest.py --events 200000 --compare-task-view --repeat 5

``--baseline`` gives the same burst to the minimal consumer of ingest_baseline.py, on the
exporter's core, and prints both CPU costs per event and their ratio. ``--compare-task-view``
runs the exporter with and without ``--no-web.task-api`` in alternating order, ``--repeat``
rounds, and prints each one's median CPU per event and the ratio on / off.

Nothing here asserts a timing: benchmarks/README.md has the figures and the targets.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import multiprocessing
import os
import platform
import random
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import IO, Any

import psutil
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.support

from tests.support.events import encode_envelope
from tests.support.launchers import RedisServer, free_port
from tests.support.scrape import fetch, scrape, total, value
from tests.support.waiting import wait_for

HOST = "127.0.0.1"
DEFAULT_CMD = (
    "{python} -m celery_exporter --broker-url {broker_url} --host 127.0.0.1 --port {port} "
    "--no-enable-events --log-level warning"
)
OUTCOMES = ("succeeded", "failed", "retried")
#: The flag that turns the task view (and its records) off, for --compare-task-view.
TASK_VIEW_OFF = "--no-web.task-api"
EVENTS_TOTAL = "celery_exporter_events_total"

TASK_NAMES = tuple(
    f"{app}.tasks.{task}"
    for app, tasks in (
        ("orders", "create_order cancel_order sync_inventory"),
        ("billing", "charge_card refund send_invoice reconcile_ledger"),
        ("mail", "send_email send_digest bounce_webhook"),
        ("users", "resize_avatar export_data purge_sessions"),
        ("search", "index_document reindex_shard"),
        ("reports", "build_daily_report render_pdf"),
        ("notify", "push sms"),
        ("maintenance", "cleanup_tmp"),
    )
    for task in tasks.split()
)
#: (exception repr as workers send it, last line of its traceback)
FAILURES = (
    ("ValueError('x')", "ValueError: x"),
    ("KeyError('customer_id')", "KeyError: 'customer_id'"),
    ("TimeoutError('read timed out')", "TimeoutError: read timed out"),
    (
        "IntegrityError('duplicate key value')",
        "django.db.utils.IntegrityError: duplicate key value",
    ),
)
RETRY_CAUSES = (
    ("ConnectionError('upstream timed out')", "ConnectionError: upstream timed out"),
    ("HTTPError('503 Service Unavailable')", "requests.exceptions.HTTPError: 503 Service Unavailable"),
)  # fmt: skip
RESULTS = ("None", "True", "42", "{'status': 'ok'}", "'sent'", "[1, 2, 3]")
SOFTWARE = {"sw_ident": "py-celery", "sw_ver": "5.4.0", "sw_sys": "Linux"}

Event = dict[str, Any]


# -- traffic ------------------------------------------------------------------------------------


@dataclass
class Traffic:
    """Pre-encoded PUBLISH commands and what the exporter should count from them."""

    commands: list[bytes] = field(default_factory=list)
    events: int = 0
    payload_bytes: int = 0
    expected: dict[str, int] = field(default_factory=dict)  # by event type

    def outcomes(self) -> dict[str, int]:
        """Expected succeeded, failed and retried counts."""
        return {kind: self.expected.get(f"task-{kind}", 0) for kind in OUTCOMES}


@dataclass
class _Attempt:
    """One run of a task on a worker: received, started, then its final event."""

    uuid: str
    fields: Event  # what task-received (and task-sent) carry besides the uuid
    final: str
    step: int = 0


@dataclass
class Worker:
    """A simulated worker: its event buffer, the tasks it runs and those waiting for it."""

    hostname: str
    pid: int
    next_heartbeat: float
    buffer: list[Event] = field(default_factory=list)
    flush_at: int = 1
    active: list[_Attempt] = field(default_factory=list)
    backlog: deque[_Attempt] = field(default_factory=deque)
    processed: int = 0


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()


def _traceback(task: str, last_line: str, retry: str | None = None) -> str:
    module, _, func = task.rpartition(".")
    trace = "/usr/local/lib/python3.12/site-packages/celery/app/trace.py"
    lines = [
        "Traceback (most recent call last):",
        f'  File "{trace}", line 453, in trace_task',
        "    R = retval = fun(*args, **kwargs)",
        f'  File "{trace}", line 736, in __protected_call__',
        "    return self.run(*args, **kwargs)",
        f'  File "/app/{module.replace(".", "/")}.py", line 42, in {func}',
        "    client.call(payload)",
        last_line,
    ]
    if retry is not None:
        lines.append(f"celery.exceptions.Retry: Retry in 5s: {retry}")
    return "\n".join(lines) + "\n"


class TrafficBuilder:
    """Simulates workers running tasks and records the event messages they would publish.

    Each worker runs up to ``concurrency`` tasks at once. Its task events go through a buffer
    flushed as ``task.multi`` messages of 1 to 3 events, in order, like a Celery worker's event
    dispatcher; heartbeats leave on ``worker.heartbeat`` every ``heartbeat_every`` simulated
    seconds. A retried task comes back 1 to 5 s later (with ``retries`` and ``eta``) on any
    worker and then succeeds. Timestamps advance ``sim_rate`` events per simulated second and end
    about now. ``build`` records a burst; ``start`` and ``step`` run it event by event instead
    (soak.py does, without end).
    """

    def __init__(
        self,
        *,
        seed: int = 1,
        workers: int = 10,
        concurrency: int = 4,
        fail_ratio: float = 0.05,
        retry_ratio: float = 0.05,
        task_sent: bool = False,
        db: int = 0,
        sim_rate: float = 5000.0,
        heartbeat_every: float = 2.0,
    ) -> None:
        self.rng = random.Random(seed)
        self.concurrency = concurrency
        self.fail_ratio = fail_ratio
        self.retry_ratio = retry_ratio
        self.task_sent = task_sent
        self.prefix = f"/{db}.celeryev/".encode()
        self.sim_rate = sim_rate
        self.heartbeat_every = heartbeat_every
        self.workers = [
            Worker(f"celery@worker-{n}", 1000 + 7 * n, next_heartbeat=n * 0.2)
            for n in range(1, workers + 1)
        ]
        self.producers = [(f"gen{2000 + n}@web-{n}", 2000 + n) for n in range(1, 4)]
        self.delayed: list[tuple[float, int, _Attempt]] = []  # heap of retries by ETA
        self.last_uuid: str | None = None
        self.started = 0  # tasks started so far
        self.clock = 0
        self.now = 0.0
        self.traffic = Traffic()

    def build(self, target_events: int) -> Traffic:
        """Record traffic until at least ``target_events`` events, every task run to its end."""
        self.start(time.time() - target_events / self.sim_rate)
        while self.step(target_events):
            pass
        for worker in self.workers:
            self._flush(worker)
        return self.traffic

    def start(self, now: float) -> None:
        """Set the simulated clock; the workers' first heartbeats fall due from then on."""
        self.now = now
        for worker in self.workers:
            worker.next_heartbeat += now

    def step(self, target_events: int | None) -> bool:
        """Advance the simulation by one task event, and any heartbeats and retries due.

        Starts new tasks while fewer than ``target_events`` events (counting those the tasks in
        flight will send) are recorded, always when it is None; False once all tasks are done.
        """
        rng = self.rng
        self.now += rng.expovariate(self.sim_rate)
        while self.delayed and self.delayed[0][0] <= self.now:
            attempt = heapq.heappop(self.delayed)[2]
            rng.choice(self.workers).backlog.append(attempt)
        self._heartbeats()
        more = True
        if target_events is not None:
            in_flight = sum(len(w.active) + len(w.backlog) for w in self.workers)
            more = self.traffic.events + 3 * (in_flight + len(self.delayed)) < target_events
        busy = [w for w in self.workers if w.active or w.backlog]
        if not more and not busy:
            if not self.delayed:
                return False
            self.now = max(self.now, self.delayed[0][0])
            return True
        worker = rng.choice(self.workers if more else busy)
        can_start = len(worker.active) < self.concurrency and (worker.backlog or more)
        if can_start and (not worker.active or rng.random() < 0.5):
            if worker.backlog:
                attempt = worker.backlog.popleft()
            else:
                attempt, self.started = self._new_task(self.started), self.started + 1
            worker.active.append(attempt)
            self._advance(worker, attempt)
        elif worker.active:
            self._advance(worker, rng.choice(worker.active))
        return True

    def _new_task(self, n: int) -> _Attempt:
        rng = self.rng
        task_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        roll = rng.random()
        if roll < self.fail_ratio:
            final = "task-failed"
        elif roll < self.fail_ratio + self.retry_ratio:
            final = "task-retried"
        else:
            final = "task-succeeded"
        parent = self.last_uuid if n % 7 == 3 else None  # some tasks are sent by others
        self.last_uuid = task_id
        attempt = _Attempt(
            task_id,
            {
                "name": self._task_name(),
                "args": f"({rng.randrange(1, 10**6)}, 'acct-{rng.randrange(10**4):04d}')",
                "kwargs": "{'priority': 3}" if rng.random() < 0.3 else "{}",
                "root_id": parent or task_id,
                "parent_id": parent,
                "retries": 0,
                "eta": None,
                "expires": _iso(self.now + 3600) if rng.random() < 0.1 else None,
            },
            final,
        )
        if self.task_sent:
            self._sent(attempt, *self.producers[rng.randrange(len(self.producers))])
        return attempt

    def _task_name(self) -> str:
        """The name of a new task."""
        return TASK_NAMES[self.rng.randrange(len(TASK_NAMES))]

    def _event(self, host: str, pid: int, etype: str, fields: Event) -> Event:
        """An event with the fields and field order of Celery's ``Event()``."""
        self.clock += 1
        head = {"hostname": host, "utcoffset": 0, "pid": pid, "clock": self.clock}
        return {**head, **fields, "timestamp": self.now, "type": etype}

    def _sent(self, attempt: _Attempt, host: str, pid: int) -> None:
        fields = {"uuid": attempt.uuid, **attempt.fields}
        fields.update(queue="celery", exchange="", routing_key="celery")
        self._record([self._event(host, pid, "task-sent", fields)], "task.sent", host)

    def _advance(self, worker: Worker, attempt: _Attempt) -> None:
        """Emit the attempt's next event on ``worker``."""
        rng, name = self.rng, attempt.fields["name"]
        fields: Event = {"uuid": attempt.uuid}
        if attempt.step == 0:
            etype = "task-received"
            fields.update(attempt.fields)
        elif attempt.step == 1:
            etype = "task-started"
        else:
            etype = attempt.final
            if etype == "task-succeeded":
                fields["result"] = RESULTS[rng.randrange(len(RESULTS))]
                fields["runtime"] = round(rng.lognormvariate(-2.5, 1.2), 6)
            elif etype == "task-failed":
                exc, last = FAILURES[rng.randrange(len(FAILURES))]
                fields.update(exception=exc, traceback=_traceback(name, last))
            else:
                exc, last = RETRY_CAUSES[rng.randrange(len(RETRY_CAUSES))]
                fields.update(exception=exc, traceback=_traceback(name, last, exc))
        attempt.step += 1
        worker.buffer.append(self._event(worker.hostname, worker.pid, etype, fields))
        if len(worker.buffer) >= worker.flush_at:
            self._flush(worker)
        if attempt.step == 3:
            worker.active.remove(attempt)
            worker.processed += 1
            if etype == "task-retried":
                self._retry(worker, attempt)

    def _retry(self, worker: Worker, attempt: _Attempt) -> None:
        """Send the task again, due 1 to 5 s later, to succeed on whichever worker gets it."""
        self._flush(worker)
        eta = self.now + self.rng.uniform(1.0, 5.0)
        fields = {**attempt.fields, "retries": attempt.fields["retries"] + 1, "eta": _iso(eta)}
        again = _Attempt(attempt.uuid, fields, "task-succeeded")
        if self.task_sent:
            self._sent(again, worker.hostname, worker.pid)
        heapq.heappush(self.delayed, (eta, self.clock, again))

    def _heartbeats(self) -> None:
        for worker in self.workers:
            if self.now >= worker.next_heartbeat:
                worker.next_heartbeat = self.now + self.heartbeat_every
                self._worker_event(worker, "worker-heartbeat")

    def _worker_event(self, worker: Worker, etype: str) -> None:
        """Record a worker-online, -heartbeat or -offline event, alone in its message."""
        fields = {
            "freq": self.heartbeat_every,
            "active": len(worker.active),
            "processed": worker.processed,
            "loadavg": [round(self.rng.uniform(0.2, 3.0), 2) for _ in range(3)],
            **SOFTWARE,
        }
        event = self._event(worker.hostname, worker.pid, etype, fields)
        self._record([event], etype.replace("-", "."), worker.hostname)

    def _flush(self, worker: Worker) -> None:
        if worker.buffer:
            self._record(worker.buffer, "task.multi", worker.hostname)
            worker.buffer = []
        worker.flush_at = self.rng.randint(1, 3)

    def _record(self, events: list[Event], routing_key: str, host: str) -> None:
        multi = routing_key.endswith(".multi")
        payload = encode_envelope(
            events if multi else events[0], routing_key=routing_key, hostname=host
        )
        channel = self.prefix + routing_key.encode()
        traffic = self.traffic
        traffic.commands.append(
            b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
            % (len(channel), channel, len(payload), payload)
        )
        traffic.events += len(events)
        traffic.payload_bytes += len(payload)
        for event in events:
            traffic.expected[event["type"]] = traffic.expected.get(event["type"], 0) + 1


# -- publishing and measuring -------------------------------------------------------------------


def _publisher(port: int, commands: Sequence[bytes], batch: int, report: Connection) -> None:
    """Child process: pipeline every PUBLISH, reading the replies batch by batch."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops this process
    delivered = 0  # sum of PUBLISH replies: subscribers that got each message
    with socket.create_connection((HOST, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        first = time.time()
        for start in range(0, len(commands), batch):
            delivered += publish(sock, commands[start : start + batch])
        last = time.time()
    report.send((first, last, delivered))


def publish(sock: socket.socket, commands: Sequence[bytes]) -> int:
    """Write pipelined PUBLISH commands, read their replies; return the deliveries they report."""
    sock.sendall(b"".join(commands))
    data = b""
    while data.count(b"\r\n") < len(commands):
        more = sock.recv(65536)
        if not more:
            raise ConnectionError("redis closed the publisher's connection")
        data += more
    return sum(int(line[1:]) for line in data.split(b"\r\n") if line)


class ProcessWatch:
    """CPU time and resident memory of a process and its descendants; RSS sampled every 50 ms."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_rss = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss", daemon=True)

    def _sum(self, measure: Callable[[psutil.Process], float]) -> float:
        try:
            processes = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            processes = [self.root]
        used = 0.0
        for proc in processes:
            with contextlib.suppress(psutil.Error, OSError):
                used += measure(proc)
        return used

    def cpu_seconds(self) -> float:
        """User plus system CPU seconds used so far."""

        def cpu(proc: psutil.Process) -> float:
            times = proc.cpu_times()
            return float(times.user + times.system)

        return self._sum(cpu)

    def rss(self) -> int:
        """Resident bytes now."""
        return int(self._sum(lambda p: p.memory_info().rss))

    def vmhwm(self) -> int | None:
        """Peak resident bytes since start per the kernel (VmHWM), where /proc tells it."""

        def hwm(proc: psutil.Process) -> float:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
            return 0

        return int(self._sum(hwm)) or None

    def start(self) -> None:
        """Start sampling on a thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self.rss())
            self.samples += 1
            self._stop.wait(self.interval)


def machine_info() -> dict[str, Any]:
    model = platform.processor()
    with contextlib.suppress(OSError):
        names = [ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln]
        model = names[0].split(":", 1)[1].strip() if names else model
    return {"nproc": os.cpu_count(), "cpu_model": model, "python": platform.python_version()}


def revision() -> str:
    """The commit the exporter ran from, ``+dirty`` when celery_exporter/ has changes."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=here,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        diff = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--", "../celery_exporter"], cwd=here, check=False
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if diff.returncode else "")


def mb(size: float | None) -> float | None:
    return None if size is None else round(size / 2**20, 1)


# -- the run ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The benchmark's flags."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = p.add_argument
    add("--events", type=int, default=200_000, help="events to publish, at least")
    add("--seed", type=int, default=1, help="seed of the simulated traffic")
    add("--workers", type=int, default=10, help="worker hostnames")
    add("--concurrency", type=int, default=4, help="tasks in flight per worker")
    add("--fail-ratio", type=float, default=0.05, help="share of tasks that fail")
    add("--retry-ratio", type=float, default=0.05, help="share retried once, then succeeding")
    add("--task-sent", action="store_true", help="add task-sent events (task.sent messages)")
    add("--redis-default-limit", action="store_true",
        help="keep Redis' default pubsub client-output-buffer-limit (32mb 8mb 60): a subscriber "
        "that falls behind is disconnected and loses events")  # fmt: skip
    add("--exporter-cmd", default=DEFAULT_CMD,
        help="command running the exporter, with placeholders {python}, {broker_url} and {port} "
        "(default: %(default)s)")  # fmt: skip
    add("--ready-path", help="path that answers 200 once the exporter is ready (default: /readyz "
        "for the default command, /metrics for others)")  # fmt: skip
    add("--progress", choices=("auto", "events", "outcomes"), default="auto",
        help=f"count sum({EVENTS_TOTAL}), or the succeeded+failed+retried task totals "
        "(auto: events if the exporter has that metric)")  # fmt: skip
    add("--batch", type=int, default=500, help="PUBLISH commands per pipelined write")
    add("--poll", type=float, default=0.2, help="seconds between progress checks")
    add("--scrape-every", type=float, default=5.0,
        help="seconds between progress scrapes while Redis still holds events for the exporter "
        "(scrapes cost the exporter CPU)")  # fmt: skip
    add("--stall", type=float, default=10.0, help="stop when the count stays this long")
    add("--timeout", type=float, default=900.0, help="stop after this long in any case")
    add("--scrapes", type=int, default=20, help="scrapes timed after the burst")
    add("--no-pin", action="store_true", help="do not pin processes to CPU cores")
    add("--baseline", nargs="?", const="together", choices=("together", "first"),
        help="also run the minimal consumer of ingest_baseline.py on the exporter's core and "
        "print exporter/baseline CPU per event: 'together' (the default) subscribes it beside "
        "the exporter to the same burst, 'first' gives it the burst alone before the exporter "
        "starts")  # fmt: skip
    add("--repeat", type=int, default=1,
        help="runs on the same traffic (fresh Redis and processes each), then the medians")  # fmt: skip
    add("--compare-task-view", action="store_true",
        help="each of the --repeat rounds runs the exporter with the task view and with "
        f"{TASK_VIEW_OFF}, in alternating order; prints the medians and on/off")  # fmt: skip
    add("--json", action="store_true", help="print the results as one JSON object")
    return p.parse_args(argv)


def exporter_command(template: str, broker_url: str, port: int) -> list[str]:
    return shlex.split(
        template.replace("{python}", shlex.quote(sys.executable))
        .replace("{broker_url}", broker_url)
        .replace("{port}", str(port))
    )


def redis_backlog(client: redis.Redis) -> int:
    """Bytes Redis holds for pub/sub subscribers and has not yet written to them."""
    return sum(int(c.get("omem", 0)) for c in client.client_list(_type="pubsub"))


def _progress(samples: Mapping[Any, float], mode: str) -> float:
    if mode == "events":
        return total(samples, EVENTS_TOTAL)
    return sum(total(samples, f"celery_task_{kind}_total") for kind in OUTCOMES)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def start_exporter(
    stack: contextlib.ExitStack,
    command: Sequence[str],
    client: redis.Redis,
    ready_url: str,
    log_file: IO[bytes],
    cpus: set[int] | None = None,
) -> subprocess.Popen[bytes]:
    """Start the exporter (on ``cpus``), stopped when ``stack`` closes; wait until it is ready.

    Ready: ``ready_url`` answers 200 and the exporter's subscription shows in Redis.
    """
    previous = os.sched_getaffinity(0)
    if cpus is not None:
        os.sched_setaffinity(0, cpus)  # inherited by the exporter
    try:
        exporter = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        os.sched_setaffinity(0, previous)
    stack.callback(stop_process, exporter)

    def ready() -> bool:
        if exporter.poll() is not None:
            raise RuntimeError(f"the exporter exited with {exporter.returncode}")
        with contextlib.suppress(OSError):
            return fetch(ready_url, timeout=2)[0] == 200
        return False

    wait_for(ready, timeout=60, what=f"the exporter at {ready_url}")
    wait_for(
        lambda: client.pubsub_numpat() or client.pubsub_channels(),
        timeout=30,
        what="the exporter's subscription",
    )
    return exporter


@dataclass
class Burst:
    """What the progress loop saw while the publisher ran and the exporter caught up."""

    first_publish: float
    last_publish: float
    delivered: int
    progress: float
    changed_at: float
    polls: int
    samples: dict[Any, float]
    backlog_peak: int
    baseline_backlog_peak: int = 0


def _burst(
    args: argparse.Namespace,
    traffic: Traffic,
    client: redis.Redis,
    metrics_url: str,
    mode: str,
    base_samples: Mapping[Any, float],
    watch: ProcessWatch,
) -> Burst:
    """Publish everything from a forked process; poll until all is counted or counting stalls."""
    from ingest_baseline import pubsub_backlogs

    goal = traffic.events if mode == "events" else sum(traffic.outcomes().values())
    base = _progress(base_samples, mode)
    receiver, sender = multiprocessing.Pipe(duplex=False)
    port = client.connection_pool.connection_kwargs["port"]
    publisher = multiprocessing.get_context("fork").Process(
        target=_publisher, args=(port, traffic.commands, args.batch, sender), daemon=True
    )
    publisher.start()  # forked before the sampling thread starts
    watch.start()
    sender.close()
    try:
        published: tuple[float, float, int] | None = None
        progress, changed_at, polls, backlog_peak, scraped = 0.0, time.time(), 0, 0, 0.0
        samples: dict[Any, float] = {}
        baseline_peak = 0
        deadline = time.monotonic() + args.timeout
        while True:
            time.sleep(args.poll)
            if published is None and receiver.poll():
                published = receiver.recv()
            if published is None and publisher.exitcode not in (None, 0):
                raise RuntimeError(f"the publisher failed with exit code {publisher.exitcode}")
            backlog, baseline_backlog = pubsub_backlogs(client)  # the exporter's, the baseline's
            backlog_peak = max(backlog_peak, backlog)
            baseline_peak = max(baseline_peak, baseline_backlog)
            if (published is None or backlog) and time.monotonic() - scraped < args.scrape_every:
                continue
            samples, scraped = scrape(metrics_url, timeout=30), time.monotonic()
            polls += 1
            current = _progress(samples, mode) - base
            if current != progress:
                progress, changed_at = current, time.time()
            if published is not None and progress >= goal:
                break
            if time.time() - changed_at > args.stall or time.monotonic() > deadline:
                break
        if published is None and receiver.poll(args.stall):
            published = receiver.recv()
        if published is None:
            raise RuntimeError("the publisher did not finish; see --stall and --timeout")
    finally:
        if publisher.is_alive():
            publisher.terminate()
        publisher.join(5)
    return Burst(*published, progress, changed_at, polls, samples, backlog_peak, baseline_peak)


def build_traffic(args: argparse.Namespace, say: Callable[[str], None]) -> tuple[Traffic, float]:
    """The burst the flags ask for, and the seconds it took to build."""
    say(f"building traffic for {args.events} events ...")
    began = time.perf_counter()
    traffic = TrafficBuilder(
        seed=args.seed,
        workers=args.workers,
        concurrency=args.concurrency,
        fail_ratio=args.fail_ratio,
        retry_ratio=args.retry_ratio,
        task_sent=args.task_sent,
    ).build(args.events)
    build_seconds = time.perf_counter() - began
    say(
        f"built {traffic.events} events in {len(traffic.commands)} messages "
        f"({traffic.payload_bytes / 2**20:.1f} MiB) in {build_seconds:.1f} s"
    )
    return traffic, build_seconds


def _publish_all(port: int, commands: Sequence[bytes], batch: int) -> tuple[float, float, int]:
    """Publish everything from a forked process; its first and last publish times, deliveries."""
    receiver, sender = multiprocessing.Pipe(duplex=False)
    publisher = multiprocessing.get_context("fork").Process(
        target=_publisher, args=(port, commands, batch, sender), daemon=True
    )
    publisher.start()
    sender.close()
    try:
        published: tuple[float, float, int] = receiver.recv()
    except EOFError:
        raise RuntimeError(f"the publisher failed with exit code {publisher.exitcode}") from None
    finally:
        publisher.join(5)
    return published


def run(args: argparse.Namespace, built: tuple[Traffic, float] | None = None) -> dict[str, Any]:
    """Run the benchmark once (on ``built`` traffic and its build time, if given); its figures."""
    from ingest_baseline import Baseline, figures, run_alone

    def say(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr, flush=True)

    cpus = sorted(os.sched_getaffinity(0))
    pinned = not args.no_pin and len(cpus) >= 2
    exporter_cpus, other_cpus = ({cpus[0]}, set(cpus[1:])) if pinned else (set(cpus), set(cpus))
    ready_path = args.ready_path or ("/readyz" if args.exporter_cmd == DEFAULT_CMD else "/metrics")

    traffic, build_seconds = built or build_traffic(args, say)

    limit = [] if args.redis_default_limit else ["--client-output-buffer-limit", "pubsub 0 0 0"]
    with contextlib.ExitStack() as stack:
        log_file = stack.enter_context(tempfile.TemporaryFile())
        stack.callback(os.sched_setaffinity, 0, os.sched_getaffinity(0))  # for the next run
        os.sched_setaffinity(0, other_cpus)  # Redis, the publisher and this process
        server = stack.enter_context(RedisServer(extra_args=limit))
        client = stack.enter_context(redis.Redis(host=HOST, port=server.port))
        baseline_result = None
        if args.baseline == "first":
            say("baseline consumer alone on the exporter's core; publishing ...")
            report, b_cpu, b_first = run_alone(
                server.url(0),
                exporter_cpus,
                lambda: _publish_all(server.port, traffic.commands, args.batch),
                traffic.events,
                args.stall,
            )
            baseline_result = figures("first", report, b_cpu, b_first, traffic.expected, None)
            wait_for(
                lambda: not (client.pubsub_numpat() or client.pubsub_channels()),
                timeout=10,
                what="the baseline's unsubscription",
            )
        port = free_port()
        metrics_url = f"http://{HOST}:{port}/metrics"
        exporter = start_exporter(
            stack,
            exporter_command(args.exporter_cmd, server.url(0), port),
            client,
            f"http://{HOST}:{port}{ready_path}",
            log_file,
            exporter_cpus,
        )
        say(f"exporter pid {exporter.pid} ready on port {port}")
        baseline = None
        if args.baseline == "together":
            baseline = Baseline(server.url(0), exporter_cpus)
            stack.callback(baseline.stop)
            say(f"baseline consumer pid {baseline.pid} subscribed beside it")
        say("publishing ...")
        mode = args.progress
        if mode == "auto":
            mode = "events" if EVENTS_TOTAL.encode() in fetch(metrics_url)[1] else "outcomes"
        base = scrape(metrics_url)

        watch = ProcessWatch(exporter.pid)
        stack.callback(watch.stop)
        b_before = baseline.report()["cpu_seconds"] if baseline else 0.0
        cpu_before = watch.cpu_seconds()
        burst = _burst(args, traffic, client, metrics_url, mode, base, watch)
        cpu_seconds = watch.cpu_seconds() - cpu_before
        if baseline is not None:
            report = baseline.wait_for(traffic.events, args.stall)
            baseline_result = figures(
                "together",
                report,
                report["cpu_seconds"] - b_before,
                burst.first_publish,
                traffic.expected,
                burst.baseline_backlog_peak,
            )
        if exporter.poll() is not None:
            raise RuntimeError(f"the exporter exited with {exporter.returncode} during the run")

        scrape_ms: list[float] = []
        scrape_bytes = 0
        scrape_cpu = watch.cpu_seconds()
        for _ in range(args.scrapes):
            began = time.perf_counter()
            scrape_bytes = len(fetch(metrics_url, timeout=30)[1])
            scrape_ms.append((time.perf_counter() - began) * 1000)
        scrape_cpu = watch.cpu_seconds() - scrape_cpu
        watch.stop()
        final = scrape(metrics_url)
        vmhwm = watch.vmhwm()
        redis_peak = client.info("memory").get("used_memory_peak", 0)
        pubsub_limit = client.config_get("client-output-buffer-limit")
        log_file.seek(0)
        log_tail = log_file.read().decode(errors="replace").splitlines()[-10:]

    counted = None
    if mode == "events":
        counted = int(total(burst.samples, EVENTS_TOTAL) - total(base, EVENTS_TOTAL))
    expected = traffic.outcomes()
    complete = burst.progress >= (traffic.events if counted is not None else sum(expected.values()))
    last_event = value(burst.samples, "celery_exporter_last_event_timestamp_seconds")
    if mode == "events" and last_event >= burst.first_publish:
        end, end_source = last_event, "celery_exporter_last_event_timestamp_seconds"
    else:
        end, end_source = burst.changed_at, f"progress scrapes (every {args.poll} s at best)"
    elapsed = end - burst.first_publish
    done = counted if counted is not None else traffic.events if complete else None
    publish_seconds = burst.last_publish - burst.first_publish
    outcomes = {kind: int(total(final, f"celery_task_{kind}_total")) for kind in OUTCOMES}
    result: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "revision": revision(),
        "exporter_cmd": args.exporter_cmd,
        "pinned": {"exporter": sorted(exporter_cpus), "others": sorted(other_cpus)},
        "redis_pubsub_limit": pubsub_limit.get("client-output-buffer-limit", ""),
        "progress_mode": mode,
        "build_seconds": round(build_seconds, 2),
        "events_published": traffic.events,
        "messages_published": len(traffic.commands),
        "payload_mib": round(traffic.payload_bytes / 2**20, 1),
        "messages_delivered": burst.delivered,
        "publish_seconds": round(publish_seconds, 3),
        "publish_events_per_s": round(traffic.events / publish_seconds),
        "events_counted": counted,
        "complete": complete,
        "elapsed_seconds": round(elapsed, 3),
        "elapsed_end": end_source,
        "events_per_s": round(done / elapsed) if done else None,
        "cpu_seconds": round(cpu_seconds, 3),
        "cpu_ms_per_1000_events": round(cpu_seconds * 1e6 / done, 2) if done else None,
        "progress_scrapes": burst.polls,
        "peak_rss_mb": mb(watch.peak_rss),
        "rss_samples": watch.samples,
        "vmhwm_mb": mb(vmhwm),
        "scrapes": len(scrape_ms),
        "scrape_median_ms": round(statistics.median(scrape_ms), 2) if scrape_ms else None,
        "scrape_max_ms": round(max(scrape_ms), 2) if scrape_ms else None,
        "scrape_bytes": scrape_bytes,
        "expected": expected,
        "counted": outcomes,
        "lost": {kind: expected[kind] - outcomes[kind] for kind in OUTCOMES},
        "expected_by_type": dict(sorted(traffic.expected.items())),
        "lost_by_type": {
            etype: n - int(value(final, EVENTS_TOTAL, type=etype))
            for etype, n in sorted(traffic.expected.items())
        }
        if mode == "events"
        else None,
        "malformed": int(total(final, "celery_exporter_events_malformed_total")),
        "reconnects": int(total(final, "celery_exporter_reconnects_total")),
        "redis_backlog_peak_mb": mb(burst.backlog_peak),
        "redis_used_memory_peak_mb": mb(float(redis_peak)),
        "scrape_cpu_ms": round(scrape_cpu * 1000 / len(scrape_ms), 2) if scrape_ms else None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    if baseline_result is not None:
        result["baseline"] = baseline_result
        theirs = baseline_result["us_per_event"]
        result["ratio"] = round(cpu_seconds * 1e6 / done / theirs, 3) if done and theirs else None
    if not complete:
        result["exporter_log_tail"] = log_tail
    return result


def _print(r: Mapping[str, Any]) -> None:
    def f(key: str, unit: str = "") -> str:
        got = r.get(key)
        return (
            "n/a" if got is None else f"{got:,}{unit}" if isinstance(got, int) else f"{got}{unit}"
        )

    m = r["machine"]
    rows = [
        ("date, revision", f"{r['date']}, {r['revision']}"),
        ("machine", f"{m['nproc']} cores, {m['cpu_model']}, Python {m['python']}"),
        ("pinned", f"exporter on {r['pinned']['exporter']}, the rest on {r['pinned']['others']}"),
        ("redis buffer limits", r["redis_pubsub_limit"]),
        ("events published", f"{f('events_published')} in {f('messages_published')} messages "
                             f"({r['payload_mib']} MiB)"),
        ("publish", f"{f('publish_seconds', ' s')} ({f('publish_events_per_s')} events/s), "
                    f"{f('messages_delivered')} messages delivered"),
        ("events counted", f"{f('events_counted')} (complete: {r['complete']}, "
                           f"progress: {r['progress_mode']})"),
        ("events/s", f"{f('events_per_s')} over {f('elapsed_seconds', ' s')}"),
        ("exporter CPU", f"{f('cpu_ms_per_1000_events', ' ms')} per 1 000 events "
                         f"({f('cpu_seconds', ' s')}, {r['progress_scrapes']} progress scrapes "
                         "included)"),
        ("exporter peak RSS", f"{f('peak_rss_mb', ' MB')} ({r['rss_samples']} samples), "
                              f"VmHWM {f('vmhwm_mb', ' MB')}"),
        ("scrape", f"median {f('scrape_median_ms', ' ms')}, max {f('scrape_max_ms', ' ms')}, "
                   f"{f('scrape_bytes')} bytes ({r['scrapes']} scrapes)"),
        ("expected", json.dumps(r["expected"])),
        ("counted", json.dumps(r["counted"])),
        ("lost", json.dumps(r["lost"])),
        ("reconnects, malformed", f"{r['reconnects']}, {r['malformed']}"),
        ("redis", f"peak memory {f('redis_used_memory_peak_mb', ' MB')}, backlog for the "
                  f"exporter {f('redis_backlog_peak_mb', ' MB')} at most"),
    ]  # fmt: skip
    rows.append(("scrape CPU", f"{f('scrape_cpu_ms', ' ms')} per scrape, so about "
                  f"{r['progress_scrapes'] * (r['scrape_cpu_ms'] or 0):.0f} ms in the exporter CPU "
                  f"above; load average {r['load_average']}"))  # fmt: skip
    b = r.get("baseline")
    if b is not None:
        lost = r["lost_by_type"] or {}
        rows += [
            ("baseline", f"{b['mode']}: {b['cpu_seconds']} s CPU, {b['events_counted']:,} events "
                         f"counted ({b['events_per_s'] or 0:,} events/s), {b['kib_per_read']} KiB "
                         f"per read, backlog {b['redis_backlog_peak_mb']} MB at most"),
            ("lost", f"exporter {sum(lost.values())} {_nonzero(lost)}, baseline {b['lost']} "
                     f"{_nonzero(b['lost_by_type'])} (malformed {b['malformed']})"),
            ("CPU per event", f"exporter {f('cpu_ms_per_1000_events', ' µs')}, baseline "
                              f"{b['us_per_event']} µs"),
            ("exporter / baseline", f"{r['ratio']}"),
        ]  # fmt: skip
    for label, text in rows:
        print(f"{label:>22}: {text}")
    for line in r.get("exporter_log_tail", []):
        print(f"{'exporter log':>22}: {line}")


def _nonzero(lost: Mapping[str, int]) -> str:
    return json.dumps({k: v for k, v in lost.items() if v}) if any(lost.values()) else ""


def summary(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Medians over repeated runs: exporter and baseline CPU per event, and their ratio."""

    def median(values: Sequence[float | None]) -> float | None:
        got = [v for v in values if v is not None]
        return round(statistics.median(got), 3) if got else None

    baselines = [r["baseline"] for r in results if "baseline" in r]
    return {
        "runs": len(results),
        "exporter_us_per_event": [r["cpu_ms_per_1000_events"] for r in results],
        "baseline_us_per_event": [b["us_per_event"] for b in baselines],
        "ratios": [r.get("ratio") for r in results],
        "median_exporter_us_per_event": median([r["cpu_ms_per_1000_events"] for r in results]),
        "median_baseline_us_per_event": median([b["us_per_event"] for b in baselines]),
        "median_ratio": median([r.get("ratio") for r in results]),
        "peak_rss_mb": [r["peak_rss_mb"] for r in results],
        "scrape_median_ms": [r["scrape_median_ms"] for r in results],
        "all_counted": all(
            r["complete"] and not sum((r["lost_by_type"] or {}).values()) for r in results
        )
        and all(b["lost"] == 0 for b in baselines),
    }


def compare_task_view(args: argparse.Namespace, built: tuple[Traffic, float]) -> int:
    """Rounds of two runs on the same burst, task view on and off; medians and their ratio."""
    runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    if not args.json:
        m = machine_info()
        print(f"-- {datetime.now(timezone.utc).isoformat(timespec='seconds')}, revision "
              f"{revision()}, {m['nproc']} cores, {m['cpu_model']}, Python {m['python']}; "
              f"{built[0].events} events")  # fmt: skip
    for n in range(args.repeat):
        for view in ("on", "off") if n % 2 == 0 else ("off", "on"):
            cmd = args.exporter_cmd + (f" {TASK_VIEW_OFF}" if view == "off" else "")
            ready = args.ready_path or ("/readyz" if args.exporter_cmd == DEFAULT_CMD else None)
            result = run(argparse.Namespace(**{**vars(args), "exporter_cmd": cmd,
                                                "ready_path": ready}), built)  # fmt: skip
            runs[view].append(result)
            if not args.json:
                print(f"-- round {n + 1} of {args.repeat}, task view {view}: "
                      f"{result['cpu_ms_per_1000_events']} ms CPU per 1 000 events, "
                      f"{result['events_per_s']} events/s, peak RSS {result['peak_rss_mb']} MB, "
                      f"lost {sum(result['lost'].values())}, load average "
                      f"{result['load_average']}", flush=True)  # fmt: skip
    cpu = {view: [r["cpu_ms_per_1000_events"] for r in got] for view, got in runs.items()}
    medians = {view: statistics.median(v) if None not in v else None for view, v in cpu.items()}
    on, off = medians["on"], medians["off"]
    per_round = [a / b if a and b else None for a, b in zip(cpu["on"], cpu["off"], strict=True)]
    summary = {
        "rounds": args.repeat,
        "cpu_ms_per_1000_events": cpu,
        "median_cpu_ms_per_1000_events": medians,
        "ratio_on_off": round(on / off, 3) if on and off else None,
        "ratios_by_round": [None if r is None else round(r, 3) for r in per_round],
        "peak_rss_mb": {view: [r["peak_rss_mb"] for r in got] for view, got in runs.items()},
        "events_per_s": {view: [r["events_per_s"] for r in got] for view, got in runs.items()},
        "all_counted": all(r["complete"] for got in runs.values() for r in got),
    }
    if args.json:
        print(json.dumps({**summary, "results": runs}))
    else:
        print(f"-- {args.repeat} rounds, task view on and off")
        for key, got in summary.items():
            print(f"{key:>30}: {got}")
    return 0 if summary["all_counted"] else 1


def refuse_malformed(reason: str, detail: str) -> None:
    """For in-process runs over built traffic, none of which is malformed: stop if some is."""
    raise SystemExit(f"malformed message in built traffic ({reason}): {detail}")


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds run(), which stops everything it started


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its figures; exit 1 when events were lost."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    results: list[dict[str, Any]] = []
    try:
        built = build_traffic(args, lambda m: None if args.json else print(m, file=sys.stderr))
        if args.compare_task_view:
            return compare_task_view(args, built)
        for n in range(args.repeat):
            result = run(args, built)
            results.append(result)
            if not args.json:
                if args.repeat > 1:
                    print(f"-- run {n + 1} of {args.repeat}")
                _print(result)
                sys.stdout.flush()
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    if args.repeat > 1:
        medians = summary(results)
        if args.json:
            print(json.dumps({**medians, "results": results}))
        else:
            print(f"-- {args.repeat} runs")
            for key, got in medians.items():
                print(f"{key:>30}: {got}")
    elif args.json:
        print(json.dumps(results[0]))
    complete = all(r["complete"] for r in results)
    return 0 if complete and all(r.get("baseline", {}).get("lost", 0) == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
