"""The SQS backend against moto's server on a loopback port, and against a server that throttles."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest
from botocore.exceptions import ClientError

from celery_exporter.broker import Broker
from celery_exporter.broker.sqs import MAX_ATTEMPTS, SQSBackend
from celery_exporter.web.health import Health
from tests.support.launchers import free_port
from tests.support.sqs import AWS_ENV, MotoServer


@pytest.fixture(scope="module", autouse=True)
def aws_env() -> Iterator[None]:
    """Fake AWS credentials and region, and no AWS files of the machine's."""
    with pytest.MonkeyPatch.context() as patch:
        for name, setting in AWS_ENV.items():
            patch.setenv(name, setting)
        yield


@pytest.fixture
def moto() -> Iterator[MotoServer]:
    """A fresh, empty SQS emulator."""
    with MotoServer() as server:
        yield server


def backend(url: str, health: Health | None = None, **options: object) -> SQSBackend:
    """An SQS backend of ``url`` with ``options`` as transport options."""
    return SQSBackend(Broker(url, options), health, environ={})


def test_dead_letter_queues_are_followed_down_a_chain(moto: MotoServer) -> None:
    """A queue's dead-letter queue, and that one's, are measured and tied to their source."""
    moto.queue("last")
    moto.fill(moto.queue("first-dead", dead_letter="last"), visible=2)
    moto.fill(moto.queue("first", dead_letter="first-dead"), visible=1, in_flight=1, delayed=2)
    health = Health()
    measured = backend(moto.url(), health).measure(["first"])
    assert measured.length == {"first": 1, "first-dead": 2, "last": 0}
    assert measured.unacked == {"first": 1, "first-dead": 0, "last": 0}
    assert measured.delayed == {"first": 2, "first-dead": 0, "last": 0}
    assert measured.dead_letter == {"first": "first-dead", "first-dead": "last"}
    assert measured.configured == frozenset({"first", "first-dead", "last"})
    assert health.view().ready and health.view().broker_up


def test_prefix_lists_queues_and_missing_ones_read_zero(moto: MotoServer) -> None:
    """With queue_name_prefix every prefixed queue is measured without it; a missing queue reads 0 and is no error."""
    moto.fill(moto.queue("app-a-b"), visible=2)  # kombu's name of the Celery queue a.b
    moto.queue("app-c")
    moto.fill(moto.queue("elsewhere"), visible=5)
    sqs = backend(moto.url(), queue_name_prefix="app-")
    measured = sqs.measure(["a.b", "missing"])
    assert measured.length == {"a.b": 2, "c": 0, "missing": 0}
    assert sqs.errors.counts() == {}
    moto.client().delete_queue(QueueUrl=moto.client().get_queue_url(QueueName="app-c")["QueueUrl"])
    assert sqs.measure(["a.b", "missing"]).length == {"a.b": 2, "missing": 0}


def test_predefined_queues_are_exactly_those_measured(moto: MotoServer) -> None:
    """With predefined_queues only those are measured, under their names, each with its own client settings."""
    url = moto.queue("real-name")
    moto.fill(url, visible=3)
    moto.fill(moto.queue("not-predefined"), visible=1)
    predefined = {"jobs": {"url": url, "access_key_id": "other", "secret_access_key": "key"}}
    sqs = backend(moto.url(), predefined_queues=predefined)
    measured = sqs.measure(["jobs", "not-predefined"])
    assert measured.length == {"jobs": 3}
    assert measured.configured == frozenset({"jobs"})
    assert len(sqs._clients) == 1 and next(iter(sqs._clients))[:2] == ("other", "key")


class Throttling(http.server.BaseHTTPRequestHandler):
    """Answers every SQS request as a throttled one."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"__type": "com.amazonaws.sqs#ThrottlingException", "message": "Rate exceeded"}'
        self.send_response(400)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("x-amzn-query-error", "ThrottlingException;Sender")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def throttling(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A loopback server throttling every request, as a broker URL; botocore retries at once."""
    monkeypatch.setattr(
        "botocore.retries.standard.ExponentialBackoff.delay_amount", lambda self, context: 0.0
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Throttling)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"sqs://k:s@127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_throttled_queue_is_retried_counted_and_left_out(throttling: str) -> None:
    """Each throttled attempt is counted; a queue still throttled after them is left out of the poll, and SQS still counts as answering."""
    health = Health()
    sqs = backend(throttling, health)
    for poll in (1, 2):
        assert sqs.measure(["celery"]).length == {}
        assert sqs.errors.counts() == {("GetQueueUrl", "throttled"): poll * MAX_ATTEMPTS}
    assert health.view().ready


def test_a_throttled_listing_fails_the_poll(throttling: str) -> None:
    """When the queues cannot be listed the poll fails, health reads down with the reason, and the next poll tries again."""
    health = Health()
    sqs = backend(throttling, health, queue_name_prefix="app-")
    for poll in (1, 2):
        with pytest.raises(ClientError, match="ThrottlingException"):
            sqs.measure([])
        assert sqs.errors.counts() == {("ListQueues", "throttled"): poll * MAX_ATTEMPTS}
    view = health.view()
    assert not view.ready and view.reason.startswith("SQS poll failed: ClientError")
