"""Command-line flags and environment variables, validated into one :class:`Config`.

Every option is a flag and also an environment variable, ``CELERY_EXPORTER_`` followed by the
flag's name in capitals with dashes as underscores (``--max-task-names`` is
``CELERY_EXPORTER_MAX_TASK_NAMES``); the broker URL is also read from ``CELERY_BROKER_URL``.
A flag wins over its variable. Repeatable flags take one ``key=value`` each; their variable holds
several separated by white space. Durations are seconds, or a number with ``ms``, ``s``, ``m``
or ``h``. A value that does not fit raises :class:`ConfigError`, which names the flag or
variable, the value, and what is allowed; the command line turns it into exit status 2.

:data:`OPTIONS` (and :data:`SIDECAR_OPTIONS`) is the one place an option's default is written:
``--help``, :func:`resolve` and the field defaults of
:class:`~celery_exporter.state.settings.Settings` all read it (:func:`default`).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from . import __version__
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
    parse_ssl_pair,
    parse_web_config_file,
    positive_int,
)

if TYPE_CHECKING:  # state.settings reads its defaults from this module
    from .state.settings import Settings

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


class ConfigError(ValueError):
    """A flag or variable whose value cannot be used."""


@dataclass(frozen=True)
class Config:
    """Everything the daemon reads from its flags and environment (defaults: :data:`OPTIONS`)."""

    broker_url: str
    broker_transport_options: Mapping[str, Any]
    broker_ssl_options: Mapping[str, Any]
    host: str
    port: int
    log_level: str
    log_format: str
    enable_events: bool
    enable_events_interval: float
    settings: Settings
    queues: tuple[str, ...]
    queue_collector: bool
    queue_interval: float
    queue_purge_after: float
    rabbitmq_management_url: str | None
    inspect_collector: bool
    inspect_interval: float
    web_config_file: str | None
    web_healthz_unauthenticated: bool
    event_queue: str | None
    event_queue_expires: float
    event_queue_max_length: int


@dataclass(frozen=True)
class SidecarConfig:
    """Everything ``celery-exporter sidecar`` reads (defaults: :data:`SIDECAR_OPTIONS`)."""

    host: str
    port: int
    match: re.Pattern[str] | None
    sample_interval: float
    log_level: str
    log_format: str
    web_config_file: str | None
    web_healthz_unauthenticated: bool


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
    Option("--broker-url", "Broker to follow: redis://, rediss://, sentinel://, amqp://, amqps://.",
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


def build_parser(
    prog: str = "celery-exporter", options: Sequence[Option] | None = None
) -> argparse.ArgumentParser:
    """Return the argument parser for the daemon's flags (or for ``options``)."""
    options = OPTIONS if options is None else options
    if options is SIDECAR_OPTIONS:
        description = (
            "Resource metrics (CPU, memory, I/O) of the Celery workers on this machine or pod."
        )
        epilog = (
            f"Every flag can also be set with an environment variable {SIDECAR_ENV_PREFIX}<FLAG>, "
            f"e.g. {SIDECAR_ENV_PREFIX}PORT={SIDECAR_PORT}."
        )
    else:
        description = (
            "Prometheus exporter for Celery: follows the event stream and serves /metrics. "
            "'celery-exporter sidecar --help' describes the worker resource sidecar."
        )
        epilog = (
            f"Every flag can also be set with an environment variable {ENV_PREFIX}<FLAG>, "
            f"e.g. {ENV_PREFIX}PORT={DEFAULT_PORT}."
        )
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    for opt in options:
        shown = "" if (text := default_text(opt)) is None else f" (default: {text})"
        help_text = f"{opt.help}{shown} [env {opt.env}]"
        if opt.kind == "bool":
            parser.add_argument(
                opt.flag,
                dest=opt.dest,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        elif opt.kind == "pairs":
            parser.add_argument(
                opt.flag,
                dest=opt.dest,
                action="append",
                default=None,
                metavar=opt.metavar,
                help=help_text,
            )
        else:
            parser.add_argument(
                opt.flag, dest=opt.dest, default=None, metavar=opt.metavar, help=help_text
            )
    return parser


def resolve(
    namespace: argparse.Namespace,
    environ: Mapping[str, str],
    options: Sequence[Option] | None = None,
) -> dict[str, Any]:
    """Turn parsed flags and the environment into checked values, flags first."""
    values: dict[str, Any] = {}
    for opt in OPTIONS if options is None else options:
        raw = getattr(namespace, opt.dest, None)
        if raw is not None:
            values[opt.dest] = _convert(opt, raw, opt.flag)
            continue
        for env in (opt.env, *opt.extra_env):
            text = environ.get(env)
            if text is not None and text.strip() != "":
                values[opt.dest] = _convert(opt, text.split() if opt.kind == "pairs" else text, env)
                break
        else:
            values[opt.dest] = dict(opt.default) if opt.kind == "pairs" else opt.default
    return values


def _convert(opt: Option, raw: Any, source: str) -> Any:
    if opt.kind == "bool" and isinstance(raw, bool):
        return raw
    items = raw if opt.kind == "pairs" else [raw]
    out = []
    for item in items:
        try:
            out.append(opt.parse(item))
        except ValueError as exc:
            raise ConfigError(f"{source}: invalid value {_shown(item)}: {exc}") from None
    return dict(out) if opt.kind == "pairs" else out[0]


def _shown(value: str) -> str:
    from .redact import mask_url

    return repr(mask_url(value))


def _parse(
    prog: str, options: Sequence[Option], argv: Sequence[str] | None, environ: Mapping[str, str]
) -> dict[str, Any]:
    """Parse and check flags and environment; a usage error exits 2 with the parser's message."""
    parser = build_parser(prog, options)
    namespace = parser.parse_args(argv)
    try:
        values = resolve(namespace, environ, options)
        if values.get("event_queue") is not None:
            check_event_queue(values["broker_url"])
        return values
    except ConfigError as exc:
        parser.error(str(exc))


def check_event_queue(broker_url: str) -> None:
    """Raise :class:`ConfigError` unless ``--event-queue`` can work on ``broker_url``."""
    schemes = {part.strip().partition("://")[0] for part in broker_url.split(";")}
    if schemes <= set(EVENT_QUEUE_SCHEMES):
        return
    why = "a named queue on the broker keeps the events published while the exporter is away"
    if any("redis" in scheme or scheme == "sentinel" for scheme in schemes):
        why = "Redis pub/sub keeps nothing for a subscriber that is gone; run two exporters instead"
    raise ConfigError(
        f"--event-queue: RabbitMQ only (amqp:// or amqps://), not {', '.join(sorted(schemes))}: "
        f"{why} (see README, Exporter restarts)"
    )


def load(argv: Sequence[str] | None, environ: Mapping[str, str]) -> Config:
    """Parse flags and environment into a :class:`Config`; exits 2 on a usage error."""
    return from_values(_parse("celery-exporter", OPTIONS, argv, environ))


def load_sidecar(argv: Sequence[str] | None, environ: Mapping[str, str]) -> SidecarConfig:
    """Parse the sidecar's flags and environment; exits 2 on a usage error."""
    values = _parse("celery-exporter sidecar", SIDECAR_OPTIONS, argv, environ)
    return SidecarConfig(**{field.name: values[field.name] for field in fields(SidecarConfig)})


def from_values(values: Mapping[str, Any]) -> Config:
    """Build a :class:`Config` from resolved option values; KeyError names a missing one."""
    from .state.settings import Settings

    return Config(
        broker_url=values["broker_url"],
        broker_transport_options=values["broker_transport_option"],
        broker_ssl_options=values["broker_ssl_option"],
        host=values["host"],
        port=values["port"],
        log_level=values["log_level"],
        log_format=values["log_format"],
        enable_events=values["enable_events"],
        enable_events_interval=values["enable_events_interval"],
        settings=Settings.from_values(values),
        queues=values["queues"],
        queue_collector=values["queue_collector"],
        queue_interval=values["queue_interval"],
        queue_purge_after=values["queue_purge_after"],
        rabbitmq_management_url=values["rabbitmq_management_url"],
        inspect_collector=values["inspect_collector"],
        inspect_interval=values["inspect_interval"],
        web_config_file=values["web_config_file"],
        web_healthz_unauthenticated=values["web_healthz_unauthenticated"],
        event_queue=values["event_queue"],
        event_queue_expires=values["event_queue_expires"],
        event_queue_max_length=values["event_queue_max_length"],
    )
