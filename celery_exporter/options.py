"""The option table: every flag's name, parser, default and help, in one place.

:data:`OPTIONS` (and :data:`SIDECAR_OPTIONS`) is the one place an option's default is written:
``--help``, :func:`celery_exporter.config.resolve` and the field defaults of
:class:`~celery_exporter.state.settings.Settings` all read it (:func:`default`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .parsers import (
    non_empty,
    parse_bool,
    parse_broker_url,
    parse_buckets,
    parse_choice,
    parse_duration,
    parse_http_url,
    parse_pair,
    parse_port,
    parse_queues,
    parse_regex,
    parse_result_backend,
    parse_ssl_pair,
    parse_web_config_file,
    positive_int,
)

ENV_PREFIX = "CELERY_EXPORTER_"
SIDECAR_ENV_PREFIX = "CELERY_EXPORTER_SIDECAR_"
DEFAULT_PORT = 9808
SIDECAR_PORT = 9809
DEFAULT_RUNTIME_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
)  # fmt: skip
DEFAULT_WAIT_BUCKETS = DEFAULT_RUNTIME_BUCKETS
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("auto", "json", "console")


@dataclass(frozen=True)
class Option:
    """One flag: its parser, default and help, shared by argparse, the environment and docs."""

    flag: str
    help: str
    default: Any = None
    parse: Callable[[str], Any] = str
    kind: str = "value"  # "value", "bool" or "pairs"
    metavar: str | None = None
    extra_env: tuple[str, ...] = ()
    prefix: str = ENV_PREFIX

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_").replace(".", "_")

    @property
    def env(self) -> str:
        return self.prefix + self.dest.upper()


OPTIONS: tuple[Option, ...] = (
    Option("--broker-url", "Broker to follow: redis://, rediss://, sentinel://, amqp://, amqps://, "
           "sqs:// (queue metrics only: task metrics come from the in-worker exporter).",
           "redis://localhost:6379/0", parse_broker_url, metavar="URL", extra_env=("CELERY_BROKER_URL",)),
    Option("--broker-transport-option", "Kombu transport option, e.g. master_name=mymaster or "
           "global_keyprefix=prod: (repeatable).", (), parse_pair, "pairs", "KEY=VALUE"),
    Option("--broker-ssl-option", "TLS option for rediss:// or amqps://, e.g. "
           "ssl_cert_reqs=CERT_REQUIRED, ssl_ca_certs=/ca.pem (Redis) or ca_certs=/ca.pem "
           "(AMQP) (repeatable).",
           (), parse_ssl_pair, "pairs", "KEY=VALUE"),
    Option("--host", "Address the HTTP server listens on.", "0.0.0.0", non_empty, metavar="ADDRESS"),
    Option("--port", "Port the HTTP server listens on.", DEFAULT_PORT, parse_port, metavar="PORT"),
    Option("--log-level", "Least severe log level written.", "info", parse_choice(LOG_LEVELS),
           metavar="|".join(LOG_LEVELS)),
    Option("--log-format", "auto: JSON when stdout is not a terminal, console otherwise.", "auto",
           parse_choice(LOG_FORMATS), metavar="|".join(LOG_FORMATS)),
    Option("--enable-events", "Broadcast enable_events to workers at start and periodically "
           "(--no-enable-events to leave workers as they are).", True, parse_bool, "bool"),
    Option("--enable-events-interval", "How often to broadcast enable_events.", 30.0,
           parse_duration, metavar="DURATION"),
    Option("--worker-label", "Add the worker's hostname as a label to task metrics (more series).",
           False, parse_bool, "bool"),
    Option("--worker-timeout", "A worker is down when silent this long "
           "(default: 3 of its own heartbeat intervals).", None, parse_duration, metavar="DURATION"),
    Option("--worker-purge-after", "Remove a down worker's series after this long.", 3600.0,
           parse_duration, metavar="DURATION"),
    Option("--default-queue", "queue_name for tasks whose queue the events do not tell.",
           "celery", non_empty, metavar="QUEUE"),
    Option("--runtime-buckets", "Bucket bounds of celery_task_runtime_seconds, in seconds.",
           DEFAULT_RUNTIME_BUCKETS, parse_buckets, metavar="B1,B2,..."),
    Option("--wait-buckets", "Bucket bounds of the queue and prefetch wait histograms, in seconds.",
           DEFAULT_WAIT_BUCKETS, parse_buckets, metavar="B1,B2,..."),
    Option("--max-tracked-tasks", "Most tasks kept in the in-flight table; oldest evicted first.",
           100_000, positive_int, metavar="N"),
    Option("--max-task-names", "Most distinct task names; more are reported as name=\"other\".",
           1000, positive_int, metavar="N"),
    Option("--max-exceptions", "Most distinct exception classes; more become \"other\".",
           200, positive_int, metavar="N"),
    Option("--max-queues", "Most distinct queue names; more become \"other\".", 500,
           positive_int, metavar="N"),
    Option("--max-workers", "Most distinct worker hostnames; more become \"other\".", 1000,
           positive_int, metavar="N"),
    Option("--web.config.file", "TLS and basic auth for the HTTP server, in the Prometheus "
           "exporter toolkit's YAML format; re-read when it changes.", None,
           parse_web_config_file, metavar="FILE"),
    Option("--queues", "Queues always reported by the queue collector, even before a worker "
           "consumes them (comma-separated).", (), parse_queues, metavar="Q1,Q2,..."),
    Option("--queue-collector", "Measure queue depth on the broker in the background "
           "(--no-queue-collector to turn off).", True, parse_bool, "bool"),
    Option("--queue-interval", "How often the queue collector measures the queues.", 10.0,
           parse_duration, metavar="DURATION"),
    Option("--queue-purge-after", "Stop reporting a queue that is not configured, not consumed "
           "and empty for this long.", 3600.0, parse_duration, metavar="DURATION"),
    Option("--rabbitmq-management-url", "RabbitMQ management API, e.g. "
           "http://user:password@localhost:15672, for unacknowledged message counts.", None,
           parse_http_url, metavar="URL"),
    Option("--inspect-collector", "Broadcast inspect stats/active_queues/scheduled to workers "
           "in the background (--no-inspect-collector to turn off).", True, parse_bool, "bool"),
    Option("--inspect-interval", "How often the inspect collector broadcasts.", 30.0,
           parse_duration, metavar="DURATION"),
    Option("--web.healthz-unauthenticated", "Serve /healthz without basic auth when "
           "--web.config.file sets basic_auth_users.", False, parse_bool, "bool"),
    Option("--event-queue", "RabbitMQ only: consume events from this named durable queue, so "
           "a restarted exporter carries on where it stopped.", None, non_empty, metavar="NAME"),
    Option("--event-queue-expires", "RabbitMQ deletes the --event-queue after it has had no "
           "consumer this long.", 3600.0, parse_duration, metavar="DURATION"),
    Option("--event-queue-max-length", "Most messages the --event-queue holds; beyond it "
           "RabbitMQ drops the oldest (counted).", 1_000_000, positive_int, metavar="N"),
    Option("--web.task-api", "Serve the task view: the JSON API under /api/v1/ and the pages "
           "/tasks, /workers, /queues, /failures (--no-web.task-api to turn off).", True,
           parse_bool, "bool"),
    Option("--web.show-task-args", "Show task arguments (the args and kwargs reprs of task "
           "events) in the task view; they can hold secrets.", False, parse_bool, "bool"),
    Option("--max-finished-tasks", "Most finished tasks the task view keeps; oldest dropped first.",
           10_000, positive_int, metavar="N"),
    Option("--web.stuck-after", "The task view marks a task stuck when it started this long ago "
           "and has not finished.", 900.0, parse_duration, metavar="DURATION"),
    Option("--web.enable-control", "Serve task control: revoke, terminate and retry tasks from "
           "the API and the task pages; needs basic_auth_users in --web.config.file.", False,
           parse_bool, "bool"),
    Option("--result-backend", "The Celery app's result backend, e.g. redis://localhost:6379/1, "
           "where task control's retry reads a task's arguments (result_extended = True).",
           None, parse_result_backend, metavar="URL"),
)  # fmt: skip
#: Broker URL schemes that keep a named queue for a consumer that is gone (RabbitMQ).
EVENT_QUEUE_SCHEMES = ("amqp", "amqps", "pyamqp")

_SHARED = {opt.flag: opt for opt in OPTIONS}
SIDECAR_OPTIONS: tuple[Option, ...] = (
    replace(_SHARED["--host"], prefix=SIDECAR_ENV_PREFIX),
    replace(_SHARED["--port"], default=SIDECAR_PORT, prefix=SIDECAR_ENV_PREFIX),
    Option("--match", "Only watch worker processes whose command line matches this regular "
           "expression, e.g. 'celery -A proj worker'.", None, parse_regex, metavar="REGEX",
           prefix=SIDECAR_ENV_PREFIX),
    Option("--sample-interval", "How often to look for pool processes started and ended "
           "(celery_worker_pool_process_restarts_total).", 1.0, parse_duration,
           metavar="DURATION", prefix=SIDECAR_ENV_PREFIX),
    replace(_SHARED["--log-level"], prefix=SIDECAR_ENV_PREFIX),
    replace(_SHARED["--log-format"], prefix=SIDECAR_ENV_PREFIX),
    replace(_SHARED["--web.config.file"], prefix=SIDECAR_ENV_PREFIX),
    replace(_SHARED["--web.healthz-unauthenticated"], prefix=SIDECAR_ENV_PREFIX),
)  # fmt: skip


def option(flag: str, options: Sequence[Option] = OPTIONS) -> Option:
    """The option ``flag`` names in ``options``; KeyError if there is none."""
    for opt in options:
        if opt.flag == flag:
            return opt
    raise KeyError(flag)


def default(flag: str, options: Sequence[Option] = OPTIONS) -> Any:
    """The default of ``flag``, as the option table gives it."""
    return option(flag, options).default


def default_text(opt: Option) -> str | None:
    """The default as ``--help`` shows it, or None when there is nothing to show."""
    value = opt.default
    if value is None or value is False or value == ():
        return None
    if isinstance(value, tuple) and all(isinstance(item, float) for item in value):
        return ",".join(f"{item:g}" for item in value)
    return str(value)
