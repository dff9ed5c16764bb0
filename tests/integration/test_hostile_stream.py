"""Garbage on the real event channels of a real Redis, between a real worker's events; and
SIGTERM in the middle of a burst of events."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
import redis

from celery_exporter.events import redis_pubsub as redis_stream
from tests.support import taskapp
from tests.support.client import Client
from tests.support.expect import wait_heartbeat_after, wait_metrics
from tests.support.launchers import RedisServer
from tests.support.processes import ExporterProcess, WorkerProcess, now
from tests.support.scrape import sample, value
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

SUCCEED = taskapp.succeed.name


def _envelope(body: bytes, **overrides: object) -> bytes:
    envelope: dict[str, object] = {
        "body": base64.b64encode(body).decode(),
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "properties": {"body_encoding": "base64"},
    }
    envelope.update(overrides)
    return json.dumps(envelope).encode()


#: One bad message of each kind, and the reason it is counted under.
GARBAGE: list[tuple[bytes, str]] = [
    (b"not json at all", "envelope"),
    (b'["a", "list"]', "envelope"),
    (json.dumps({"body": 12}).encode(), "envelope"),
    (_envelope(b"{}", **{"content-type": "application/x-python-serialize"}), "content_type"),
    (_envelope(b"{}", **{"content-encoding": "zlib"}), "encoding"),
    (_envelope(b'{"type": "task-sent", "name": "\xff\xfe"}'), "encoding"),
    (json.dumps({"body": "%%%", "properties": {"body_encoding": "base64"}}).encode(), "encoding"),
    (_envelope(b'{"type": "task-succeeded", "uuid": '), "json"),
    (_envelope(b"[" * 50_000), "json"),
    (_envelope(b"3.5"), "schema"),
    (_envelope(b'[{"type": "task-started", "uuid": "x"}, 7]'), "schema"),
    (_envelope(json.dumps({"type": "task-received", "uuid": 5}).encode()), "schema"),
    (_envelope(json.dumps({"type": "task-succeeded", "name": "x" * 100_000}).encode()), "schema"),
]


def test_garbage_between_real_events(
    redis_server: RedisServer, exporter: ExporterProcess, worker: WorkerProcess, client: Client
) -> None:
    """Garbage published on the event channels while a worker runs tasks is counted by reason,
    exactly, and the worker's task events are still counted exactly."""
    before = exporter.metrics()
    channel = redis_stream.target(redis_server.url(), {}, {}).channel
    publisher = redis.Redis(host="127.0.0.1", port=redis_server.port)
    rounds = 3
    tasks = 6
    done = threading.Event()
    published = {"n": 0}

    def spray() -> None:
        # Garbage on the routing keys workers use, interleaved with their events.
        keys = ("task.multi", "task.received", "worker.heartbeat")
        for i in range(rounds):
            for j, (payload, _) in enumerate(GARBAGE):
                publisher.publish(f"{channel}/{keys[(i + j) % 3]}", payload)
                published["n"] += 1
                time.sleep(0.01)
        done.set()

    thread = threading.Thread(target=spray)
    with client.held(worker):
        for i in range(tasks):
            client.send(SUCCEED, args=(i,))
        thread.start()
    thread.join(60)
    assert done.is_set()
    expected_malformed: dict[str, int] = {}
    for _, reason in GARBAGE:
        expected_malformed[reason] = expected_malformed.get(reason, 0) + rounds
    expected = {
        sample(f"celery_task_{kind}_total", name=SUCCEED, queue_name="celery"): tasks
        for kind in ("sent", "received", "started", "succeeded")
    }
    expected |= {
        sample("celery_exporter_events_malformed_total", reason=reason): count
        for reason, count in expected_malformed.items()
    }
    wait_metrics(exporter, expected, before, worker=worker)
    wait_heartbeat_after(exporter, worker.nodename, now())
    after = exporter.metrics()
    for key, want in expected.items():
        assert after.get(key, 0.0) - before.get(key, 0.0) == want, key
    assert published["n"] == rounds * len(GARBAGE)
    publisher.close()


def test_sigterm_during_burst(redis_server: RedisServer, logdir: Path) -> None:
    """SIGTERM while events pour in: exit status 0 within 5 s and no child process left."""
    proc = ExporterProcess(redis_server.url(), logdir, ["--no-enable-events"]).start()
    publisher = redis.Redis(host="127.0.0.1", port=redis_server.port)
    channel = redis_stream.target(redis_server.url(), {}, {}).channel + "/task.multi"
    payload = _envelope(json.dumps([{"type": "worker-heartbeat", "hostname": "b@x"}] * 50).encode())
    stop = threading.Event()

    def burst() -> None:
        while not stop.is_set():
            publisher.publish(channel, payload)

    thread = threading.Thread(target=burst)
    try:
        proc.wait_ready()
        assert proc.process is not None
        thread.start()
        wait_for(
            lambda: value(proc.metrics(), "celery_exporter_events_total", type="worker-heartbeat"),
            60, 0.2, "the burst to arrive",
        )  # fmt: skip
        children = psutil.Process(proc.process.pid).children(recursive=True)
        proc.process.send_signal(signal.SIGTERM)
        try:
            status = proc.process.wait(5)
        except subprocess.TimeoutExpired:
            pytest.fail(f"exporter still running 5 s after SIGTERM:\n{proc.output()[-2000:]}")
        assert status == 0, proc.output()[-2000:]
        assert [c.pid for c in children if c.is_running() and c.status() != "zombie"] == []
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(10)
        publisher.close()
        proc.stop()
