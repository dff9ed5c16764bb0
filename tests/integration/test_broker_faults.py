"""Broker faults: 30 s outages of a real Redis and a real RabbitMQ, a broker missing at start,
a wrong password, and Redis dropping a slow subscriber.

Events come from Celery's own event dispatcher (kombu publishing on the real ``celeryev``
exchange), so the exact counts do not depend on workers reconnecting after an outage.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from celery_exporter.events import redis_pubsub as redis_stream
from tests.support.expect import wait_metrics
from tests.support.launchers import RabbitMQServer, RedisServer, free_port
from tests.support.processes import START_TIMEOUT, ExporterProcess
from tests.support.scrape import sample, value
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

NAME = "faults.task"
OUTAGE_SECONDS = 30.0
#: Enough for the capped backoff (30 s) to come round after an outage, on a busy machine.
RECONNECT_TIMEOUT = 120.0


def publish_tasks(url: str, prefix: str, count: int) -> None:
    """Publish received, started and succeeded events of ``count`` tasks with Celery's dispatcher."""
    app = Celery("faults-publisher", broker=url, set_as_current=False)
    try:
        with app.connection_for_write() as conn:
            dispatcher = app.events.Dispatcher(conn, hostname="faults@itest", enabled=True)
            for i in range(count):
                uuid = f"{prefix}-{i}"
                dispatcher.send("task-received", uuid=uuid, name=NAME, args="()", kwargs="{}",
                                retries=0, eta=None, root_id=uuid, parent_id=None)  # fmt: skip
                dispatcher.send("task-started", uuid=uuid)
                dispatcher.send("task-succeeded", uuid=uuid, result="1", runtime=0.01)
            dispatcher.close()
    finally:
        app.close()


def task_counts(total: int) -> dict[Any, float]:
    """The task counters after ``total`` tasks of :func:`publish_tasks`."""
    return {
        sample(f"celery_task_{kind}_total", name=NAME, queue_name="celery"): total
        for kind in ("received", "started", "succeeded")
    }


def log_lines(proc: ExporterProcess, event: str) -> list[dict[str, Any]]:
    """The exporter's JSON log lines whose event is ``event``."""
    lines = [json.loads(line) for line in proc.output().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]


class Rig:
    """One broker with an exporter following it."""

    def __init__(self, kind: str, logdir: Path) -> None:
        self.kind = kind
        self.broker: RedisServer | RabbitMQServer = (
            RedisServer() if kind == "redis" else RabbitMQServer()
        )
        self.broker.start()
        self.url = self.broker.url()
        self.exporter = ExporterProcess(self.url, logdir, ["--no-enable-events"]).start()
        self.exporter.wait_ready()

    def close(self) -> None:
        self.exporter.stop()
        self.broker.__exit__(None, None, None)


@pytest.fixture(scope="module")
def rigs(logdir: Path) -> Iterator[list[Rig]]:
    """A Redis and a RabbitMQ, each with its own exporter."""
    made: list[Rig] = []
    try:
        made.append(Rig("redis", logdir))
        made.append(Rig("rabbitmq", logdir))
        yield made
    finally:
        for rig in made:
            rig.close()


def test_thirty_second_outage_redis_and_rabbitmq(rigs: list[Rig]) -> None:
    """Both brokers down 30 s (at once, to save time): broker_up 0, /readyz 503 with the reason,
    the process stays up and backs off (capped), then reconnects; counters never reset and
    events after the restart are counted exactly."""
    for rig in rigs:
        publish_tasks(rig.url, f"{rig.kind}-before", 4)
        wait_metrics(rig.exporter, task_counts(4))
    before = {rig.kind: rig.exporter.metrics() for rig in rigs}

    stopped = time.monotonic()
    for rig in rigs:
        rig.broker.stop()
    for rig in rigs:
        wait_for(
            lambda rig=rig: value(rig.exporter.metrics(), "celery_exporter_broker_up") == 0,
            START_TIMEOUT, 0.1, f"{rig.kind}: broker_up to read 0",
        )  # fmt: skip
        status, body = rig.exporter.get("/readyz")
        assert status == 503
        assert body.decode().startswith("not ready: broker connection failed: "), body
        down = rig.exporter.metrics()
        for key, want in task_counts(4).items():
            assert down[key] == want, (rig.kind, key)
        assert value(down, "celery_exporter_reconnects_total") == 1
    time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped)))

    for rig in rigs:
        assert rig.exporter.process is not None and rig.exporter.process.poll() is None
        assert rig.exporter.get("/healthz") == (200, b"ok\n")
        rig.broker.start()
    for rig in rigs:
        rig.exporter.wait_ready(RECONNECT_TIMEOUT)
        back = rig.exporter.metrics()
        assert value(back, "celery_exporter_broker_up") == 1
        assert value(back, "celery_exporter_reconnects_total") == 1
        for key, want in task_counts(4).items():
            assert back[key] == want, (rig.kind, key)
        assert value(back, "celery_exporter_events_total", type="task-succeeded") == value(
            before[rig.kind], "celery_exporter_events_total", type="task-succeeded"
        )
        # Backoff while down: increasing delays, never above the cap.
        delays = [line["retry_in"] for line in log_lines(rig.exporter, "broker_unavailable")]
        assert len(delays) >= 3, rig.kind
        assert delays == sorted(delays), (rig.kind, delays)
        assert max(delays) <= 30.0

    for rig in rigs:
        publish_tasks(rig.url, f"{rig.kind}-after", 3)
    for rig in rigs:
        final = wait_metrics(rig.exporter, task_counts(7))
        assert value(final, "celery_exporter_tracked_tasks") == 0
        assert value(final, "celery_exporter_reconnects_total") == 1


