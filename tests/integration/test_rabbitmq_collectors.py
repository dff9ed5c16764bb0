"""The queue collector against a real RabbitMQ node with the management API."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import taskapp
from tests.support.brokers import FAST, wait_samples
from tests.support.client import Client
from tests.support.launchers import RabbitMQServer
from tests.support.processes import ExporterProcess, WorkerProcess
from tests.support.scrape import sample

pytestmark = pytest.mark.integration


def test_rabbitmq_ready_unacked_consumers_and_missing_queue(
    rabbitmq: RabbitMQServer, logdir: Path
) -> None:
    """Ready, unacked and consumers come from RabbitMQ; a queue that does not exist reads 0."""
    url = rabbitmq.url()
    management = rabbitmq.management_url.replace("://", "://guest:guest@")
    worker = WorkerProcess(
        url, "rabbit", logdir, ["rq"], ["--concurrency", "1", "--prefetch-multiplier", "1"]
    ).start()
    exporter = ExporterProcess(
        url,
        logdir,
        [*FAST, "--queues", "rq,missing_q", "--rabbitmq-management-url", management],
    ).start()
    client = Client(url)
    try:
        wait_samples(
            exporter,
            {
                sample("celery_queue_consumers", queue_name="rq"): 1,
                sample("celery_queue_length", queue_name="missing_q"): 0,
                sample("celery_queue_consumers", queue_name="missing_q"): 0,
                sample("celery_queue_unacked", queue_name="missing_q"): 0,
                sample("celery_worker_pool_size", hostname=worker.nodename): 1,
                sample("celery_exporter_collector_success", collector="queues"): 1,
            },
        )
        # One runs (acknowledged when it starts), one is prefetched (unacked), one is ready.
        for _ in range(3):
            client.send(taskapp.sleep, args=(120,), queue="rq")
        wait_samples(
            exporter,
            {
                sample("celery_queue_length", queue_name="rq"): 1,
                sample("celery_queue_unacked", queue_name="rq"): 1,
                sample("celery_queue_consumers", queue_name="rq"): 1,
                sample("celery_queue_length", queue_name="missing_q"): 0,
            },
        )
        assert "guest:guest@" not in exporter.output()
    finally:
        worker.kill_group()
        exporter.stop()
        client.close()
