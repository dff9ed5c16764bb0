"""Whether slow and idle HTTP clients can pin the exporter or lock Prometheus out.

Starts a private ``redis-server`` and the real exporter as a subprocess
(``python -m celery_exporter --broker-url redis://127.0.0.1:P/0 --host 127.0.0.1 --port Q``),
waits for ``/readyz``, then, all on loopback:

1. opens ``--clients`` (1 000) connections that each send ``GET /metrics HTTP/1.1`` and one
   header, then nothing, and ``--tricklers`` (50) that send a request line and then one header
   byte a second, never finishing;
2. times ``--scrapes`` (20) ``GET /metrics`` on fresh connections, spread over ``--hold``
   seconds (5), while they stay open; the exporter's thread count (psutil) is sampled every
   20 ms throughout;
3. with ``--churn`` (the default), opens as many again and, for another ``--hold`` seconds,
   opens a new slow connection at once for every one the exporter closes (at most
   ``--max-opens``, 20 000, in all), while 20 more scrapes are timed;
4. stops reopening and waits until the exporter's threads are back within 2 of the baseline
   (at most ``--wait`` seconds, 30), and reports when.

Prints the baseline and peak thread counts, the scrape median and max (and any that failed),
how many slow connections the exporter closed, and how long it took to let go of the rest.
Stops everything it started, also on Ctrl-C. Not a test::

    .venv/bin/python benchmarks/slow_clients.py
"""

from __future__ import annotations

import argparse
import errno
import selectors
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.support

from tests.support.launchers import RedisServer, free_port, terminate
from tests.support.waiting import wait_for

PARTIAL = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"
TRICKLE = b"GET /metrics HTTP/1.1\r\nX-Slow: "


class Attacker:
    """Slow connections to one port: opened, reopened when closed, trickled, counted."""

    def __init__(self, port: int, max_opens: int) -> None:
        self.port = port
        self.max_opens = max_opens
        self.opens = 0
        self.closed_by_server = 0
        self.selector = selectors.DefaultSelector()
        self.tricklers: set[socket.socket] = set()
        self.reopen = True

    def open(self, trickle: bool) -> None:
        """Open one slow connection and send its partial request."""
        if self.opens >= self.max_opens:
            return
        self.opens += 1
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        try:
            sock.sendall(TRICKLE if trickle else PARTIAL)
        except OSError:
            sock.close()
            self.closed_by_server += 1
            return
        sock.setblocking(False)
        self.selector.register(sock, selectors.EVENT_READ, trickle)
        if trickle:
            self.tricklers.add(sock)

    def step(self, timeout: float) -> None:
        """Notice connections the exporter closed, and open them again while reopening."""
        for key, _ in self.selector.select(timeout):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                if sock.recv(4096):
                    continue
            except BlockingIOError:
                continue
            except OSError:
                pass
            self._drop(sock)
            self.closed_by_server += 1
            if self.reopen:
                self.open(bool(key.data))

    def trickle(self) -> None:
        """Send one more header byte on each trickling connection."""
        for sock in list(self.tricklers):
            try:
                sock.send(b"a")
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    self._drop(sock)
                    self.closed_by_server += 1

    def _drop(self, sock: socket.socket) -> None:
        if sock in self.tricklers:
            self.tricklers.discard(sock)
        self.selector.unregister(sock)
        sock.close()

    def held(self) -> int:
        """Slow connections still open on this side."""
        return len(self.selector.get_map())

    def close(self) -> None:
        """Close every connection still open."""
        for key in list(self.selector.get_map().values()):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            self._drop(sock)
        self.selector.close()


class ThreadSampler(threading.Thread):
    """Samples a process's thread count every 20 ms, keeping the peak."""

    def __init__(self, process: psutil.Process) -> None:
        super().__init__(daemon=True)
        self.process = process
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            try:
                self.peak = max(self.peak, self.process.num_threads())
            except psutil.Error:
                return


