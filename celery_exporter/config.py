"""Command-line flags and environment variables, validated into one :class:`Config`.

Every option is a flag and also an environment variable, ``CELERY_EXPORTER_`` followed by the
flag's name in capitals with dashes as underscores (``--max-task-names`` is
``CELERY_EXPORTER_MAX_TASK_NAMES``); the broker URL is also read from ``CELERY_BROKER_URL``.
A flag wins over its variable. Repeatable flags take one ``key=value`` each; their variable holds
several separated by white space. Durations are seconds, or a number with ``ms``, ``s``, ``m``
or ``h``. A value that does not fit raises :class:`ConfigError`, which names the flag or
variable, the value, and what is allowed; the command line turns it into exit status 2.

Every option's name, parser, default and help come from the one table in
:mod:`celery_exporter.options`, re-exported here.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from . import __version__
from .options import (
    DEFAULT_PORT,
    DEFAULT_RUNTIME_BUCKETS,
    DEFAULT_WAIT_BUCKETS,
    ENV_PREFIX,
    EVENT_QUEUE_SCHEMES,
    LOG_FORMATS,
    LOG_LEVELS,
    OPTIONS,
    SIDECAR_ENV_PREFIX,
    SIDECAR_OPTIONS,
    SIDECAR_PORT,
    Option,
    default,
    default_text,
    option,
)

if TYPE_CHECKING:  # state.settings reads its defaults from this module
    from .state.settings import Settings


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
    web_stuck_after: float
    web_enable_control: bool
    result_backend: str | None


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
        if values.get("web_enable_control"):
            check_control(values)
        if values.get("queue_collector") is False:
            check_sqs_queue_collector(values["broker_url"])
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


def check_sqs_queue_collector(broker_url: str) -> None:
    """Raise :class:`ConfigError` for ``--no-queue-collector`` on SQS, where it is all there is."""
    if broker_url.strip().partition("://")[0] == "sqs":
        raise ConfigError(
            "--no-queue-collector: on sqs:// the queue collector is all the exporter does "
            "(Celery events do not travel over SQS; task metrics come from the in-worker "
            "exporter): drop --no-queue-collector (see README, Amazon SQS)"
        )


def check_control(values: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` unless ``--web.enable-control`` has basic auth and the view."""
    from .web.webconfig import load as load_web_config

    path = values.get("web_config_file")
    if path is None or not load_web_config(path).auth_required:
        raise ConfigError(
            "--web.enable-control: task control needs basic auth: add basic_auth_users (user "
            "name: bcrypt hash) to the file given with --web.config.file (see README, Task control)"
        )
    if not values.get("web_task_api", True):
        raise ConfigError("--web.enable-control: task control needs the task view: drop "
                          "--no-web.task-api")  # fmt: skip


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
        web_stuck_after=values["web_stuck_after"],
        web_enable_control=values["web_enable_control"],
        result_backend=values["result_backend"],
    )


__all__ = [
    "DEFAULT_PORT", "DEFAULT_RUNTIME_BUCKETS", "DEFAULT_WAIT_BUCKETS", "ENV_PREFIX",
    "EVENT_QUEUE_SCHEMES", "LOG_FORMATS", "LOG_LEVELS", "OPTIONS", "SIDECAR_ENV_PREFIX",
    "SIDECAR_OPTIONS", "SIDECAR_PORT", "Config", "ConfigError", "Option", "SidecarConfig",
    "build_parser", "default", "default_text", "from_values", "load", "load_sidecar", "option",
    "resolve",
]  # fmt: skip
