"""Run the exporter against a live Celery worker and print what it reports.

Starts a private redis-server, a prefork worker running ``tasks.py``, a load generator,
``python -m celery_exporter`` and the resource sidecar (``python -m celery_exporter sidecar``),
then prints a summary read from both ``/metrics`` every few seconds.
Ctrl-C, SIGTERM, SIGHUP or ``--duration`` stop all of them. Logs go to ``.demo/`` in the repository.
Usage: ``make demo`` or ``.venv/bin/python demo/run.py [--duration S] [--rate N] [--port P]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import IO, Any

import tasks
from redis import Redis, RedisError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.support

from tests.support.launchers import RedisServer, free_port
from tests.support.scrape import Sample, scrape, total, value
from tests.support.waiting import wait_for

HOST = "127.0.0.1"
DEMO_DIR = Path(__file__).resolve().parent
LOG_DIR = DEMO_DIR.parent / ".demo"

#: What the load generator sends: (weight, task, argument maker).
MIX: list[tuple[int, Any, Callable[[int], object]]] = [
    (40, tasks.resize_image, lambda n: 100 + n % 900),
    (20, tasks.charge_card, lambda n: n % 500),
    (20, tasks.fetch_feed, lambda n: f"https://feeds.example/{n % 7}"),
    (10, tasks.sync_inventory, lambda n: f"sku-{n % 50}"),
    (10, tasks.build_report, lambda n: n % 30),
]


def say(text: str) -> None:
    """Print a line; never fail, so that a closed terminal cannot cut the clean-up short."""
    with contextlib.suppress(OSError):
        print(text, flush=True)


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def start(args: list[str], log: IO[bytes], **kw: Any) -> subprocess.Popen[bytes]:
    """Start a child in its own session and process group, so Ctrl-C reaches only us."""
    return subprocess.Popen(
        args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, **kw,
    )  # fmt: skip


def stop_group(proc: subprocess.Popen[bytes] | None, name: str, grace: float) -> None:
    """SIGTERM the leader, wait ``grace`` seconds, then SIGKILL whatever is left of its group."""
    if proc is None:
        return
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        # Wait without reaping, so the group id cannot be reused before the sweep below.
        while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            if time.monotonic() > deadline:
                say(f"demo: {name} did not stop within {grace:g}s; killing it")
                break
            time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # pool children, if any outlived the leader
    proc.wait()


def generate_load(rate: float, stop: threading.Event) -> None:
    """Send about ``rate`` tasks a second from the weighted MIX until ``stop`` is set."""
    weights = [w for w, _, _ in MIX]
    n = 0
    while not stop.wait(random.expovariate(rate)):
        _, task, make_arg = random.choices(MIX, weights)[0]
        n += 1
        try:
            task.apply_async((make_arg(n),), retry=False)
        except Exception as exc:  # the broker going away while we stop, say
            if not stop.is_set():
                say(f"demo: load generator could not send a task: {exc!r}")


def quantile(samples: Mapping[Sample, float], name: str, q: float, **labels: str) -> float | None:
    """``histogram_quantile`` over all series of ``name`` whose labels include ``labels``."""
    les = {dict(lbls)["le"] for n, lbls in samples if n == f"{name}_bucket"}
    counts = sorted((float(le), total(samples, f"{name}_bucket", le=le, **labels)) for le in les)
    if not counts or counts[-1][1] == 0:
        return None
    rank, lower, below = q * counts[-1][1], 0.0, 0.0
    for bound, count in counts:
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = bound, count
    return lower


def by_label(samples: Mapping[Sample, float], name: str, label: str) -> dict[str, float]:
    """Sum the samples of ``name`` by the value of one label."""
    sums: dict[str, float] = {}
    for (n, lbls), v in samples.items():
        if n == name:
            key = dict(lbls).get(label, "")
            sums[key] = sums.get(key, 0.0) + v
    return sums


def seconds(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}s" if x >= 0.1 else f"{x * 1000:.0f}ms"


def summary(samples: Mapping[Sample, float], elapsed: float, events_per_s: float) -> str:
    def tasks_(kind: str) -> int:
        return int(total(samples, f"celery_task_{kind}_total"))

    failed = by_label(samples, "celery_task_failed_total", "exception")
    timeouts = by_label(samples, "celery_task_timeouts_total", "kind")
    runtime = quantile(samples, "celery_task_runtime_seconds", 0.5, state="succeeded")
    queue_wait = quantile(samples, "celery_task_queue_wait_seconds", 0.5)
    return (
        f"[{elapsed:4.0f}s] workers up {total(samples, 'celery_worker_up'):.0f}"
        f" | sent {tasks_('sent')}, succeeded {tasks_('succeeded')}, failed {tasks_('failed')},"
        f" retried {tasks_('retried')} | active {total(samples, 'celery_tasks_active'):.0f}\n"
        f"        events {events_per_s:.1f}/s"
        f" | runtime p50 {seconds(runtime)} | queue wait p50 {seconds(queue_wait)}"
        f" | time limits: soft {timeouts.get('soft', 0):.0f}, hard {timeouts.get('hard', 0):.0f}\n"
        f"        failed by exception: "
        + (", ".join(f"{k} {v:.0f}" for k, v in sorted(failed.items()) if v) or "none yet")
    )


def resources(samples: Mapping[Sample, float]) -> str:
    """The sidecar's view of the demo worker's processes, in one line."""
    pool = {"role": "pool"}
    largest = total(samples, "celery_worker_pool_process_max_resident_memory_bytes")
    return (
        f"        worker processes (sidecar): pool {total(samples, 'celery_worker_pool_processes'):.0f}"
        f" | largest pool RSS {largest / 2**20:.0f} MiB"
        f" | pool CPU {total(samples, 'celery_worker_process_cpu_seconds_total', **pool):.1f}s"
        f" | pool restarts {total(samples, 'celery_worker_pool_process_restarts_total'):.0f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--rate", type=float, default=3.0, help="tasks sent a second (3)")
    parser.add_argument("--port", type=int, default=9808, help="exporter port (9808)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between summaries")
    opts = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not stop.is_set():
            say(f"\ndemo: {signal.Signals(signum).name} received, stopping")
        stop.set()

    stop_signals = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    for signum in stop_signals:
        signal.signal(signum, on_signal)
    LOG_DIR.mkdir(exist_ok=True)
    port = opts.port
    if not port_free(port):
        port = free_port(HOST)
        say(f"demo: port {opts.port} is taken on {HOST}; the exporter uses port {port} instead")

    # redis-server shares our process group. Block the stop signals in it, so that Ctrl-C or a
    # signal to the whole group reaches only us; we stop it last, with SHUTDOWN NOSAVE.
    try:
        broker = RedisServer()
    except RuntimeError as exc:  # no redis-server on PATH
        say(f"demo: error: {exc}")
        return 1
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        broker.start()
    except TimeoutError as exc:
        say(f"demo: error: {exc}")
        broker.__exit__(None, None, None)
        return 1
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    logs = contextlib.ExitStack()
    worker: subprocess.Popen[bytes] | None = None
    exporter: subprocess.Popen[bytes] | None = None
    sidecar: subprocess.Popen[bytes] | None = None
    load: threading.Thread | None = None
    load_stop = threading.Event()
    metrics = f"http://{HOST}:{port}/metrics"
    status = 0
    began = time.monotonic()
    try:
        url = broker.url()
        os.environ["CELERY_BROKER_URL"] = url
        tasks.app.conf.broker_url = url
        say(f"demo: private redis-server on {HOST}:{broker.port} (nothing kept on disk)")

        exporter_log = logs.enter_context((LOG_DIR / "exporter.log").open("wb"))
        exporter = start(
            [sys.executable, "-m", "celery_exporter", "--broker-url", url, "--host", HOST,
             "--port", str(port), "--log-format", "json"],
            exporter_log,
        )  # fmt: skip
        wait_for(
            lambda: stop.is_set() or exporter.poll() is not None or _up(metrics), 30,
            what="the exporter's /metrics",
        )  # fmt: skip
        if exporter.poll() is not None:
            raise RuntimeError(f"the exporter exited; see {exporter_log.name}")
        if stop.is_set():
            return 0
        say(f"demo: exporter serving {metrics}  (log: .demo/exporter.log)")
        view = metrics.removesuffix("/metrics")
        say(f"demo: task view at {view}/tasks (JSON: {view}/api/v1/tasks, /api/v1/failures)")

        worker_log = logs.enter_context((LOG_DIR / "worker.log").open("wb"))
        worker = start(
            [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-P", "prefork", "-c", "2",
             "-E", "-n", "demo@%h", "--loglevel", "INFO", "--without-mingle", "--without-gossip"],
            worker_log, cwd=DEMO_DIR,
        )  # fmt: skip
        wait_for(
            lambda: stop.is_set() or worker.poll() is not None or _workers_up(metrics), 60,
            what="the worker's first heartbeat",
        )  # fmt: skip
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited; see {worker_log.name}")
        if stop.is_set():
            return 0
        host = socket.gethostname()
        say(f"demo: worker demo@{host} up (prefork, 2 processes, -E)  (log: .demo/worker.log)")

        side_port = free_port(HOST)
        side_metrics = f"http://{HOST}:{side_port}/metrics"
        sidecar_log = logs.enter_context((LOG_DIR / "sidecar.log").open("wb"))
        sidecar = start(
            [sys.executable, "-m", "celery_exporter", "sidecar", "--host", HOST,
             "--port", str(side_port), "--match", "-n demo@", "--log-format", "json"],
            sidecar_log,
        )  # fmt: skip
        wait_for(
            lambda: stop.is_set() or sidecar.poll() is not None or _found(side_metrics), 30,
            what="the sidecar to find the worker",
        )  # fmt: skip
        if sidecar.poll() is not None:
            raise RuntimeError(f"the sidecar exited; see {sidecar_log.name}")
        say(f"demo: resource sidecar serving {side_metrics}  (log: .demo/sidecar.log)")

        load = threading.Thread(target=generate_load, args=(opts.rate, load_stop), daemon=True)
        load.start()
        until = f"for {opts.duration:g}s" if opts.duration else "until Ctrl-C"
        say(f"demo: sending ~{opts.rate:g} tasks/s; summaries every {opts.interval:g}s {until}")

        began = last_time = time.monotonic()
        last_events = total(scrape(metrics), "celery_exporter_events_total")
        deadline = began + opts.duration if opts.duration else float("inf")
        while not stop.wait(max(0.0, min(opts.interval, deadline - time.monotonic()))):
            for proc, name in ((worker, "worker"), (exporter, "exporter"), (sidecar, "sidecar")):
                if proc.poll() is not None:
                    raise RuntimeError(f"the {name} exited unexpectedly; see .demo/{name}.log")
            samples, now = scrape(metrics), time.monotonic()
            events = total(samples, "celery_exporter_events_total")
            say(summary(samples, now - began, (events - last_events) / (now - last_time)))
            say(resources(scrape(side_metrics)))
            say(failures(view))
            last_events, last_time = events, now
            if now >= deadline:
                break
    except (RuntimeError, TimeoutError, OSError) as exc:
        say(f"demo: error: {exc}")
        status = 1
    finally:
        load_stop.set()
        if load is not None:
            load.join(5)
        stop_group(worker, "worker", 15)
        if exporter is not None and exporter.poll() is None and status == 0:
            try:
                time.sleep(1.5)  # let the worker's last events arrive
                samples = scrape(metrics)
                say("demo: final " + summary(samples, time.monotonic() - began, 0.0))
            except (OSError, RuntimeError) as exc:
                say(f"demo: could not read the final summary: {exc}")
        stop_group(exporter, "exporter", 10)
        stop_group(sidecar, "sidecar", 10)
        with contextlib.suppress(RedisError):
            Redis(host=HOST, port=broker.port, socket_timeout=5).shutdown(nosave=True)
        broker.__exit__(None, None, None)  # waits for it and removes its directory
        logs.close()
        say("demo: stopped worker, exporter, sidecar and redis-server")
    return status


def failures(view: str) -> str:
    """The last hour's failures by task and exception, from the task view's JSON API."""
    with urllib.request.urlopen(f"{view}/api/v1/failures?since=3600", timeout=5) as answer:
        rows = json.load(answer)["failures"]
    text = ", ".join(f"{r['name']} {r['exception']} x{r['count']}" for r in rows[:3])
    return f"        failed in the last hour (task view): {text or 'none'}"


def _up(metrics: str) -> bool:
    try:
        return value(scrape(metrics, timeout=1), "celery_exporter_broker_up") == 1
    except (OSError, RuntimeError):
        return False


def _found(metrics: str) -> bool:
    try:
        return value(scrape(metrics, timeout=1), "celery_exporter_workers_found") >= 1
    except (OSError, RuntimeError):
        return False


def _workers_up(metrics: str) -> bool:
    try:
        return total(scrape(metrics, timeout=1), "celery_worker_up") >= 1
    except (OSError, RuntimeError):
        return False


if __name__ == "__main__":
    sys.exit(main())
