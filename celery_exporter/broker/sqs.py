"""Queue depth on Amazon SQS: ``GetQueueAttributes`` through boto3, dead-letter queues included.

Celery events cannot travel over SQS (it has no fanout), so on ``sqs://`` the daemon runs no
event consumer: task metrics come from the in-worker exporter, queue metrics from here, and
``/readyz`` and ``celery_exporter_broker_up`` follow whether the SQS API answered the last poll.

It reads the broker URL, ``AWS_ENDPOINT_URL_SQS``, ``AWS_ENDPOINT_URL`` and
the transport options ``region``, ``queue_name_prefix``, ``predefined_queues`` and
``is_secure`` through :mod:`.sqs_config`. The queues measured are those the collector asks for
(``--queues``, found by name with ``GetQueueUrl``, a missing one reading 0), every queue whose
name starts with ``queue_name_prefix`` (``ListQueues``), or, with ``predefined_queues``,
exactly those (as kombu then uses no other), each with its own credentials when given.

Per queue, ``ApproximateNumberOfMessages`` is the length,
``ApproximateNumberOfMessagesNotVisible`` the unacknowledged messages (received by a worker,
not yet deleted) and ``ApproximateNumberOfMessagesDelayed`` the delayed ones (countdowns and
ETAs SQS holds back). The dead-letter queue a queue's ``RedrivePolicy`` names is measured as a
queue of its own. botocore retries throttled and failed requests (standard mode,
:data:`MAX_ATTEMPTS`); every failed attempt is counted in
``celery_exporter_broker_errors_total{operation,kind}``. Credentials are never logged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from ..counters import LabelledCounter
from ..log import get_logger
from ..redact import mask_url
from .connection import Broker
from .measure import Measurement, SentLookup
from .sqs_config import SQSSettings, entity_name

if TYPE_CHECKING:
    from ..web.health import Health

log = get_logger(__name__)

#: Requests per call, botocore's first try included (standard retry mode, jittered backoff).
MAX_ATTEMPTS = 3
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 5.0
#: The attributes read per queue: length, unacknowledged, delayed and the dead-letter target.
ATTRIBUTES = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
    "RedrivePolicy",
)
#: Error codes that mean SQS is throttling the caller.
THROTTLING_CODES = frozenset({
    "Throttling", "ThrottlingException", "RequestThrottled", "RequestThrottledException",
    "AWS.SimpleQueueService.RequestThrottled", "TooManyRequestsException", "SlowDown",
    "RequestLimitExceeded",
})  # fmt: skip
#: Error codes that mean the queue is not there: an answer, not an error.
MISSING_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})
#: Error codes that mean SQS refused the credentials: no queue can be read.
AUTH_CODES = frozenset({
    "InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException",
    "MissingAuthenticationToken", "InvalidSecurity", "ExpiredToken", "InvalidAccessKeyId",
    "IncompleteSignature",
})  # fmt: skip
#: Most dead-letter queues followed per poll (a dead-letter queue may have its own).
MAX_DEAD_LETTER = 1000


def error_kind(response: Any, caught: BaseException | None) -> str | None:
    """``throttled``, ``api`` or ``connection`` for one failed attempt; None if it did not fail."""
    if caught is not None:
        return "connection"
    if not response:
        return None
    http, parsed = response
    code = str((parsed or {}).get("Error", {}).get("Code", ""))
    if getattr(http, "status_code", 200) < 400 and not code:
        return None
    if code in MISSING_CODES:
        return None
    if code in THROTTLING_CODES or getattr(http, "status_code", 0) == 429:
        return "throttled"
    return "api"


class BrokerErrors(LabelledCounter):
    """Failed SQS requests by operation and kind: ``celery_exporter_broker_errors_total``."""

    def __init__(self) -> None:
        super().__init__(
            "celery_exporter_broker_errors",
            "Failed requests to the broker's API (each retried attempt counted), by operation "
            "and kind: throttled, api or connection.",
            ("operation", "kind"),
        )

    def observe(self, **kwargs: Any) -> None:
        """botocore's ``needs-retry`` hook: count the attempt if it failed; never decide retries."""
        kind = error_kind(kwargs.get("response"), kwargs.get("caught_exception"))
        operation = getattr(kwargs.get("operation"), "name", "unknown")
        if kind is not None:
            self.count(str(operation), kind)

    def counts(self) -> dict[tuple[str, str], int]:
        """A copy of the counts, by (operation, kind)."""
        return {(op, kind): n for (op, kind), n in self.by_labels().items()}


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


