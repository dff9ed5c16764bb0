"""Ingest baseline: the least any consumer of the event stream must do, to weigh the exporter by.

Run as a script, this is the baseline consumer: its own process, subscribed to the event
channels of ``--broker-url`` exactly as the exporter's Redis fast path is (one connection,
``PSUBSCRIBE /{db}.celeryev/*`` and ``SUBSCRIBE /{db}.celeryev``, replies parsed by a hiredis
reader fed from the raw socket in reads of ``--read-size`` bytes). For every message it only
orjson-loads the envelope, base64-decodes the body, orjson-loads the body and counts each event
by its ``type``. It prints ``ready`` once both subscriptions are confirmed; then each line
``report`` on its stdin is answered with one JSON line (counts by type, messages, reads, bytes,
time of the last message, its own CPU seconds); end of stdin stops it.

    python benchmarks/ingest_baseline.py --broker-url redis://127.0.0.1:6379/0

Imported, it gives ingest.py (``--baseline``) the means to start, query and stop that process.
Nothing in it comes from celery_exporter: the baseline stays the same while the exporter changes.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hiredis
import orjson

#: What the exporter's fast path reads from the socket at a time.
READ_SIZE = 1 << 18
#: How long a read waits before looking at stdin again (the exporter's loop waits as long).
POLL_SECONDS = 1.0
#: The baseline's Redis client name, to tell its backlog from the exporter's.
CLIENT_NAME = "ingest-baseline"


def pack(*args: str) -> bytes:
    """Encode one Redis command in RESP."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class Counter:
    """What the baseline has decoded and counted so far."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.messages = 0
        self.malformed = 0
        self.reads = 0
        self.bytes = 0
        self.last_message: float | None = None

    def report(self) -> dict[str, Any]:
        """The figures so far, with this process's CPU seconds (user + system)."""
        times = os.times()
        return {
            "counts": dict(sorted(self.counts.items())),
            "events": sum(self.counts.values()),
            "messages": self.messages,
            "malformed": self.malformed,
            "reads": self.reads,
            "bytes": self.bytes,
            "last_message": self.last_message,
            "cpu_seconds": times.user + times.system,
        }


def count_messages(gets: Callable[[], Any], counter: Counter) -> None:
    """Decode every message ``gets`` returns until False, and count its events by type."""
    loads = orjson.loads
    b64decode = base64.b64decode
    counts = counter.counts
    messages = 0
    while (reply := gets()) is not False:
        kind = reply[0]
        if kind == b"pmessage":
            payload = reply[3]
        elif kind == b"message":
            payload = reply[2]
        else:
            continue
        messages += 1
        try:
            body = loads(b64decode(loads(payload)["body"]))
            if type(body) is list:
                for event in body:
                    etype = event["type"]
                    counts[etype] = counts.get(etype, 0) + 1
            else:
                etype = body["type"]
                counts[etype] = counts.get(etype, 0) + 1
        except Exception:
            counter.malformed += 1
    if messages:
        counter.messages += messages
        counter.last_message = time.time()


def subscribe(url: str) -> tuple[socket.socket, hiredis.Reader, Counter]:
    """Connect and subscribe as the exporter does; count what arrives with the confirmations."""
    parts = urllib.parse.urlsplit(url)
    db = int(parts.path.lstrip("/") or 0)
    channel = f"/{db}.celeryev"
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 5.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(
        pack("CLIENT", "SETNAME", CLIENT_NAME)
        + pack("PSUBSCRIBE", channel + "/*")
        + pack("SUBSCRIBE", channel)
    )
    reader, counter = hiredis.Reader(), Counter()
    confirmed: set[bytes] = set()
    early: list[Any] = []  # messages between the two confirmations
    while len(confirmed) < 2:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError("Redis closed the connection while subscribing")
        reader.feed(data)
        while len(confirmed) < 2 and (reply := reader.gets()) is not False:
            if isinstance(reply, hiredis.ReplyError):
                raise ConnectionRefusedError(f"Redis refused: {reply}")
            if type(reply) is list and reply[0] in (b"psubscribe", b"subscribe"):
                confirmed.add(reply[0])
            elif type(reply) is list:
                early.append(reply)
    count_messages(lambda: early.pop(0) if early else False, counter)
    count_messages(reader.gets, counter)  # what came with the confirmations
    sock.setblocking(False)
    return sock, reader, counter


