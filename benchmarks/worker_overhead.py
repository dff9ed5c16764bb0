"""What worker-side monitoring costs a worker: the in-worker exporter's CPU per task and memory,
and the resource sidecar's CPU and memory.

Three measurements:

1. **Signal path** (in this process, no broker): the in-worker exporter is started as a worker
   would start it and ``--signal-tasks`` task runs (20 000) are sent through Celery's real
   signals (``task_received``, ``task_prerun``, ``task_success``, ``task_postrun``), once as
   the solo and threads pools do (all in the main process) and once from a forked pool process
   (prefork: the child hands each signal to the main process's socket; here it sends
   ``task_received`` too, which a real worker's main process handles). Prints the CPU time per
   task in each process, and for one run in 50 sent 20 ms apart, so that each finds the CPU
   caches cold, as a worker's runs between tasks do. This is the exporter's own cost, free of
   the noise below.
2. **Sidecar**: ``--sidecar-workers`` plain prefork workers (1; ``-c 2`` each) of the test app
   on a private ``redis-server`` share a steady load of ``--rate`` tasks a second
   (``taskapp.sleep`` of 10 ms) while ``celery-exporter sidecar`` watches them and is scraped
   every ``--scrape-interval`` seconds (15 s, as Prometheus is usually set) for ``--duration``
   seconds. Prints the sidecar's CPU (user + system) as a percentage of one core, and its RSS
   and USS (memory no other process shares) at the end; runs with different
   ``--sidecar-workers`` give the cost of each further worker watched.
3. **Whole worker**: the same load on a worker with task events and no exporter (what the
   event-stream mode asks of a worker), with neither (the baseline) and with the in-worker
   exporter and no events (resources on, scraped as above), ``--repeat`` times in turn (2).
   Prints each run's CPU per task (main and pool processes, reaped ones included) and the USS
   of the main and pool processes, then the medians' differences from the baseline. Whole-
   worker CPU varies by 10-20 % from run to run on a shared machine, so read small
   differences here against measurement 1.

Not a test::

    .venv/bin/python benchmarks/worker_overhead.py --duration 120
    .venv/bin/python benchmarks/worker_overhead.py --duration 60 --sidecar-workers 4 --only sidecar
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
from celery import Celery, signals

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.support

from tests.support.launchers import RedisServer, free_port
from tests.support.signals import SignalWorker, send_task_run
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
PORT_ENV = "CELERY_EXPORTER_TEST_WORKER_PORT"
HOST = "w1@bench"
#: Seconds between the signal path's cold runs.
COLD_GAP = 0.02


# -- 1. the signal path -------------------------------------------------------------------------


def one_run(task_id: str) -> None:
    """The signals Celery sends for one task that succeeds."""
    send_task_run("bench.task", task_id)


def succeeded(exporter: Any) -> float:
    """``celery_task_succeeded_total`` of the benchmark's task, as the exporter holds it."""
    from prometheus_client import generate_latest

    from tests.support.scrape import parse_metrics, value

    text = generate_latest(exporter.registry).decode()
    labels = {"name": "bench.task", "hostname": HOST, "queue_name": "celery"}
    return value(parse_metrics(text), "celery_task_succeeded_total", **labels)


def signal_path(tasks: int) -> None:
    """Measurement 1: CPU per task of the exporter's signal receivers, both paths."""
    from celery_exporter.worker import install

    app = object()
    exporter = install(app, port=free_port(), host="127.0.0.1", resources=False)
    signals.worker_init.send(sender=SignalWorker(app, HOST))
    signals.worker_ready.send(sender=None)  # no event loop: the inbox thread receives
    try:
        began = time.process_time()
        for i in range(tasks):
            one_run(f"main-{i}")
        main_us = (time.process_time() - began) / tasks * 1e6
        # The same with the CPU left to other work between runs, as between a worker's tasks:
        # the caches are cold for each run.
        cold, cpu = tasks // 50, 0.0
        for i in range(cold):
            began = time.process_time()
            one_run(f"cold-{i}")
            cpu += time.process_time() - began
            time.sleep(COLD_GAP)
        cold_us = cpu / cold * 1e6
        read, write = os.pipe()
        parent_began = time.process_time()
        pid = os.fork()
        if pid == 0:  # a pool process
            try:
                signals.worker_process_init.send(sender=None)
                began = time.process_time()
                for i in range(tasks):
                    one_run(f"pool-{i}")
                os.write(write, f"{(time.process_time() - began) / tasks * 1e6:.1f}".encode())
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        pool_us = os.read(read, 64).decode()
        wait_for(lambda: succeeded(exporter) == 2 * tasks + cold, 120, 0.1, "every pool event")
        parent_us = (time.process_time() - parent_began) / tasks * 1e6
    finally:
        exporter.stop()
        exporter.disconnect()
    print(f"signal path, {tasks} tasks each:")
    print(f"  main-process pools (solo, threads): {main_us:.1f} us CPU per task")
    print(
        f"  the same, {cold} runs {COLD_GAP * 1000:.0f} ms apart (cold caches): "
        f"{cold_us:.1f} us CPU per task"
    )
    print(
        f"  prefork: {pool_us} us per task in the pool process, "
        f"{parent_us:.1f} us in the main process (receiving and counting)"
    )