@dataclass(frozen=True)
class Target:
    """One queue to measure: its label, URL (None when it does not exist) and client."""

    label: str
    url: str | None
    client: Any


class SQSBackend:
    """Measures SQS queues and their dead-letter queues; tells ``health`` whether SQS answered."""

    def __init__(
        self,
        broker: Broker,
        health: Health | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = SQSSettings.from_broker(broker, os.environ if environ is None else environ)
        self.health = health
        self.errors = BrokerErrors()
        self._clients: dict[tuple[str | None, str | None, str], Any] = {}
        self._urls: dict[str, str] = {}
        self._dead_letter_urls: dict[str, str | None] = {}
        self._warned: dict[tuple[str, str], str] = {}
        log.info("sqs_queue_collector", **self.settings.described())

    def client(self, spec: Mapping[str, Any] | None = None) -> Any:
        """The boto3 SQS client for the default credentials, or a predefined queue's own."""
        spec = spec or {}
        key = spec.get("access_key_id", self.settings.access_key)
        secret = spec.get("secret_access_key", self.settings.secret_key)
        region = str(spec.get("region") or self.settings.region)
        cached = self._clients.get((key, secret, region))
        if cached is not None:
            return cached
        session = boto3.session.Session(
            aws_access_key_id=key, aws_secret_access_key=secret, region_name=region
        )
        config = Config(
            retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            user_agent_extra="celery-exporter",
        )
        client = session.client(
            "sqs", endpoint_url=self.settings.endpoint, use_ssl=self.settings.use_ssl,
            config=config,
        )  # fmt: skip
        client.meta.events.register("needs-retry.sqs", self.errors.observe)
        self._clients[(key, secret, region)] = client
        return client

    def measure(self, queues: Sequence[str], sent: SentLookup | None = None) -> Measurement:
        """Measure ``queues``, the prefixed or predefined ones and their dead-letter queues.

        SQS cannot show the oldest message without receiving it: ``sent`` is not used.
        """
        try:
            out = self._measure(queues)
        except Exception as exc:
            if self.health is not None:
                self.health.disconnected(
                    f"SQS poll failed: {mask_url(f'{type(exc).__name__}: {exc}')}"
                )
            raise
        if self.health is not None:
            self.health.connected()
        return out

    def targets(self, queues: Sequence[str]) -> list[Target]:
        """The queues to measure, each once (by URL), configured names first."""
        found: list[Target] = []
        seen: set[str] = set()

        def add(label: str, url: str | None, client: Any) -> None:
            if url is None or url not in seen:
                found.append(Target(label, url, client))
                if url is not None:
                    seen.add(url)

        predefined = self.settings.predefined
        if predefined is not None:
            for label, spec in predefined.items():
                add(label, str(spec["url"]), self.client(spec))
            for label in queues:
                if label not in predefined:
                    self._warn_once(label, "queue_not_predefined", "not in predefined_queues")
            return found
        client = self.client()
        for label in queues:
            try:
                add(label, self._queue_url(client, label), client)
            except ClientError as exc:
                if _code(exc) in AUTH_CODES:
                    raise  # no queue can be found: the poll fails and the broker reads down
                self._warn_once(label, "sqs_queue_unreadable", f"{_code(exc)}: {exc}")
        if self.settings.prefix:
            for url in self._list(client, self.settings.prefix):
                add(self._label(url.rstrip("/").rsplit("/", 1)[-1]), url, client)
        return found

    def _measure(self, queues: Sequence[str]) -> Measurement:
        out = Measurement(unacked={}, delayed={})
        assert out.unacked is not None and out.delayed is not None
        targets = self.targets(queues)
        measured = {t.url for t in targets if t.url is not None}
        labels = {t.url: t.label for t in targets if t.url is not None}
        index = followed = 0
        while index < len(targets):
            target = targets[index]
            index += 1
            attributes = self._attributes(target)
            if attributes is None:
                continue
            out.length[target.label] = int(attributes.get("ApproximateNumberOfMessages", 0))
            out.unacked[target.label] = int(
                attributes.get("ApproximateNumberOfMessagesNotVisible", 0)
            )
            out.delayed[target.label] = int(attributes.get("ApproximateNumberOfMessagesDelayed", 0))
            url = self._dead_letter_url(target, attributes.get("RedrivePolicy"))
            if url is None:
                continue
            if url not in labels:
                labels[url] = self._label(url.rstrip("/").rsplit("/", 1)[-1])
            out.dead_letter[target.label] = labels[url]
            if url not in measured and followed < MAX_DEAD_LETTER:
                measured.add(url)
                followed += 1
                targets.append(Target(labels[url], url, target.client))
        out.configured = frozenset(t.label for t in targets)
        return out

    def _attributes(self, target: Target) -> dict[str, str] | None:
        """The queue's attributes; zeros when it does not exist, None when it cannot be read."""
        if target.url is None:
            return {}
        try:
            reply = target.client.get_queue_attributes(
                QueueUrl=target.url, AttributeNames=list(ATTRIBUTES)
            )
        except ClientError as exc:
            code = _code(exc)
            if code in MISSING_CODES:
                self._urls.pop(target.label, None)
                return {}
            if code in AUTH_CODES:
                raise  # no queue can be read: the poll fails and the broker reads down
            self._warn_once(target.label, "sqs_queue_unreadable", f"{code}: {exc}")
            return None
        self._warned.pop((target.label, "sqs_queue_unreadable"), None)
        return dict(reply.get("Attributes") or {})

    def _queue_url(self, client: Any, label: str) -> str | None:
        """The URL of the queue kombu names ``label`` (prefix included); None if it is missing."""
        if label in self._urls:
            return self._urls[label]
        try:
            url = str(
                client.get_queue_url(QueueName=entity_name(self.settings.prefix + label))[
                    "QueueUrl"
                ]
            )
        except ClientError as exc:
            if _code(exc) in MISSING_CODES:
                return None
            raise
        self._urls[label] = url
        return url

    def _list(self, client: Any, prefix: str) -> list[str]:
        """Every queue URL whose name starts with ``prefix``."""
        urls: list[str] = []
        kwargs: dict[str, Any] = {"QueueNamePrefix": prefix, "MaxResults": 1000}
        while True:
            reply = client.list_queues(**kwargs)
            urls += [str(url) for url in reply.get("QueueUrls") or ()]
            token = reply.get("NextToken")
            if not token:
                return urls
            kwargs["NextToken"] = token

    def _dead_letter_url(self, target: Target, policy: str | None) -> str | None:
        """The URL of the dead-letter queue a RedrivePolicy names (None when it names none)."""
        if not policy:
            return None
        try:
            arn = str(json.loads(policy)["deadLetterTargetArn"])
            _, _, _, _, account, name = arn.split(":", 5)
        except (ValueError, KeyError, TypeError):
            self._warn_once(target.label, "sqs_redrive_policy_unreadable", policy[:200])
            return None
        if arn in self._dead_letter_urls:
            return self._dead_letter_urls[arn]
        for spec in (self.settings.predefined or {}).values():
            if str(spec["url"]).rstrip("/").endswith(f"/{account}/{name}"):
                self._dead_letter_urls[arn] = str(spec["url"])
                return str(spec["url"])
        try:
            url = str(
                target.client.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)[
                    "QueueUrl"
                ]
            )
        except ClientError as exc:
            if _code(exc) in AUTH_CODES:
                raise
            self._warn_once(target.label, "sqs_dead_letter_queue_unreadable", f"{name}: {exc}")
            return None
        self._dead_letter_urls[arn] = url
        return url

    def _label(self, name: str) -> str:
        """The queue_name of an SQS queue: its name without ``queue_name_prefix``."""
        prefix = self.settings.prefix
        return (
            name[len(prefix) :] if prefix and name.startswith(prefix) and name != prefix else name
        )

    def _warn_once(self, queue: str, event: str, error: str) -> None:
        """Log a queue's problem once, until it changes or the queue is read again."""
        if self._warned.get((queue, event)) != error:
            self._warned[(queue, event)] = error
            log.warning(event, queue=queue, error=mask_url(error))
