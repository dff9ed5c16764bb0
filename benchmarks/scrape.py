"""Scrape latency with 50 queues and 50 workers while the broker is unreachable.

Runs the exporter in this process (the real :class:`~celery_exporter.daemon.Daemon`: event
consumer, queue and inspect collectors, HTTP server) against a broker that never answers, feeds
its state 50 workers' heartbeats and task events over 50 queues, and scrapes ``/metrics`` over
HTTP from a separate client process (as Prometheus does) while the collectors keep failing in
the background. Prints the median, 99th percentile and maximum scrape time.

``--broker blackhole`` (default) listens on a loopback port and never accepts, so connections
hang until their timeouts; ``--broker refused`` uses a port nobody listens on. Not a test::

    .venv/bin/python benchmarks/scrape.py --scrapes 1000
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.support

from celery_exporter import config, log
from celery_exporter.daemon import Daemon
from tests.support.launchers import free_port
from tests.support.waiting import wait_for

#: The scraping client, run in a process of its own: prints the body size, then each time.
CLIENT = """
import sys, time, urllib.request
url, n = sys.argv[1], int(sys.argv[2])
times, size = [], 0
for _ in range(n):
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as response:
        size = len(response.read())
    times.append(time.perf_counter() - started)
print(size, *times)
"""


def events(workers: int, queues: int, now: float) -> list[dict[str, object]]:
    """Heartbeats from ``workers`` workers and sent/received/started tasks over ``queues``."""
    out: list[dict[str, object]] = []
    for w in range(workers):
        out.append({
            "type": "worker-online", "hostname": f"celery@w{w}", "timestamp": now, "freq": 2.0,
            "sw_ident": "py-celery", "sw_ver": "5.7.0", "sw_sys": "Linux",
        })  # fmt: skip
        out.append({
            "type": "worker-heartbeat", "hostname": f"celery@w{w}", "timestamp": now, "freq": 2.0,
            "active": 2, "processed": 100, "loadavg": [0.5, 0.4, 0.3],
        })  # fmt: skip
    for i in range(queues * 10):
        task = str(uuid.uuid4())
        queue, host = f"q{i % queues}", f"celery@w{i % workers}"
        name = f"tasks.t{i % queues}"  # one task name per queue
        out.append({"type": "task-sent", "uuid": task, "name": name, "queue": queue,
                    "routing_key": queue, "hostname": "producer@api", "timestamp": now})  # fmt: skip
        out.append({"type": "task-received", "uuid": task, "name": name, "hostname": host,
                    "timestamp": now})  # fmt: skip
        if i % 3:
            out.append({"type": "task-started", "uuid": task, "hostname": host, "timestamp": now})
    return out


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scrapes", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--queues", type=int, default=50)
    parser.add_argument("--broker", choices=("blackhole", "refused"), default="blackhole")
    args = parser.parse_args()

    hole = None
    broker_port = free_port()
    if args.broker == "blackhole":
        hole = socket.socket()
        hole.bind(("127.0.0.1", broker_port))
        hole.listen(1024)  # never accepted: connects complete, replies never come
    names = ",".join(f"q{i}" for i in range(args.queues))
    port = free_port()
    cfg = config.load(
        [
            "--broker-url", f"redis://127.0.0.1:{broker_port}/0", "--host", "127.0.0.1",
            "--port", str(port), "--queues", names, "--queue-interval", "1s",
            "--inspect-interval", "1s", "--log-level", "critical", "--no-enable-events",
        ],
        {},
    )  # fmt: skip
    log.configure("critical", "console")
    daemon = Daemon(cfg)
    daemon.state.handle_batch(events(args.workers, args.queues, time.time()))
    daemon.server.start()
    daemon.consumer.start(daemon.stop_event)
    for poller in daemon.pollers:
        poller.start(daemon.stop_event)
    url = f"http://127.0.0.1:{daemon.server.port}/metrics"

    def collectors_failing() -> bool:
        body = urllib.request.urlopen(url, timeout=10).read().decode()
        return (
            'collector_success{collector="queues"} 0.0' in body
            and 'collector_success{collector="inspect"} 0.0' in body
        )

    wait_for(collectors_failing, 60, 0.2, "the collectors to report failure")
    # Scrape from another process, as Prometheus does: a client in this one would share the
    # exporter's interpreter lock and add its own work to every measurement.
    client = subprocess.run(
        [sys.executable, "-c", CLIENT, url, str(args.scrapes)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    size, *times = (float(x) for x in client.stdout.split())
    size = int(size)
    shares = render_shares(daemon)
    daemon.stop_event.set()
    daemon.server.stop()
    if hole is not None:
        hole.close()
    times.sort()
    ms = [t * 1000 for t in times]
    print(
        f"broker={args.broker} workers={args.workers} queues={args.queues} "
        f"scrapes={args.scrapes} body={size} bytes"
    )
    print(
        f"scrape ms: median {statistics.median(ms):.2f}  p99 {ms[int(len(ms) * 0.99) - 1]:.2f}  "
        f"max {ms[-1]:.2f}"
    )

    print("render ms (median, in-process, per collector): " + ", ".join(shares))


def render_shares(daemon: Daemon, rounds: int = 100) -> list[str]:
    """Median time to render each registered collector alone, slowest first."""
    from prometheus_client import CollectorRegistry, generate_latest

    class One:
        def __init__(self, collector: Any) -> None:
            self.collector = collector

        def collect(self) -> Any:
            return self.collector.collect()

    found = []
    for collector in set(daemon.registry._collector_to_names):
        registry = CollectorRegistry()
        registry.register(One(collector))
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            generate_latest(registry)
            times.append(time.perf_counter() - started)
        found.append((statistics.median(times) * 1000, type(collector).__name__))
    return [f"{name} {ms:.3f}" for ms, name in sorted(found, reverse=True)]


if __name__ == "__main__":
    main()
