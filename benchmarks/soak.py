"""Soak test: a steady stream of Celery events, with task names and workers churning, for long.

Starts a private redis-server (Redis' default pub/sub buffer limits) and the exporter, and
publishes ``--rate`` events/s for ``--duration`` seconds from a separate process, paced every
``--tick`` seconds. Task names rotate (several hundred alive at once, thousands over the run, so
``--max-task-names`` fills and later names count as ``other``) and workers come and go
(worker-online, heartbeats, worker-offline or plain silence), so the exporter purges them after
``--worker-purge-after``. Every ``--sample-every`` seconds it records the events published and
counted, the exporter's RSS and CPU, the scrape time, size and series count and the tracked
tasks; at the end it compares memory and scrape time after the warm-up with the end of the run.

    .venv/bin/python benchmarks/soak.py [--duration 1800] [--rate 5000] [--json]

Nothing here asserts anything but the verdict line: benchmarks/README.md has the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import redis
from ingest import (
    DEFAULT_CMD,
    EVENTS_TOTAL,
    HOST,
    ProcessWatch,
    TrafficBuilder,
    Worker,
    exporter_command,
    machine_info,
    mb,
    on_sigterm,
    publish,
    redis_backlog,
    revision,
    start_exporter,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.support

from tests.support.launchers import RedisServer, free_port
from tests.support.scrape import fetch, parse_metrics, total, value

#: Families a sample reads; other lines of the page are only counted.
SAMPLED = ("celery_exporter_", "celery_worker_up", "celery_task_received_total")
CORE_NAME = "app.tasks.job_{:03d}"
CHURN_NAME = "tenant_{:05d}.tasks.sync"


# -- traffic ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Churn:
    """How task names and workers change over the run."""

    core_names: int = 200
    core_share: float = 0.5
    live_names: int = 300
    names_per_minute: float = 200.0
    workers: int = 12
    concurrency: int = 4
    worker_every: float = 120.0
    replaced: int = 3


class ChurnTraffic(TrafficBuilder):
    """The ingest benchmark's traffic, made endless, with rotating task names and workers.

    A share ``core_share`` of the tasks is named after one of ``core_names`` names that live the
    whole run; the others after one of a window of ``live_names`` names that slides by
    ``names_per_minute`` a minute (each name lives ``live_names / names_per_minute`` minutes).
    Every ``worker_every`` simulated seconds, ``replaced`` random workers leave: each hands the
    tasks it has not yet received to the others and finishes those it runs; the first of them
    goes silent without a worker-offline (like a worker killed or cut off), the others send
    worker-offline first, as Celery's warm shutdown does. As many new hostnames come online
    (worker-online, then a heartbeat every 2 s).
    """

    def __init__(self, churn: Churn, *, seed: int, rate: float) -> None:
        if not 0 < churn.replaced < churn.workers:
            raise ValueError("--workers-replaced must be at least 1 and less than --workers")
        super().__init__(
            seed=seed, workers=churn.workers, concurrency=churn.concurrency, sim_rate=rate
        )
        self.churn = churn
        self.began = 0.0
        self.next_change = 0.0
        self.leaving: list[Worker] = []
        self.hosts = churn.workers  # hostnames used so far
        self.newest_name = -1  # index of the newest churning name used
        self.offline = 0  # workers that left with worker-offline
        self.vanished = 0  # workers that went silent

    def start(self, now: float) -> None:
        """Start the clock; every first worker comes online."""
        super().start(now)
        self.began = now
        self.next_change = now + self.churn.worker_every
        for worker in self.workers:
            self._worker_event(worker, "worker-online")

    def step(self, target_events: int | None) -> bool:
        """Advance by one event: of a leaving worker finishing its tasks, or of the rest."""
        if self.now >= self.next_change:
            self._change_workers()
        leaving, rng = self.leaving, self.rng
        if leaving and rng.random() < len(leaving) / (len(leaving) + len(self.workers)):
            self.now += rng.expovariate(self.sim_rate)
            worker = rng.choice(leaving)
            self._advance(worker, rng.choice(worker.active))
            if not worker.active:
                self._flush(worker)
                leaving.remove(worker)
            return True
        return super().step(target_events)

    def _change_workers(self) -> None:
        rng = self.rng
        self.next_change += self.churn.worker_every
        workers = self.workers
        gone = [workers.pop(rng.randrange(len(workers))) for _ in range(self.churn.replaced)]
        for n, worker in enumerate(gone):
            self._flush(worker)
            if n == 0:
                self.vanished += 1
            else:
                self._worker_event(worker, "worker-offline")
                self.offline += 1
            if worker.active:
                self.leaving.append(worker)
        for _ in gone:
            self.hosts += 1
            worker = Worker(
                f"celery@worker-{self.hosts}",
                1000 + 7 * self.hosts,
                self.now + self.heartbeat_every,
            )
            self.workers.append(worker)
            self._worker_event(worker, "worker-online")
        for worker in gone:  # messages it had not received go back to the queue
            for attempt in worker.backlog:
                rng.choice(self.workers).backlog.append(attempt)
            worker.backlog.clear()

    def _task_name(self) -> str:
        rng, churn = self.rng, self.churn
        if rng.random() < churn.core_share:
            return CORE_NAME.format(rng.randrange(churn.core_names))
        first = int((self.now - self.began) * churn.names_per_minute / 60)
        n = first + rng.randrange(churn.live_names)
        self.newest_name = max(self.newest_name, n)
        return CHURN_NAME.format(n)


def _publisher(
    port: int,
    churn: Churn,
    args: argparse.Namespace,
    stop: Any,  # multiprocessing.Event
    progress: Any,  # shared array: events, messages, deliveries so far
    report: Connection,
) -> None:
    """Child process: make and publish traffic at ``args.rate`` until ``args.duration``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops this process
    builder = ChurnTraffic(churn, seed=args.seed, rate=args.rate)
    traffic = builder.traffic
    messages = delivered = ticks = 0
    late = 0.0  # how far behind its schedule a tick ran, at most
    with socket.create_connection((HOST, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        builder.start(time.time())
        began = time.monotonic()
        while not stop.is_set():
            elapsed = time.monotonic() - began
            late = max(late, elapsed - ticks * args.tick)
            due = min(elapsed, args.duration) * args.rate
            while traffic.events < due:
                builder.step(None)
            if traffic.commands:
                delivered += publish(sock, traffic.commands)
                messages += len(traffic.commands)
                traffic.commands.clear()
            progress[:] = [traffic.events, messages, delivered]
            if elapsed >= args.duration:
                break
            ticks += 1
            time.sleep(max(0.0, began + ticks * args.tick - time.monotonic()))
    report.send(
        {
            "expected_by_type": dict(sorted(traffic.expected.items())),
            "payload_mib": round(traffic.payload_bytes / 2**20, 1),
            "task_names_used": churn.core_names + builder.newest_name + 1,
            "hostnames_used": builder.hosts,
            "workers_offline": builder.offline,
            "workers_vanished": builder.vanished,
            "tasks_started": builder.started,
            "publisher_late_max_s": round(late, 3),
            "sim_clock_ahead_s": round(builder.now - time.time(), 3),
        }
    )


# -- sampling -----------------------------------------------------------------------------------


@dataclass
class Sample:
    """What one sample saw."""

    t: float  # seconds since publishing started
    published: int
    counted: int
    rss_mb: float
    cpu_percent: float  # exporter CPU since the previous sample's scrapes ended: ingest
    scrape_ms: float  # median wall time of the sample's scrapes
    scrape_max_ms: float
    scrape_cpu_ms: float  # exporter CPU per scrape, less what ingest took meanwhile
    scrape_bytes: int
    series: int
    tracked_tasks: int
    task_names: int  # name label values in celery_task_received_total, other included
    name_overflow: int
    workers: int
    workers_up: int
    redis_backlog_mb: float
    reconnects: int
    load1: float  # the machine's 1-minute load average


class Sampler:
    """Takes samples of the exporter: RSS first, then timed scrapes of /metrics."""

    def __init__(
        self, url: str, watch: ProcessWatch, client: redis.Redis, scrapes: int, began: float
    ) -> None:
        self.url = url
        self.watch = watch
        self.client = client
        self.scrapes = scrapes
        self.began = began
        self.last = (began, watch.cpu_seconds())
        self.scrape_max_ms = 0.0

    def take(self, published: Callable[[], int]) -> Sample:
        """Sample now; ``published()`` tells how many events the publisher has published.

        It is read just before the first scrape, whose page gives the counts.
        """
        rss = self.watch.rss()
        now, cpu = time.monotonic(), self.watch.cpu_seconds()
        ingest = (cpu - self.last[1]) / max(now - self.last[0], 1e-9)  # CPU s per s
        sent = published()
        times, bodies = [], []
        for _ in range(self.scrapes):
            began = time.perf_counter()
            status, body = fetch(self.url, timeout=120)
            times.append((time.perf_counter() - began) * 1000)
            if status != 200:
                raise RuntimeError(f"{self.url} answered {status}")
            bodies.append(body)
        self.last = (time.monotonic(), self.watch.cpu_seconds())
        scrape_cpu = (self.last[1] - cpu - ingest * (self.last[0] - now)) / self.scrapes
        self.scrape_max_ms = max(self.scrape_max_ms, *times)
        body = bodies[0]
        lines = body.decode().splitlines()
        samples = parse_metrics("\n".join(ln for ln in lines if ln.startswith(SAMPLED)) + "\n")
        names = {
            dict(labels).get("name")
            for name, labels in samples
            if name == "celery_task_received_total"
        }
        ups = [v for (name, _), v in samples.items() if name == "celery_worker_up"]
        return Sample(
            t=round(now - self.began, 1),
            published=sent,
            counted=int(total(samples, EVENTS_TOTAL)),
            rss_mb=mb(rss) or 0.0,
            cpu_percent=round(100 * ingest, 1),
            scrape_ms=round(statistics.median(times), 1),
            scrape_max_ms=round(max(times), 1),
            scrape_cpu_ms=round(scrape_cpu * 1000, 1),
            scrape_bytes=len(body),
            series=sum(1 for ln in lines if ln and not ln.startswith("#")),
            tracked_tasks=int(value(samples, "celery_exporter_tracked_tasks")),
            task_names=len(names),
            name_overflow=int(value(samples, "celery_exporter_label_overflow_total", label="name")),
            workers=len(ups),
            workers_up=int(sum(ups)),
            redis_backlog_mb=mb(redis_backlog(self.client)) or 0.0,
            reconnects=int(total(samples, "celery_exporter_reconnects_total")),
            load1=round(os.getloadavg()[0], 2),
        )


HEADER = (
    f"{'t s':>5} {'published':>10} {'counted':>10} {'lag':>5} {'RSS MB':>6} {'CPU%':>4} "
    f"{'scrape ms':>9} {'(max)':>6} {'(CPU)':>6} {'bytes':>9} {'series':>6} {'tracked':>7} "
    f"{'names':>5} {'other':>9} {'workers':>7} {'backlog':>7} {'load':>4}"
)
LEGEND = (
    "CPU%: exporter CPU between samples (ingest); scrape ms: median wall time of the sample's "
    "scrapes, (max) the slowest, (CPU) exporter CPU per scrape less ingest; names: name label "
    "values, other included; other: events named other; workers: up/in the table; backlog: "
    "bytes Redis holds for the exporter; load: 1-minute load average"
)


def _line(s: Sample) -> str:
    return (
        f"{s.t:>5.0f} {s.published:>10,} {s.counted:>10,} {s.published - s.counted:>5,} "
        f"{s.rss_mb:>6.1f} {s.cpu_percent:>4.1f} {s.scrape_ms:>9.1f} {s.scrape_max_ms:>6.0f} "
        f"{s.scrape_cpu_ms:>6.0f} {s.scrape_bytes:>9,} {s.series:>6,} {s.tracked_tasks:>7,} "
        f"{s.task_names:>5} {s.name_overflow:>9,} {f'{s.workers_up}/{s.workers}':>7} "
        f"{s.redis_backlog_mb:>5.1f}MB {s.load1:>4.2f}"
    )


# -- the run ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The soak's flags."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = p.add_argument
    d = Churn()
    add("--rate", type=float, default=5000.0, help="events published per second")
    add("--duration", type=float, default=1800.0, help="seconds of publishing")
    add("--sample-every", type=float, default=30.0, help="seconds between samples")
    add("--warmup", type=float, default=300.0,
        help="samples from then on are compared (at most half of --duration)")  # fmt: skip
    add("--tick", type=float, default=0.1, help="seconds between published batches")
    add("--scrapes", type=int, default=3, help="scrapes per sample (the median is reported)")
    add("--seed", type=int, default=1, help="seed of the simulated traffic")
    add("--core-names", type=int, default=d.core_names, help="task names alive the whole run")
    add("--core-share", type=float, default=d.core_share, help="share of tasks with core names")
    add("--live-names", type=int, default=d.live_names,
        help="churning task names alive at once")  # fmt: skip
    add("--names-per-minute", type=float, default=d.names_per_minute,
        help="churning task names that appear (and as many that stop) per minute")  # fmt: skip
    add("--workers", type=int, default=d.workers, help="workers alive at once")
    add("--concurrency", type=int, default=d.concurrency, help="tasks in flight per worker")
    add("--worker-every", type=float, default=d.worker_every,
        help="seconds between worker changes")  # fmt: skip
    add("--workers-replaced", type=int, default=d.replaced,
        help="workers replaced by new hostnames at each change")  # fmt: skip
    add("--max-task-names", type=int, default=1000, help="passed to the exporter")
    add("--worker-purge-after", type=float, default=120.0, help="passed to the exporter")
    add("--growth-limit", type=float, default=5.0,
        help="MB of RSS growth after the warm-up the target allows")  # fmt: skip
    add("--scrape-tolerance", type=float, default=0.25,
        help="scrape time counts as flat while the median of the last 3 samples is at most this "
        "much (fraction) above that of the first 3 after the warm-up, or 2 ms")  # fmt: skip
    add("--stall", type=float, default=10.0,
        help="after publishing, wait this long for the count to move before calling the rest "
        "lost")  # fmt: skip
    add("--json", action="store_true", help="print the results as one JSON object")
    return p.parse_args(argv)


def _tree_hash() -> str:
    """A short hash of the exporter's source files, to tell which code a run used."""
    digest = hashlib.sha256()
    for path in sorted((Path(__file__).resolve().parents[1] / "celery_exporter").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _slope_per_10min(points: Sequence[tuple[float, float]]) -> float | None:
    if len(points) < 2 or len({t for t, _ in points}) < 2:
        return None
    fit = statistics.linear_regression([t for t, _ in points], [v for _, v in points])
    return round(fit.slope * 600, 2)


def _wait_counted(sampler: Sampler, published: int, stall: float) -> Sample:
    """Sample until every published event is counted, or the count stops moving."""
    final = sampler.take(lambda: published)
    moved = time.monotonic()
    while final.counted < published and time.monotonic() - moved < stall:
        time.sleep(0.5)
        again = sampler.take(lambda: published)
        if again.counted != final.counted:
            moved = time.monotonic()
        final = again
    return final


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the soak once and return its figures."""

    def say(message: str) -> None:
        print(message, file=sys.stderr if args.json else sys.stdout, flush=True)

    churn = Churn(
        core_names=args.core_names,
        core_share=args.core_share,
        live_names=args.live_names,
        names_per_minute=args.names_per_minute,
        workers=args.workers,
        concurrency=args.concurrency,
        worker_every=args.worker_every,
        replaced=args.workers_replaced,
    )
    warmup = min(args.warmup, args.duration / 2)
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    code = {"revision": revision(), "celery_exporter_sha256": _tree_hash()}
    extra = (
        f" --max-task-names {args.max_task_names} --worker-purge-after {args.worker_purge_after:g}"
    )
    ctx = multiprocessing.get_context("fork")
    samples: list[Sample] = []
    with contextlib.ExitStack() as stack:
        log_file = stack.enter_context(tempfile.TemporaryFile())
        server = stack.enter_context(RedisServer())  # default pub/sub buffer limits
        client = stack.enter_context(redis.Redis(host=HOST, port=server.port))
        port = free_port()
        metrics_url = f"http://{HOST}:{port}/metrics"
        command = exporter_command(DEFAULT_CMD + extra, server.url(0), port)
        exporter = start_exporter(stack, command, client, f"http://{HOST}:{port}/readyz", log_file)
        say(f"exporter pid {exporter.pid} on port {port}: {' '.join(command[1:])}")
        say(
            f"publishing {args.rate:g} events/s for {args.duration:g} s; task names: "
            f"{churn.core_names} for good + {churn.live_names} churning, "
            f"{churn.names_per_minute:g} new a minute; {churn.workers} workers, "
            f"{churn.replaced} replaced every {churn.worker_every:g} s; warm-up {warmup:g} s"
        )

        stop = ctx.Event()
        progress = ctx.Array("q", 3, lock=False)
        receiver, sender = ctx.Pipe(duplex=False)
        publisher = ctx.Process(
            target=_publisher,
            args=(server.port, churn, args, stop, progress, sender),
            daemon=True,
        )

        def stop_publisher() -> None:
            stop.set()
            publisher.join(10)
            if publisher.is_alive():
                publisher.terminate()
                publisher.join(5)

        publisher.start()  # forked before the sampling thread starts
        began = time.monotonic()
        stack.callback(stop_publisher)
        sender.close()
        watch = ProcessWatch(exporter.pid, interval=1.0)
        watch.start()
        stack.callback(watch.stop)
        sampler = Sampler(metrics_url, watch, client, args.scrapes, began)

        def check() -> None:
            if publisher.exitcode not in (None, 0):
                raise RuntimeError(f"the publisher failed with exit code {publisher.exitcode}")
            if exporter.poll() is not None:
                raise RuntimeError(f"the exporter exited with {exporter.returncode}")

        say(
            f"exporter code: {code['revision']}, celery_exporter/*.py sha256 "
            f"{code['celery_exporter_sha256']}"
        )
        say(LEGEND)
        say(HEADER)
        next_at = began
        while next_at < began + args.duration - 1:
            time.sleep(max(0.0, next_at - time.monotonic()))
            check()
            samples.append(sampler.take(lambda: int(progress[0])))
            say(_line(samples[-1]))
            # after a slow sample, skip ahead rather than bunch up
            next_at = max(next_at + args.sample_every, time.monotonic())
        info: dict[str, Any] = {}
        if receiver.poll(max(0.0, began + args.duration - time.monotonic()) + 60):
            info = receiver.recv()
        publisher.join(10)
        check()
        published, messages, delivered = (int(n) for n in progress)
        samples.append(_wait_counted(sampler, published, args.stall))
        final = samples[-1]
        say(_line(final) + "  (end: publishing stopped)")
        watch.stop()
        vmhwm = watch.vmhwm()
        final_page = parse_metrics(fetch(metrics_url, timeout=120)[1].decode())
        log_file.seek(0)
        log_tail = log_file.read().decode(errors="replace").splitlines()[-10:]

    after = [s for s in samples if s.t >= warmup - 1]
    at_warmup, at_end = after[0], samples[-1]
    window = min(3, max(1, len(after) // 2))
    scrape_first = round(statistics.median(s.scrape_ms for s in after[:window]), 1)
    scrape_last = round(statistics.median(s.scrape_ms for s in after[-window:]), 1)
    cpu_first = round(statistics.median(s.scrape_cpu_ms for s in after[:window]), 1)
    cpu_last = round(statistics.median(s.scrape_cpu_ms for s in after[-window:]), 1)
    growth = round(at_end.rss_mb - at_warmup.rss_mb, 1)
    rss_max = mb(watch.peak_rss) or 0.0
    rss_ok = growth < args.growth_limit
    scrape_ok = scrape_last <= max(scrape_first * (1 + args.scrape_tolerance), scrape_first + 2)
    expected = info.get("expected_by_type", {})
    lost = published - final.counted
    verdict = (
        f"{'MET' if rss_ok and scrape_ok else 'NOT MET'}: RSS growth after warm-up "
        f"{growth:+.1f} MB "
        f"({'<' if rss_ok else '>='} {args.growth_limit:g} MB), scrape median "
        f"{scrape_first:.1f} -> {scrape_last:.1f} ms ({'flat' if scrape_ok else 'not flat'}, "
        f"tolerance {args.scrape_tolerance:.0%} or 2 ms; CPU per scrape {cpu_first:.0f} -> "
        f"{cpu_last:.0f} ms); {lost:,} events lost"
    )
    return {
        "date": started_at,
        "machine": machine_info(),
        **code,
        "exporter_cmd": " ".join(command[1:]),
        "rate": args.rate,
        "max_task_names": args.max_task_names,
        "worker_purge_after_s": args.worker_purge_after,
        "duration_s": args.duration,
        "churn": asdict(churn),
        **info,
        "warmup_s": warmup,
        "warmup_sample_t": at_warmup.t,
        "end_sample_t": at_end.t,
        "rss_warmup_mb": at_warmup.rss_mb,
        "rss_end_mb": at_end.rss_mb,
        "rss_max_mb": rss_max,
        "vmhwm_mb": mb(vmhwm),
        "rss_growth_mb": growth,
        "rss_slope_mb_per_10min": _slope_per_10min([(s.t, s.rss_mb) for s in after]),
        "scrape_warmup_ms": at_warmup.scrape_ms,
        "scrape_end_ms": at_end.scrape_ms,
        "scrape_first_window_ms": scrape_first,
        "scrape_last_window_ms": scrape_last,
        "scrape_max_ms": round(sampler.scrape_max_ms, 1),
        "scrape_slope_ms_per_10min": _slope_per_10min([(s.t, s.scrape_ms) for s in after]),
        "scrape_cpu_first_window_ms": cpu_first,
        "scrape_cpu_last_window_ms": cpu_last,
        "scrape_cpu_slope_ms_per_10min": _slope_per_10min([(s.t, s.scrape_cpu_ms) for s in after]),
        "load1_min_max": [min(s.load1 for s in samples), max(s.load1 for s in samples)],
        "scrape_bytes_warmup": at_warmup.scrape_bytes,
        "scrape_bytes_end": at_end.scrape_bytes,
        "series_warmup": at_warmup.series,
        "series_end": at_end.series,
        "tracked_tasks_max": max(s.tracked_tasks for s in samples),
        "events_published": published,
        "messages_published": messages,
        "messages_delivered": delivered,
        "events_counted": final.counted,
        "events_lost": lost,
        "lost_by_type": {
            etype: n - int(value(final_page, EVENTS_TOTAL, type=etype))
            for etype, n in expected.items()
        },
        "name_overflow": final.name_overflow,
        "reconnects": final.reconnects,
        "malformed": int(total(final_page, "celery_exporter_events_malformed_total")),
        "workers_in_table_end": final.workers,
        "redis_backlog_max_mb": max(s.redis_backlog_mb for s in samples),
        "rss_ok": rss_ok,
        "scrape_ok": scrape_ok,
        "verdict": verdict,
        "samples": [asdict(s) for s in samples],
        "exporter_log_tail": log_tail,
    }


def _print(r: Mapping[str, Any]) -> None:
    m = r["machine"]
    rows = [
        ("started, revision", f"{r['date']}, {r['revision']} (celery_exporter/*.py sha256 "
                              f"{r['celery_exporter_sha256']})"),
        ("machine", f"{m['nproc']} cores, {m['cpu_model']}, Python {m['python']}"),
        ("exporter", r["exporter_cmd"]),
        ("published", f"{r['events_published']:,} events in {r['messages_published']:,} "
                      f"messages ({r.get('payload_mib', '?')} MiB), "
                      f"{r['messages_delivered']:,} messages delivered"),
        ("task names used", f"{r.get('task_names_used', '?')} (--max-task-names "
                            f"{r['max_task_names']}; {r['name_overflow']:,} events named other)"),
        ("workers", f"{r.get('hostnames_used', '?')} hostnames: {r.get('workers_offline', '?')} "
                    f"left with worker-offline, {r.get('workers_vanished', '?')} went silent; "
                    f"{r['workers_in_table_end']} in the table at the end"),
        ("publisher", f"ticks late by {r.get('publisher_late_max_s', '?')} s at most, "
                      f"simulated minus wall clock at the end: "
                      f"{r.get('sim_clock_ahead_s', '?')} s"),
        ("warm-up", f"{r['warmup_s']:g} s (sample at {r['warmup_sample_t']:g} s); "
                    f"end sample at {r['end_sample_t']:g} s"),
        ("RSS", f"{r['rss_warmup_mb']} MB at warm-up, {r['rss_end_mb']} MB at end, "
                f"{r['rss_max_mb']} MB max (VmHWM {r['vmhwm_mb']} MB); growth "
                f"{r['rss_growth_mb']:+} MB, trend {r['rss_slope_mb_per_10min']} MB / 10 min"),
        ("scrape", f"{r['scrape_warmup_ms']} ms at warm-up, {r['scrape_end_ms']} ms at end "
                   f"(3-sample medians {r['scrape_first_window_ms']} -> "
                   f"{r['scrape_last_window_ms']} ms), max {r['scrape_max_ms']} ms; trend "
                   f"{r['scrape_slope_ms_per_10min']} ms / 10 min"),
        ("scrape CPU", f"{r['scrape_cpu_first_window_ms']} -> {r['scrape_cpu_last_window_ms']} "
                       f"ms per scrape (3-sample medians); trend "
                       f"{r['scrape_cpu_slope_ms_per_10min']} ms / 10 min"),
        ("load average", f"{r['load1_min_max'][0]} to {r['load1_min_max'][1]} (1 min, at "
                         "samples)"),
        ("scrape size", f"{r['scrape_bytes_warmup']:,} -> {r['scrape_bytes_end']:,} bytes, "
                        f"{r['series_warmup']:,} -> {r['series_end']:,} series"),
        ("tracked tasks", f"{r['tracked_tasks_max']:,} at most"),
        ("lost", f"{r['events_lost']:,} events (published - counted); by type "
                 f"{json.dumps({k: v for k, v in r['lost_by_type'].items() if v})}"),
        ("reconnects, malformed", f"{r['reconnects']}, {r['malformed']}"),
        ("redis backlog", f"{r['redis_backlog_max_mb']} MB at most (at samples)"),
        ("verdict", r["verdict"]),
    ]  # fmt: skip
    for label, text in rows:
        print(f"{label:>22}: {text}")
    if r["events_lost"] or not (r["rss_ok"] and r["scrape_ok"]):
        for line in r["exporter_log_tail"]:
            print(f"{'exporter log':>22}: {line}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak; exit 1 when the target was missed or events were lost."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        result = run(args)
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result))
    else:
        _print(result)
    return 0 if result["rss_ok"] and result["scrape_ok"] and not result["events_lost"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
