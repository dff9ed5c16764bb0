"""Amazon SQS against moto's server on a loopback port: the daemon's queue metrics, and a worker.

The daemon runs no event consumer on ``sqs://``: its queue collector reads real queues holding
visible, in-flight and delayed messages, and their dead-letter queues, and its readiness follows
whether the SQS API answers. A real prefork worker consumes from SQS through the emulator with
the in-worker exporter, whose task counts must equal what was sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from celery import Celery

from celery_exporter.broker.sqs import MAX_ATTEMPTS
from tests.support import taskapp
from tests.support.expect import wait_metrics
from tests.support.launchers import free_port
from tests.support.processes import EVENT_TIMEOUT, START_TIMEOUT, ExporterProcess, WorkerProcess
from tests.support.scrape import Sample, fetch, scrape
from tests.support.sqs import AWS_ENV, MotoServer
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

#: Credentials in the broker URL; moto takes any. Neither may appear in the exporter's output.
KEY = "AKIAEXPORTERSQSTEST"
SECRET = "sec/ret+Key=9f3e"
INTERVAL = "1s"


@pytest.fixture(scope="module", autouse=True)
def aws_env() -> Iterator[None]:
    """Fake AWS credentials and region for the tests and every process they start."""
    with pytest.MonkeyPatch.context() as patch:
        for name, setting in AWS_ENV.items():
            patch.setenv(name, setting)
        yield


@pytest.fixture
def moto() -> Iterator[MotoServer]:
    """A fresh, empty SQS emulator for one test."""
    with MotoServer() as server:
        yield server


def queue_samples(queue: str, length: int, unacked: int, delayed: int) -> dict[Sample, float]:
    """The three gauges of one queue."""
    label = frozenset({("queue_name", queue)})
    return {
        ("celery_queue_length", label): length,
        ("celery_queue_unacked", label): unacked,
        ("celery_queue_delayed", label): delayed,
    }


def dead_letter(queue: str, target: str) -> Sample:
    """The ``celery_queue_dead_letter_info`` sample tying ``queue`` to ``target``."""
    return (
        "celery_queue_dead_letter_info",
        frozenset({("queue_name", queue), ("dead_letter_queue", target)}),
    )


def up(metrics: dict[Sample, float]) -> float:
    """``celery_exporter_broker_up``."""
    return metrics[("celery_exporter_broker_up", frozenset())]


def fill_scene(moto: MotoServer) -> dict[Sample, float]:
    """Queues with visible, in-flight and delayed messages and dead-letter queues; the samples."""
    moto.queue("it-work-dead")
    work = moto.queue("it-work", dead_letter="it-work-dead")
    moto.fill(work, visible=4, in_flight=2, delayed=3)
    moto.fill(moto.client().get_queue_url(QueueName="it-work-dead")["QueueUrl"], visible=2)
    moto.queue("it-idle")
    moto.fill(moto.queue("graveyard"), visible=1)  # outside the prefix: named as it is
    moto.fill(moto.queue("it-other", dead_letter="graveyard"), delayed=1)
    return {
        **queue_samples("work", 4, 2, 3),
        **queue_samples("work-dead", 2, 0, 0),
        **queue_samples("idle", 0, 0, 0),
        **queue_samples("other", 0, 0, 1),
        **queue_samples("graveyard", 1, 0, 0),
        **queue_samples("absent", 0, 0, 0),
        dead_letter("work", "work-dead"): 1,
        dead_letter("other", "graveyard"): 1,
    }


def queue_series(metrics: dict[Sample, float]) -> dict[Sample, float]:
    """Every ``celery_queue_*`` sample."""
    return {key: v for key, v in metrics.items() if key[0].startswith("celery_queue_")}


def start_exporter(url: str, logdir: Path, *args: str) -> ExporterProcess:
    """The daemon on ``url``, polling the queues every second."""
    return ExporterProcess(url, logdir, ("--queue-interval", INTERVAL, *args)).start()


def test_queue_metrics_are_exact_with_dead_letter_queues(moto: MotoServer, logdir: Path) -> None:
    """Length, in-flight and delayed messages and dead-letter queues read exactly, with no event consumer and no credential in the log."""
    expected = fill_scene(moto)
    exporter = start_exporter(
        moto.url(KEY, SECRET), logdir,
        "--broker-transport-option", "queue_name_prefix=it-", "--queues", "absent",
    )  # fmt: skip
    try:
        exporter.wait_ready(timeout=30)
        metrics = wait_metrics(exporter, expected, timeout=30)
        assert queue_series(metrics) == expected
        assert up(metrics) == 1
        assert (
            "celery_exporter_collector_success",
            frozenset({("collector", "inspect")}),
        ) not in metrics
        output = exporter.output()
    finally:
        exporter.stop()
    assert output.count('"event": "event_stream_unavailable"') == 1
    assert "in-worker exporter" in output
    assert "consuming_events" not in output and "enable_events" not in output
    for secret in (KEY, SECRET, quote(SECRET, safe="")):
        assert secret not in output


def test_readiness_follows_the_sqs_api_through_an_outage(moto: MotoServer, logdir: Path) -> None:
    """With the emulator stopped, broker_up reads 0, /readyz 503 and errors are counted; once it is back, every figure recovers."""
    expected = fill_scene(moto)
    exporter = start_exporter(
        moto.url(KEY, SECRET), logdir,
        "--broker-transport-option", "queue_name_prefix=it-", "--queues", "absent",
    )  # fmt: skip
    try:
        wait_metrics(exporter, expected, timeout=30)
        moto.stop()
        wait_for(lambda: up(exporter.metrics()) == 0, 30, 0.2, "broker_up to read 0")
        status, body = exporter.get("/readyz")
        assert status == 503 and b"SQS poll failed" in body
        metrics = exporter.metrics()
        assert queue_series(metrics) == {}
        errors = {
            dict(labels)["operation"]: v
            for (name, labels), v in metrics.items()
            if name == "celery_exporter_broker_errors_total"
            and dict(labels)["kind"] == "connection"
        }
        # A poll fails after botocore's attempts; the next poll's may have started by now.
        assert set(errors) == {"GetQueueUrl"} and errors["GetQueueUrl"] >= MAX_ATTEMPTS, errors
        assert exporter.process is not None and exporter.process.poll() is None
        moto.start()
        recovered = fill_scene(moto)
        after = wait_metrics(exporter, recovered, timeout=30)
        assert queue_series(after) == recovered and up(after) == 1
        exporter.wait_ready(timeout=10)
        output = exporter.output()
    finally:
        exporter.stop()
    for secret in (KEY, SECRET, quote(SECRET, safe="")):
        assert secret not in output


def test_endpoint_from_the_environment_and_credentials_from_the_default_chain(
    moto: MotoServer, logdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sqs:// with no host and no credentials reads AWS_ENDPOINT_URL_SQS and boto3's chain; predefined_queues names the queues."""
    url = moto.queue("named-in-aws")
    moto.fill(url, visible=3, delayed=1)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", moto.endpoint)
    predefined = json.dumps({"jobs": {"url": url}})
    exporter = start_exporter(
        "sqs://", logdir, "--broker-transport-option", f"predefined_queues={predefined}"
    )
    try:
        metrics = wait_metrics(exporter, queue_samples("jobs", 3, 0, 1), timeout=30)
        assert queue_series(metrics) == queue_samples("jobs", 3, 0, 1)
        output = exporter.output()
    finally:
        exporter.stop()
    assert '"credentials": "AWS default chain"' in output
    assert f'"endpoint": "{moto.endpoint}"' in output


