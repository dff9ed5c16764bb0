"""The ``celery-exporter`` command."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from . import config as config_module
from . import log
from .redact import url_secrets


def main(argv: Sequence[str] | None = None) -> int:
    """Run the exporter (or, as ``celery-exporter sidecar``, the sidecar); exit 2 on bad config."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["sidecar"]:
        return sidecar(args[1:])
    cfg = config_module.load(args, os.environ)
    secrets = url_secrets(cfg.broker_url) | url_secrets(cfg.rabbitmq_management_url or "")
    log.configure(cfg.log_level, cfg.log_format, secrets=secrets)
    from .daemon import Daemon

    try:
        daemon = Daemon(cfg)
    except OSError as exc:
        log.get_logger(__name__).error(
            "cannot_listen",
            host=cfg.host,
            port=cfg.port,
            error=str(exc),
            hint="choose a free port with --port or CELERY_EXPORTER_PORT",
        )
        return 2
    return daemon.run()


def sidecar(argv: Sequence[str]) -> int:
    """Run the worker resource sidecar; exit 2 on bad configuration."""
    cfg = config_module.load_sidecar(argv, os.environ)
    log.configure(cfg.log_level, cfg.log_format)
    from .sidecar import Sidecar

    try:
        side = Sidecar(cfg)
    except OSError as exc:
        log.get_logger(__name__).error(
            "cannot_listen",
            host=cfg.host,
            port=cfg.port,
            error=str(exc),
            hint="choose a free port with --port or CELERY_EXPORTER_SIDECAR_PORT",
        )
        return 2
    return side.run()
