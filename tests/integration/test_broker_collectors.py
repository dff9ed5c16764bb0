"""The queue and inspect collectors against a real Redis and real prefork workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from tests.support import taskapp
from tests.support.brokers import FAST, wait_samples
from tests.support.client import Client
from tests.support.launchers import RedisServer
from tests.support.processes import ExporterProcess, WorkerProcess
from tests.support.scrape import sample
from tests.support.stack import connected_client, running_exporter

pytestmark = pytest.mark.integration

HELD, AUTO = "held_q", "auto_q"


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    """A Redis of this module's own, so queue contents are exactly what the tests put there."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def queue_exporter(redis: RedisServer, logdir: Path) -> Iterator[ExporterProcess]:
    """The exporter with fast collectors and two configured queues."""
    args = [*FAST, "--queues", "cfg_q,prio_q"]
    with running_exporter(redis.url(), logdir, args, ready=False) as proc:
        yield proc


@pytest.fixture(scope="module")
def sender(redis: RedisServer) -> Iterator[Client]:
    """Sends tasks, with task-sent events, to the module's Redis."""
    with connected_client(redis.url()) as client:
        yield client


def test_configured_queue_reads_zero_before_any_worker(queue_exporter: ExporterProcess) -> None:
    """A queue given with --queues is reported at length 0 while no worker exists."""
    wait_samples(
        queue_exporter,
        {
            sample("celery_queue_length", queue_name="cfg_q"): 0,
            sample("celery_queue_unacked", queue_name="cfg_q"): 0,
            sample("celery_queue_consumers", queue_name="cfg_q"): 0,
            sample("celery_exporter_collector_success", collector="queues"): 1,
            sample("celery_exporter_collector_success", collector="inspect"): 1,
        },
    )


def test_priority_queue_depth_sums_every_priority(
    queue_exporter: ExporterProcess, sender: Client
) -> None:
    """Messages at priorities 0, 3, 5 and 9 all count in the queue's length."""
    for priority in (0, 0, 3, 5, 9):
        sender.send_quietly("taskapp.succeed", queue="prio_q", priority=priority)
    wait_samples(queue_exporter, {sample("celery_queue_length", queue_name="prio_q"): 5})


def test_oldest_waiting_message_gives_its_sent_time(
    queue_exporter: ExporterProcess, sender: Client
) -> None:
    """The oldest message of a queue reports the timestamp of its task-sent event."""
    first = sender.send_quietly("taskapp.succeed", queue="old_q")
    sender.send_quietly("taskapp.succeed", queue="old_q")
    sender.publish_task_sent(first, "taskapp.succeed", 1_700_000_000.5, queue="old_q")
    wait_samples(
        queue_exporter,
        {
            sample("celery_queue_length", queue_name="old_q"): 2,
            sample(
                "celery_queue_oldest_message_sent_timestamp_seconds", queue_name="old_q"
            ): 1_700_000_000.5,
        },
    )


def test_global_keyprefix_broker(redis: RedisServer, logdir: Path) -> None:
    """With global_keyprefix, lengths are read from the prefixed lists, priorities included."""
    app = Celery("prefixed", broker=redis.url(3), set_as_current=False)
    app.conf.broker_transport_options = {"global_keyprefix": "pfx:"}
    for priority in (0, 6, 9):
        app.send_task("taskapp.succeed", queue="kp_q", priority=priority)
    plain = Celery("plain", broker=redis.url(3), set_as_current=False)
    plain.send_task("taskapp.succeed", queue="kp_q")
    app.close()
    plain.close()
    proc = ExporterProcess(
        redis.url(3),
        logdir,
        [*FAST, "--queues", "kp_q", "--broker-transport-option", "global_keyprefix=pfx:"],
    ).start()
    try:
        wait_samples(proc, {sample("celery_queue_length", queue_name="kp_q"): 3})
    finally:
        proc.stop()


def test_workers_pools_unacked_and_scheduled(
    redis: RedisServer, queue_exporter: ExporterProcess, sender: Client, logdir: Path
) -> None:
    """Pool size under -c 3 and --autoscale, prefetch, scheduled and unacked tasks are exact."""
    fixed = WorkerProcess(
        redis.url(), "fixed", logdir, [HELD], ["--concurrency", "3", "--prefetch-multiplier", "1"]
    ).start()
    auto = WorkerProcess(redis.url(), "auto", logdir, [AUTO], ["--autoscale", "4,1"]).start()
    try:
        wait_samples(
            queue_exporter,
            {
                sample("celery_worker_pool_size", hostname=fixed.nodename): 3,
                sample("celery_worker_prefetch_count", hostname=fixed.nodename): 3,
                sample("celery_worker_tasks_scheduled", hostname=fixed.nodename): 0,
                sample("celery_worker_pool_size", hostname=auto.nodename): 4,
                sample("celery_queue_consumers", queue_name=HELD): 1,
                sample("celery_queue_consumers", queue_name=AUTO): 1,
                sample("celery_queue_length", queue_name=HELD): 0,
            },
        )
        for _ in range(2):
            sender.send(taskapp.succeed, queue=HELD, countdown=600)
        wait_samples(
            queue_exporter,
            {
                sample("celery_worker_tasks_scheduled", hostname=fixed.nodename): 2,
                sample("celery_worker_prefetch_count", hostname=fixed.nodename): 5,
                sample("celery_queue_unacked", queue_name=HELD): 2,
                sample("celery_queue_length", queue_name=HELD): 0,
            },
        )
        for _ in range(7):
            sender.send(taskapp.sleep, args=(120,), queue=HELD)
        # Three run (acknowledged when they start); with prefetch 5 and the two ETA tasks held,
        # the worker reserves three more: 2 + 3 unacked, one left ready in the queue.
        wait_samples(
            queue_exporter,
            {
                sample("celery_queue_unacked", queue_name=HELD): 5,
                sample("celery_queue_length", queue_name=HELD): 1,
                sample("celery_worker_tasks_scheduled", hostname=fixed.nodename): 2,
            },
        )
    finally:
        fixed.kill_group()
        auto.kill_group()


def test_broker_stopped_mid_run(logdir: Path) -> None:
    """Broker down: collector_success drops to 0 and event metrics stay; both recover after."""
    with RedisServer() as server:
        client = Client(server.url())
        proc = ExporterProcess(server.url(), logdir, [*FAST, "--queues", "bq"]).start()
        try:
            proc.wait_ready()  # subscribed: a task-sent published before would be lost
            client.send(taskapp.succeed, queue="bq")
            sent = sample("celery_task_sent_total", name="taskapp.succeed", queue_name="bq")
            wait_samples(
                proc,
                {
                    sent: 1,
                    sample("celery_queue_length", queue_name="bq"): 1,
                    sample("celery_exporter_collector_success", collector="queues"): 1,
                    sample("celery_exporter_collector_success", collector="inspect"): 1,
                },
            )
            server.stop()
            wait_samples(
                proc,
                {
                    sent: 1,
                    sample("celery_exporter_collector_success", collector="queues"): 0,
                    sample("celery_exporter_collector_success", collector="inspect"): 0,
                },
                absent=[sample("celery_queue_length", queue_name="bq")],
            )
            server.start()  # same port, nothing kept: the queue is empty now
            wait_samples(
                proc,
                {
                    sent: 1,
                    sample("celery_queue_length", queue_name="bq"): 0,
                    sample("celery_exporter_collector_success", collector="queues"): 1,
                    sample("celery_exporter_collector_success", collector="inspect"): 1,
                },
            )
        finally:
            proc.stop()
            client.close()
