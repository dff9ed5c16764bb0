"""The SQS settings, read as kombu reads them, and how failed SQS requests are classified."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from celery_exporter.broker import Broker
from celery_exporter.broker.measure import Measurement
from celery_exporter.broker.sqs import BrokerErrors, error_kind
from celery_exporter.broker.sqs_config import SQSSettings, entity_name
from celery_exporter.collectors.queues import QueueCollector
from celery_exporter.config import load
from celery_exporter.web import exposition

ENV: dict[str, str] = {}


def settings(url: str, environ: dict[str, str] | None = None, **options: Any) -> SQSSettings:
    """The settings of a broker URL with ``options`` as transport options."""
    return SQSSettings.from_broker(Broker(url, {"region": "eu-west-1", **options}), environ or ENV)


def test_credentials_come_from_the_url_percent_decoded() -> None:
    """sqs://KEY:SECRET@ gives the credentials, decoded; none leaves boto3's chain to find them."""
    found = settings("sqs://AKIA123:se%2Fcr%2Bet@")
    assert (found.access_key, found.secret_key, found.endpoint) == ("AKIA123", "se/cr+et", None)
    chain = settings("sqs://")
    assert (chain.access_key, chain.secret_key) == (None, None)
    assert chain.described()["credentials"] == "AWS default chain"


def test_endpoint_from_the_url_host_is_http_unless_is_secure() -> None:
    """As in kombu, the URL's host and port are the endpoint, over https only with is_secure."""
    assert settings("sqs://k:s@127.0.0.1:4566").endpoint == "http://127.0.0.1:4566"
    assert settings("sqs://k:s@sqs.local", is_secure=True).endpoint == "https://sqs.local"
    assert settings("sqs://k:s@sqs.local", is_secure="true").endpoint == "https://sqs.local"
    assert settings("sqs://k:s@[::1]:9324").endpoint == "http://[::1]:9324"
    assert settings("sqs://", is_secure=False).use_ssl is False
    assert settings("sqs://").use_ssl is True


def test_endpoint_variables_apply_only_without_a_host() -> None:
    """AWS_ENDPOINT_URL_SQS wins over AWS_ENDPOINT_URL; a host in the URL wins over both."""
    both = {"AWS_ENDPOINT_URL_SQS": "http://127.0.0.1:1", "AWS_ENDPOINT_URL": "http://127.0.0.1:2"}
    assert settings("sqs://", both).endpoint == "http://127.0.0.1:1"
    assert settings("sqs://", {"AWS_ENDPOINT_URL": "http://127.0.0.1:2"}).endpoint == (
        "http://127.0.0.1:2"
    )
    assert settings("sqs://k:s@127.0.0.1:3", both).endpoint == "http://127.0.0.1:3"


def test_transport_options() -> None:
    """region, queue_name_prefix and predefined_queues (a mapping or its JSON) are read."""
    found = settings(
        "sqs://", queue_name_prefix="prod-", predefined_queues='{"celery": {"url": "http://q/1/c"}}'
    )
    assert (found.region, found.prefix) == ("eu-west-1", "prod-")
    assert found.predefined == {"celery": {"url": "http://q/1/c"}}
    assert settings("sqs://", predefined_queues={"a": {"url": "u"}}).predefined == {
        "a": {"url": "u"}
    }


@pytest.mark.parametrize("bad", ['{"celery": {}}', "[1]", '{"celery": "url"}', "{not json"])
def test_predefined_queues_must_name_urls(bad: str) -> None:
    """predefined_queues that is not a mapping of queues to settings with a url is refused."""
    with pytest.raises(ValueError):
        settings("sqs://", predefined_queues=bad)


def test_described_settings_hold_no_credential() -> None:
    """What is logged about the settings names where credentials come from, never them."""
    described = settings("sqs://AKIA123:topsecret@127.0.0.1:1", queue_name_prefix="p-").described()
    assert described == {
        "region": "eu-west-1",
        "endpoint": "http://127.0.0.1:1",
        "queue_name_prefix": "p-",
        "predefined_queues": "",
        "credentials": "broker URL",
    }


def test_entity_name_follows_kombu() -> None:
    """Dots become dashes and other punctuation underscores; the .fifo suffix is kept."""
    assert entity_name("my.queue") == "my-queue"
    assert entity_name("a:b/c_d-e") == "a_b_c_d-e"
    assert entity_name("jobs.high.fifo") == "jobs-high.fifo"