def scrape(url: str) -> float | None:
    """Seconds one GET takes, or None when it fails."""
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            response.read()
    except OSError:
        return None
    return time.perf_counter() - started


def measure(attacker: Attacker, process: psutil.Process, url: str, args: argparse.Namespace) -> str:
    """Time ``--scrapes`` scrapes spread over ``--hold`` seconds, trickling meanwhile."""
    times: list[float] = []
    failed = 0
    threads: list[int] = []
    hold_end = time.monotonic() + args.hold
    next_scrape = time.monotonic()
    next_trickle = time.monotonic() + 1
    while len(times) + failed < args.scrapes or time.monotonic() < hold_end:
        now = time.monotonic()
        if now >= next_trickle:
            attacker.trickle()
            next_trickle += 1
        if now >= next_scrape and len(times) + failed < args.scrapes:
            took = scrape(url)
            threads.append(process.num_threads())
            if took is None:
                failed += 1
            else:
                times.append(took)
            next_scrape += args.hold / args.scrapes
        attacker.step(0.01)
    if not times:
        return f"all {failed} scrapes failed; threads at scrapes max {max(threads)}"
    return (
        f"{len(times)} ok, {failed} failed, median {statistics.median(times) * 1000:.1f} ms, "
        f"max {max(times) * 1000:.1f} ms; threads at scrapes max {max(threads)}"
    )


def run(args: argparse.Namespace) -> None:
    with RedisServer() as redis:
        port = free_port()
        cmd = [
            sys.executable, "-m", "celery_exporter", "--broker-url", redis.url(),
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        ]  # fmt: skip
        exporter = subprocess.Popen(cmd)
        attacker = None
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(lambda: scrape(base + "/readyz") is not None, 30, 0.2, what="/readyz")
            process = psutil.Process(exporter.pid)
            scrape(base + "/metrics")
            time.sleep(1)
            baseline = process.num_threads()
            sampler = ThreadSampler(process)
            sampler.start()
            attacker = Attacker(port, args.max_opens)
            attacker.reopen = False
            started = time.monotonic()
            for i in range(args.clients + args.tricklers):
                attacker.open(trickle=i >= args.clients)
            print(f"exporter threads at baseline: {baseline}")
            print(f"opened {args.clients} + {args.tricklers} slow connections "
                  f"in {time.monotonic() - started:.2f} s")  # fmt: skip
            print("/metrics with them open:", measure(attacker, process, base + "/metrics", args))
            print(f"  {attacker.closed_by_server} closed by the exporter so far, "
                  f"{attacker.held()} still open")  # fmt: skip
            if args.churn:
                attacker.reopen = True
                for _ in range(args.clients + args.tricklers - attacker.held()):
                    attacker.open(trickle=False)
                print("/metrics while every closed one reconnects at once:",
                      measure(attacker, process, base + "/metrics", args))  # fmt: skip
                print(f"  {attacker.opens} opened in all, {attacker.closed_by_server} closed "
                      "by the exporter")  # fmt: skip
                attacker.reopen = False
            print(f"exporter threads peak: {sampler.peak}")
            released = time.monotonic()
            settled: float | None = None
            next_trickle = released + 1
            while time.monotonic() - released < args.wait:
                attacker.step(0.05)
                if time.monotonic() >= next_trickle:
                    attacker.trickle()
                    next_trickle += 1
                if process.num_threads() <= baseline + 2:
                    settled = time.monotonic() - released
                    break
            sampler.done.set()
            when = f"after {settled:.1f} s" if settled is not None else f"not within {args.wait} s"
            print(f"threads back within 2 of baseline {when} ({process.num_threads()} now)")
        finally:
            if attacker is not None:
                attacker.close()
            terminate(exporter)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--tricklers", type=int, default=50)
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--hold", type=float, default=5.0)
    parser.add_argument("--max-opens", type=int, default=20000)
    parser.add_argument("--wait", type=float, default=30.0)
    parser.add_argument("--churn", action=argparse.BooleanOptionalAction, default=True)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