# -- 2. and 3. real workers ---------------------------------------------------------------------


def start_worker(
    broker: str, name: str, logdir: Path, port: int | None, events: bool = True
) -> subprocess.Popen[bytes]:
    """A prefork worker of the test app, with the in-worker exporter when ``port`` is given."""
    env = {**os.environ, "CELERY_EXPORTER_TEST_BROKER": broker, "PYTHONPATH": str(ROOT)}
    env.pop(PORT_ENV, None)
    env["CELERY_EXPORTER_TEST_EVENTS"] = "1" if events else "0"
    env["CELERY_EXPORTER_TEST_SAMPLE_INTERVAL"] = "1"  # install()'s default, not the tests' 0.2
    if port is not None:
        env[PORT_ENV] = str(port)
    args = [
        sys.executable, "-m", "celery", "-A", "tests.support.taskapp", "worker",
        "-c", "2", "-n", f"{name}@bench", "-l", "warning", "--without-mingle", "--without-gossip",
    ]  # fmt: skip
    with (logdir / f"{name}.log").open("ab") as log:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def stop(worker: subprocess.Popen[bytes]) -> None:
    """Warm-stop a worker and wait for it."""
    worker.terminate()
    worker.wait(30)


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its live children and its reaped children."""
    main = psutil.Process(pid)
    cpu = main.cpu_times()
    total = cpu.user + cpu.system + cpu.children_user + cpu.children_system
    for child in main.children():
        times = child.cpu_times()
        total += times.user + times.system
    return total


def run_load(app: Celery, seconds: float, rate: float, scrape_url: str | None, every: float) -> int:
    """Send ``rate`` tasks a second for ``seconds``, scraping ``scrape_url`` every ``every`` s."""
    sent, began = 0, time.monotonic()
    next_scrape = began
    while (elapsed := time.monotonic() - began) < seconds:
        while sent < elapsed * rate:
            app.send_task("taskapp.sleep", args=(0.01,))
            sent += 1
        if scrape_url is not None and time.monotonic() >= next_scrape:
            with urllib.request.urlopen(scrape_url, timeout=10) as response:
                response.read()
            next_scrape += every
        time.sleep(0.01)
    return sent


def wait_idle(broker: str) -> None:
    """Wait until the queue is empty and the last tasks have run."""
    import redis

    client = redis.Redis.from_url(broker)
    wait_for(lambda: client.llen("celery") == 0, 60, 0.2, "the queue to drain")
    time.sleep(1)


def http_up(url: str) -> bool:
    """Whether ``url`` answers."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def sidecar_cost(broker: str, app: Celery, logdir: Path, args: argparse.Namespace) -> None:
    """Measurement 2: the sidecar's CPU and memory while it watches loaded workers."""
    plain = [start_worker(broker, f"plain{i}", logdir, None) for i in range(args.sidecar_workers)]
    port = free_port()
    sidecar = subprocess.Popen(
        [sys.executable, "-m", "celery_exporter", "sidecar", "--host", "127.0.0.1",
         "--port", str(port), "--match", "-n plain[0-9]+@bench", "--log-level", "warning"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_for(lambda: http_up(url), 30, 0.1, "the sidecar")
        time.sleep(5)  # the workers' start-up
        side = psutil.Process(sidecar.pid)
        cpu0, t0 = sum(side.cpu_times()[:2]), time.monotonic()
        run_load(app, args.duration, args.rate, url, args.scrape_interval)
        cpu1, t1 = sum(side.cpu_times()[:2]), time.monotonic()
        mem = side.memory_full_info()
        print(
            f"sidecar watching {args.sidecar_workers} worker(s): "
            f"{100 * (cpu1 - cpu0) / (t1 - t0):.3f} % of a core, "
            f"RSS {mem.rss / 2**20:.1f} MiB, USS {mem.uss / 2**20:.1f} MiB"
        )
    finally:
        sidecar.terminate()
        sidecar.wait(10)
        wait_idle(broker)
        for worker in plain:
            stop(worker)


def whole_worker(broker: str, app: Celery, logdir: Path, args: argparse.Namespace) -> None:
    """Measurement 3: whole-worker CPU per task and memory, events, baseline and exporter."""
    phases = (("events, no exporter", False, True), ("baseline", False, False),
              ("in-worker exporter", True, False))  # fmt: skip
    runs: dict[str, list[tuple[float, int, int]]] = {label: [] for label, _, _ in phases}
    for round_ in range(args.repeat):
        for label, exporter, events in phases:
            port = free_port() if exporter else None
            worker = start_worker(broker, f"w{round_}-{label[:6].strip(',')}", logdir, port, events)
            url = f"http://127.0.0.1:{port}/metrics" if port else None
            try:
                if url is not None:
                    wait_for(lambda u=url: http_up(u), 30, 0.1, "the in-worker exporter")
                time.sleep(4)  # the pool's start-up
                cpu0 = tree_cpu(worker.pid)
                sent = run_load(app, args.duration, args.rate, url, args.scrape_interval)
                wait_idle(broker)
                cpu = (tree_cpu(worker.pid) - cpu0) / sent
                main = psutil.Process(worker.pid)
                main_uss = main.memory_full_info().uss
                pool_uss = sum(c.memory_full_info().uss for c in main.children())
            finally:
                stop(worker)
            runs[label].append((cpu, main_uss, pool_uss))
            print(
                f"  run {round_ + 1}, {label}: {sent} tasks, {cpu * 1000:.3f} ms CPU per task; "
                f"USS main {main_uss / 2**20:.1f} MiB, pool {pool_uss / 2**20:.1f} MiB"
            )
    medians = {
        label: tuple(statistics.median(r[i] for r in rs) for i in range(3))
        for label, rs in runs.items()
    }
    base = medians["baseline"]
    print(f"whole worker, medians of {args.repeat} runs: baseline {base[0] * 1000:.3f} ms per task")
    for label in ("events, no exporter", "in-worker exporter"):
        cpu, main_uss, pool_uss = medians[label]
        print(
            f"  {label} vs baseline: {1000 * (cpu - base[0]):+.3f} ms CPU per task, "
            f"USS main {(main_uss - base[1]) / 2**20:+.1f} MiB, "
            f"pool {(pool_uss - base[2]) / 2**20:+.1f} MiB (both pool processes)"
        )


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--only", choices=("signals", "sidecar", "worker"), help="one measurement")
    parser.add_argument("--signal-tasks", type=int, default=20_000)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds per load run")
    parser.add_argument("--rate", type=float, default=20.0, help="tasks per second")
    parser.add_argument("--scrape-interval", type=float, default=15.0)
    parser.add_argument("--sidecar-workers", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2, help="whole-worker rounds")
    args = parser.parse_args()
    if args.only in (None, "signals"):
        signal_path(args.signal_tasks)
    if args.only == "signals":
        return
    print(
        f"load: {args.rate:g} tasks/s for {args.duration:.0f} s per run, "
        f"scraped every {args.scrape_interval:g} s"
    )
    with RedisServer() as redis_server, tempfile.TemporaryDirectory() as tmp:
        broker = redis_server.url()
        app = Celery("bench", broker=broker, set_as_current=False)
        app.conf.task_ignore_result = True
        if args.only in (None, "sidecar"):
            sidecar_cost(broker, app, Path(tmp), args)
        if args.only in (None, "worker"):
            whole_worker(broker, app, Path(tmp), args)


if __name__ == "__main__":
    main()
