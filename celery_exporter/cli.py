"""The ``celery-exporter`` command, and its ``sidecar`` subcommand."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Protocol

from . import config as config_module
from . import log
from .redact import url_secrets


class _Runnable(Protocol):
    def run(self) -> int: ...


def main(argv: Sequence[str] | None = None) -> int:
    """Run the exporter (or, as ``celery-exporter sidecar``, the sidecar); exit 2 on bad config."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["sidecar"]:
        return sidecar(args[1:])
    cfg = config_module.load(args, os.environ)
    secrets = url_secrets(cfg.broker_url) | url_secrets(cfg.rabbitmq_management_url or "")
    secrets |= url_secrets(cfg.result_backend or "")
    log.configure(cfg.log_level, cfg.log_format, secrets=secrets)
    from .daemon import Daemon

    return _serve(lambda: Daemon(cfg), cfg.host, cfg.port, "--port or CELERY_EXPORTER_PORT")


def sidecar(argv: Sequence[str]) -> int:
    """Run the worker resource sidecar; exit 2 on bad configuration."""
    cfg = config_module.load_sidecar(argv, os.environ)
    log.configure(cfg.log_level, cfg.log_format)
    from .sidecar import Sidecar

    return _serve(
        lambda: Sidecar(cfg), cfg.host, cfg.port, "--port or CELERY_EXPORTER_SIDECAR_PORT"
    )


def _serve(build: Callable[[], _Runnable], host: str, port: int, port_setting: str) -> int:
    """Build and run a server; exit 2 when its port cannot be bound."""
    try:
        server = build()
    except OSError as exc:
        log.get_logger(__name__).error(
            "cannot_listen",
            host=host,
            port=port,
            error=str(exc),
            hint=f"choose a free port with {port_setting}",
        )
        return 2
    return server.run()