def test_broker_missing_at_start(logdir: Path) -> None:
    """Started before its broker: serves /metrics with broker_up 0, connects once Redis appears."""
    server = RedisServer(port=free_port())
    proc = ExporterProcess(server.url(), logdir, ["--no-enable-events"]).start()
    try:
        wait_for(lambda: len(log_lines(proc, "broker_unavailable")) >= 2, START_TIMEOUT, 0.2)
        metrics = proc.metrics()
        assert value(metrics, "celery_exporter_broker_up") == 0
        assert value(metrics, "celery_exporter_reconnects_total") == 0
        assert proc.get("/readyz")[0] == 503
        with server:
            proc.wait_ready(RECONNECT_TIMEOUT)
            publish_tasks(server.url(), "late", 3)
            final = wait_metrics(proc, task_counts(3))
            assert value(final, "celery_exporter_broker_up") == 1
            assert value(final, "celery_exporter_reconnects_total") == 0
    finally:
        proc.stop()


def test_wrong_password_clear_error_and_backoff(logdir: Path) -> None:
    """A refused password is logged as broker_auth_failed with a hint, retried with growing
    delays, and the process stays up, not ready, never printing the password."""
    with RedisServer() as server:
        # Set after start: RedisServer's readiness check is an unauthenticated PING.
        admin = redis.Redis(host="127.0.0.1", port=server.port)
        admin.config_set("requirepass", "right-pass")
        admin.close()
        url = f"redis://:wrong-pass@127.0.0.1:{server.port}/0"
        proc = ExporterProcess(url, logdir, ["--no-enable-events"]).start()
        try:
            wait_for(lambda: len(log_lines(proc, "broker_auth_failed")) >= 3, START_TIMEOUT, 0.2)
            lines = log_lines(proc, "broker_auth_failed")
            assert lines[0]["level"] == "error"
            assert (
                lines[0]["hint"] == "the broker refused the user name or password in --broker-url"
            )
            assert "WRONGPASS" in lines[0]["error"]
            delays = [line["retry_in"] for line in lines]
            assert delays == sorted(delays)
            assert delays[2] > delays[0]
            assert log_lines(proc, "broker_unavailable") == []
            status, body = proc.get("/readyz")
            assert status == 503
            assert "WRONGPASS" in body.decode()
            assert proc.process is not None and proc.process.poll() is None
            assert "wrong-pass" not in proc.output()
        finally:
            proc.stop()


def test_slow_subscriber_dropped_is_detected(logdir: Path) -> None:
    """Redis dropping the exporter for a full pub/sub buffer counts one gap and one reconnect;
    events after it are counted exactly."""
    args = ["--client-output-buffer-limit", "pubsub 256kb 128kb 0"]
    with RedisServer(extra_args=args) as server:
        proc = ExporterProcess(server.url(), logdir, ["--no-enable-events"]).start()
        try:
            proc.wait_ready()
            assert proc.process is not None
            channel = redis_stream.target(server.url(), {}, {}).channel + "/flood"
            pad = json.dumps({"type": "x-flood", "pad": "x" * 16_000}).encode()
            envelope = json.dumps(
                {"body": pad.decode(), "content-type": "application/json",
                 "content-encoding": "utf-8", "properties": {}}
            ).encode()  # fmt: skip
            client = redis.Redis(host="127.0.0.1", port=server.port)
            os.kill(proc.process.pid, signal.SIGSTOP)
            try:
                # ~64 MB: more than the kernel buffers hold, so Redis' buffer passes its limit.
                for _ in range(4000):
                    client.publish(channel, envelope)
            finally:
                os.kill(proc.process.pid, signal.SIGCONT)
            wait_for(
                lambda: value(proc.metrics(), "celery_exporter_event_stream_gaps_total") == 1,
                START_TIMEOUT, 0.2, "the gap to be counted",
            )  # fmt: skip
            proc.wait_ready()
            after = proc.metrics()
            assert value(after, "celery_exporter_reconnects_total") == 1
            assert len(log_lines(proc, "event_stream_gap")) == 1
            publish_tasks(server.url(), "after-gap", 5)
            final = wait_metrics(proc, task_counts(5))
            assert value(final, "celery_exporter_event_stream_gaps_total") == 1
            client.close()
        finally:
            proc.stop()