def consume(url: str, read_size: int) -> None:
    """Subscribe, then count until stdin ends, answering each ``report`` line on stdout."""
    sock, reader, counter = subscribe(url)
    print("ready", flush=True)
    control = sys.stdin.fileno()
    pending = b""
    while True:
        ready = select.select([sock, control], [], [], POLL_SECONDS)[0]
        if sock in ready:
            data = sock.recv(read_size)
            if not data:
                raise ConnectionError("Redis closed the subscription")
            counter.reads += 1
            counter.bytes += len(data)
            reader.feed(data)
            count_messages(reader.gets, counter)
        if control in ready:
            got = os.read(control, 4096)
            if not got:
                return
            pending += got
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line.strip() == b"report":
                    print(json.dumps(counter.report()), flush=True)


# -- for ingest.py: the baseline as a child process ---------------------------------------------


class Baseline:
    """The baseline consumer as a child process pinned to ``cpus``: start, query, stop."""

    def __init__(self, broker_url: str, cpus: set[int] | None, timeout: float = 30.0) -> None:
        script = Path(__file__).resolve()
        self.process = subprocess.Popen(
            [sys.executable, str(script), "--broker-url", broker_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        if cpus is not None:
            os.sched_setaffinity(self.process.pid, cpus)
        self.pid = self.process.pid
        line = self._line(timeout)
        if line != "ready":
            self.stop()
            raise RuntimeError(f"the baseline consumer did not start: {line!r}")

    def _line(self, timeout: float) -> str:
        out = self.process.stdout
        assert out is not None
        if not select.select([out], [], [], timeout)[0]:
            raise TimeoutError(f"the baseline consumer did not answer within {timeout} s")
        return out.readline().decode().strip()

    def report(self, timeout: float = 10.0) -> dict[str, Any]:
        """Its counts and CPU seconds now."""
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(b"report\n")
        stdin.flush()
        got: dict[str, Any] = json.loads(self._line(timeout))
        return got

    def wait_for(self, events: int, stall: float, poll: float = 0.2) -> dict[str, Any]:
        """Report once ``events`` are counted, or once the count stays ``stall`` seconds."""
        last = self.report()
        changed = time.monotonic()
        while last["events"] < events and time.monotonic() - changed < stall:
            time.sleep(poll)
            now = self.report()
            if now["events"] != last["events"]:
                changed = time.monotonic()
            last = now
        return last

    def stop(self) -> None:
        """End its input and wait for it to exit (killed if it does not)."""
        with contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


def pubsub_backlogs(client: Any) -> tuple[int, int]:
    """Bytes Redis holds and has not yet written: for the other subscribers, for the baseline."""
    others = mine = 0
    for c in client.client_list(_type="pubsub"):
        if c.get("name") == CLIENT_NAME:
            mine += int(c.get("omem", 0))
        else:
            others += int(c.get("omem", 0))
    return others, mine


def run_alone(
    broker_url: str,
    cpus: set[int] | None,
    publish: Callable[[], tuple[float, float, int]],
    events: int,
    stall: float,
) -> tuple[dict[str, Any], float, float]:
    """Subscribe the baseline alone, publish the burst, wait until it is counted.

    Returns the baseline's last report, its CPU seconds from just before the first publish to
    that report, and the time of the first publish.
    """
    baseline = Baseline(broker_url, cpus)
    try:
        before = baseline.report()["cpu_seconds"]
        first, _, _ = publish()
        report = baseline.wait_for(events, stall)
        return report, report["cpu_seconds"] - before, first
    finally:
        baseline.stop()


def figures(
    mode: str,
    report: dict[str, Any],
    cpu: float,
    first_publish: float,
    expected_by_type: dict[str, int],
    backlog_peak: int | None,
) -> dict[str, Any]:
    """The baseline's figures for ingest.py's result."""
    counted = int(report["events"])
    last = report["last_message"]
    return {
        "mode": mode,
        "cpu_seconds": round(cpu, 3),
        "us_per_event": round(cpu * 1e6 / counted, 3) if counted else None,
        "events_counted": counted,
        "events_per_s": round(counted / (last - first_publish)) if counted and last else None,
        "lost_by_type": {t: n - report["counts"].get(t, 0) for t, n in expected_by_type.items()},
        "lost": sum(expected_by_type.values()) - counted,
        "malformed": report["malformed"],
        "messages": report["messages"],
        "reads": report["reads"],
        "kib_per_read": round(report["bytes"] / report["reads"] / 1024, 1)
        if report["reads"]
        else None,
        "redis_backlog_peak_mb": None if backlog_peak is None else round(backlog_peak / 2**20, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the baseline consumer until stdin ends."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--broker-url", required=True, help="redis://host:port/db of the events")
    p.add_argument("--read-size", type=int, default=READ_SIZE, help="bytes per socket read")
    args = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops this process
    consume(args.broker_url, args.read_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