# -- a real worker consuming from SQS ----------------------------------------------------------

WORKLOAD = {"taskapp.succeed": 5, "taskapp.fail_value": 2, "taskapp.fail_key": 1}
QUEUE = "sqs-tasks"


def test_worker_on_sqs_counts_tasks_exactly(moto: MotoServer, logdir: Path) -> None:
    """Tasks sent over SQS wait in the queue, then a real worker with the in-worker exporter counts each one exactly and the queue drains."""
    sender = Celery("sqs-sender", broker=moto.url(KEY, SECRET), set_as_current=False)
    sent = sum(WORKLOAD.values())
    with sender.connection_for_write() as conn:
        for name, count in WORKLOAD.items():
            for _ in range(count):
                sender.send_task(name, queue=QUEUE, connection=conn)
    exporter = start_exporter(moto.url(KEY, SECRET), logdir, "--queues", QUEUE)
    port = free_port()
    worker = WorkerProcess(
        moto.url(KEY, SECRET), "sqs", logdir, queues=(QUEUE,), pool="prefork", events=False,
        env={taskapp.WORKER_PORT_ENV: str(port)},
    )  # fmt: skip
    try:
        wait_metrics(exporter, queue_samples(QUEUE, sent, 0, 0), timeout=30)
        worker.start()
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(base), START_TIMEOUT, 0.2, "the in-worker exporter")
        host = worker.nodename

        def task(family: str, name: str, **extra: str) -> Sample:
            pairs = {"name": name, "queue_name": QUEUE, "hostname": host, **extra}
            return (family, frozenset(pairs.items()))

        expected = {
            **{task("celery_task_received_total", n): c for n, c in WORKLOAD.items()},
            **{task("celery_task_started_total", n): c for n, c in WORKLOAD.items()},
            task("celery_task_succeeded_total", "taskapp.succeed"): 5,
            task("celery_task_failed_total", "taskapp.fail_value", exception="ValueError"): 2,
            task("celery_task_failed_total", "taskapp.fail_key", exception="KeyError"): 1,
        }
        scraper = _Scraper(base + "/metrics")
        after = wait_metrics(scraper, expected, timeout=EVENT_TIMEOUT, worker=worker)
        counted = {
            key: v for key, v in after.items()
            if key[0].startswith("celery_task_") and key[0].endswith("_total") and v
        }  # fmt: skip
        assert counted == expected
        wait_metrics(exporter, queue_samples(QUEUE, 0, 0, 0), timeout=30)
    finally:
        worker.stop()
        exporter.stop()


def _answers(base: str) -> bool:
    try:
        return fetch(base + "/healthz", timeout=2)[0] == 200
    except OSError:
        return False


class _Scraper:
    """The in-worker exporter's ``/metrics``."""

    def __init__(self, url: str) -> None:
        self.url = url

    def metrics(self) -> dict[Sample, float]:
        """Scrape it."""
        return scrape(self.url, timeout=10)