def response(status: int, code: str = "") -> tuple[Any, dict[str, Any]]:
    """A botocore (http response, parsed) pair."""
    parsed = {"Error": {"Code": code}} if code else {}
    return SimpleNamespace(status_code=status), parsed


def test_error_kinds() -> None:
    """Throttling, other API errors and connection failures are told apart; a missing queue is no error."""
    assert error_kind(response(200), None) is None
    assert error_kind(response(400, "ThrottlingException"), None) == "throttled"
    assert error_kind(response(400, "AWS.SimpleQueueService.RequestThrottled"), None) == "throttled"
    assert error_kind(response(429), None) == "throttled"
    assert error_kind(response(403, "AccessDenied"), None) == "api"
    assert error_kind(response(500, "InternalError"), None) == "api"
    assert error_kind(response(400, "AWS.SimpleQueueService.NonExistentQueue"), None) is None
    assert error_kind(None, ConnectionError("refused")) == "connection"


def test_broker_errors_count_each_failed_attempt() -> None:
    """The needs-retry hook counts failed attempts by operation and kind, and renders them."""
    errors = BrokerErrors()
    op = SimpleNamespace(name="GetQueueAttributes")
    for _ in range(3):
        errors.observe(response=response(400, "ThrottlingException"), operation=op)
    errors.observe(response=response(200), operation=op)
    errors.observe(
        response=None, caught_exception=OSError("x"), operation=SimpleNamespace(name="ListQueues")
    )
    assert errors.counts() == {
        ("GetQueueAttributes", "throttled"): 3,
        ("ListQueues", "connection"): 1,
    }
    text = exposition.render(errors.collect()).decode()
    assert text.splitlines()[2:] == [
        'celery_exporter_broker_errors_total{kind="throttled",operation="GetQueueAttributes"} 3.0',
        'celery_exporter_broker_errors_total{kind="connection",operation="ListQueues"} 1.0',
    ]


class Figures:
    """A queue backend answering one fixed SQS-like measurement."""

    def __init__(self, measured: Measurement) -> None:
        self.measured = measured

    def measure(self, queues: Any, sent: Any = None) -> Measurement:
        """The fixed figures."""
        return self.measured


def test_collector_renders_delayed_and_dead_letter_series_and_keeps_broker_named_queues() -> None:
    """Delayed counts and dead-letter pairs render; queues the broker configuration names are never purged."""
    clock = [1000.0]
    measured = Measurement(
        length={"work": 0, "work-dead": 2, "idle": 0},
        unacked={"work": 0, "work-dead": 0, "idle": 0},
        delayed={"work": 3, "work-dead": 0, "idle": 0},
        dead_letter={"work": "work-dead"},
        configured=frozenset({"idle"}),
    )
    collector = QueueCollector(Figures(measured), None, [], 10, 60, clock=lambda: clock[0])
    assert collector.poller.run_once()
    clock[0] += 3600
    assert collector.poller.run_once()
    lines = [
        line
        for line in exposition.render(collector.collect()).decode().splitlines()
        if line.startswith(("celery_queue_delayed", "celery_queue_dead_letter_info"))
    ]
    assert lines == [
        'celery_queue_delayed{queue_name="idle"} 0.0',
        'celery_queue_delayed{queue_name="work"} 3.0',
        'celery_queue_delayed{queue_name="work-dead"} 0.0',
        'celery_queue_dead_letter_info{dead_letter_queue="work-dead",queue_name="work"} 1.0',
    ]


def test_no_queue_collector_on_sqs_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """--no-queue-collector on sqs:// exits 2: the queue collector is all the exporter does there."""
    with pytest.raises(SystemExit) as caught:
        load(["--broker-url", "sqs://", "--no-queue-collector"], {})
    assert caught.value.code == 2
    line = capsys.readouterr().err.rstrip("\n").splitlines()[-1]
    assert line == (
        "celery-exporter: error: --no-queue-collector: on sqs:// the queue collector is all the "
        "exporter does (Celery events do not travel over SQS; task metrics come from the "
        "in-worker exporter): drop --no-queue-collector (see README, Amazon SQS)"
    )
    assert load(["--broker-url", "redis://127.0.0.1:6379/0", "--no-queue-collector"], {})
