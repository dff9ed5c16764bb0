"""--event-queue on a real RabbitMQ: a restarted exporter carries on, and overflow is counted."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.support import taskapp
from tests.support.client import Client
from tests.support.launchers import RabbitMQServer
from tests.support.processes import ExporterProcess, WorkerProcess
from tests.support.scrape import Sample, total, value
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

SUCCEED = taskapp.succeed.name
FAIL = taskapp.fail_value.name
#: What the test reads from each exporter: (family, task name) -> count.
Counts = dict[tuple[str, str], float]
FAMILIES = (
    "celery_task_sent_total",
    "celery_task_received_total",
    "celery_task_succeeded_total",
    "celery_task_failed_total",
)
#: Seconds the workload goes on while no exporter runs.
STOPPED_FOR = 10.0
#: Seconds the counts must stay put once reached (nothing late and extra).
SETTLE = 3.0


def counts(samples: Mapping[Sample, float]) -> Counts:
    """The task counters of one scrape, summed over every label but the task name."""
    return {(f, n): total(samples, f, name=n) for f in FAMILIES for n in (SUCCEED, FAIL)}


def expected(succeeded: int, failed: int) -> Counts:
    """The counters of ``succeeded`` succeed tasks and ``failed`` fail_value tasks."""
    out: Counts = {}
    for name, n in ((SUCCEED, succeeded), (FAIL, failed)):
        out |= {(f, name): float(n) for f in FAMILIES[:2]}
        out[("celery_task_succeeded_total", name)] = float(n if name == SUCCEED else 0)
        out[("celery_task_failed_total", name)] = float(n if name == FAIL else 0)
    return out


def wait_counts(exporter: ExporterProcess, want: Counts, timeout: float = 90.0) -> None:
    """Wait until the exporter's task counters are ``want``, and check they stay so."""
    last: Counts = {}

    def reached() -> bool:
        nonlocal last
        last = counts(exporter.metrics())
        return last == want

    try:
        wait_for(reached, timeout, 0.2, "task counters")
    except TimeoutError:
        raise AssertionError(
            f"got {last}, wanted {want}\nexporter output:\n{exporter.output()[-3000:]}"
        ) from None
    time.sleep(SETTLE)
    assert counts(exporter.metrics()) == want


def send(client: Client, succeeded: int, failed: int, queue: str) -> None:
    """Send ``succeeded`` succeed tasks and ``failed`` fail_value tasks to ``queue``."""
    for i in range(succeeded):
        client.send(SUCCEED, args=(i,), queue=queue)
    for _ in range(failed):
        client.send(FAIL, queue=queue)


def test_restarted_exporter_counts_what_happened_while_it_was_stopped(
    rabbitmq: RabbitMQServer, logdir: Path
) -> None:
    """Tasks run while the exporter is stopped are counted by the restarted one, exactly."""
    url = rabbitmq.url()
    queue = f"evq-{uuid.uuid4().hex[:6]}"
    args = ["--event-queue", f"exporter-{queue}", "--no-queue-collector", "--no-inspect-collector"]
    worker = WorkerProcess(url, "evq", logdir, [queue]).start()
    first = ExporterProcess(url, logdir, args).start()
    client = Client(url)
    second: ExporterProcess | None = None
    try:
        first.wait_ready()
        send(client, 10, 3, queue)
        wait_counts(first, expected(10, 3))
        assert first.stop() == 0
        # 20 succeed and 5 fail_value tasks over 10 s, while no exporter runs.
        started = time.monotonic()
        for i in range(20):
            send(client, 1, 1 if i % 4 == 0 else 0, queue)
            time.sleep(max(0.0, started + (i + 1) * STOPPED_FOR / 20 - time.monotonic()))
        second = ExporterProcess(url, logdir, args).start()
        send(client, 5, 0, queue)
        # The first exporter counted 10 + 3; the second counts the other 25 + 5 of the 35 + 8.
        wait_counts(second, expected(25, 5))
        samples = second.metrics()
        assert value(samples, "celery_exporter_event_queue_dropped_total") == 0
        assert value(samples, "celery_exporter_event_queue_max_length") == 1_000_000
        assert value(samples, "celery_exporter_collector_success", collector="event_queue") == 1
    finally:
        worker.kill_group()
        first.stop()
        if second is not None:
            second.stop()
        client.close()


def test_overflow_drops_the_oldest_and_counts_them(rabbitmq: RabbitMQServer, logdir: Path) -> None:
    """9 events into a queue bounded at 5 while stopped: 4 dropped and counted, the 5 newest kept."""
    url = rabbitmq.url()
    name = f"exporter-ovf-{uuid.uuid4().hex[:6]}"
    args = ["--event-queue", name, "--event-queue-max-length", "5",
            "--no-queue-collector", "--no-inspect-collector", "--no-enable-events"]  # fmt: skip
    first = ExporterProcess(url, logdir, args).start()
    client = Client(url)
    second: ExporterProcess | None = None
    try:
        first.wait_ready()  # the queue is declared
        assert first.stop() == 0
        now = time.time()
        for i in range(9):
            task = SUCCEED if i >= 4 else FAIL  # the 4 oldest are fail_value, the 5 newest succeed
            client.publish_task_sent(str(uuid.uuid4()), task, now + i, queue="ovf")
        second = ExporterProcess(url, logdir, args).start()
        want = {(f, n): 0.0 for f in FAMILIES for n in (SUCCEED, FAIL)} | {
            ("celery_task_sent_total", SUCCEED): 5.0
        }
        wait_counts(second, want)

        def dropped() -> float:
            return value(second.metrics(), "celery_exporter_event_queue_dropped_total")

        wait_for(lambda: dropped() == 4, 30, 0.2, "dropped messages counted")
        time.sleep(SETTLE)
        samples = second.metrics()
        assert value(samples, "celery_exporter_event_queue_dropped_total") == 4
        assert value(samples, "celery_exporter_event_queue_messages") == 0
        assert value(samples, "celery_exporter_event_queue_max_length") == 5
    finally:
        first.stop()
        if second is not None:
            second.stop()
        client.close()
