"""``celery-exporter sidecar``: resource metrics of the Celery workers beside it.

Runs in a worker's container, in a container of the worker's pod with
``shareProcessNamespace: true``, or on the worker's machine. It finds worker processes by their
command line (``celery ... worker``; ``--match`` narrows them), names each by its node name (the
``-n``/``--hostname`` argument, or Celery's default ``celery@`` and the host name) and serves
:mod:`celery_exporter.collectors.processes`' families on ``/metrics`` (port 9809 by default).
Reading another user's processes needs the same user or ``CAP_SYS_PTRACE``; what cannot be read
is counted in ``celery_exporter_process_read_errors_total``.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from prometheus_client import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector

from .collectors.base import Collectors
from .collectors.process_table import ProcessTable, Refresher
from .collectors.processes import ResourceCollector
from .config import SidecarConfig
from .log import get_logger
from .web.health import Health
from .web.server import MetricsServer
from .web.webconfig import WebConfigWatcher

log = get_logger(__name__)


class Sidecar:
    """The process table, its refresher and the HTTP server of one sidecar."""

    def __init__(self, config: SidecarConfig, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.stop_event = threading.Event()
        self.table = ProcessTable(match=config.match)
        self.refresher = Refresher(self.table, config.sample_interval)
        self.registry = registry or CollectorRegistry()
        self.registry.register(Collectors([ResourceCollector(self.table)]))
        ProcessCollector(registry=self.registry)
        health = Health()
        health.connected()
        web = WebConfigWatcher(config.web_config_file) if config.web_config_file else None
        self.server = MetricsServer(
            config.host, config.port, self.registry, health.view,
            title="Celery worker resource sidecar",
            about="CPU, memory and I/O of the Celery workers beside this sidecar.",
            web=web, healthz_open=config.web_healthz_unauthenticated,
        )  # fmt: skip

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; return the exit status."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        self.refresher.start(self.stop_event)
        self.server.start()
        log.info("listening", host=self.config.host, port=self.server.port)
        while not self.stop_event.wait(1.0):
            pass
        self.refresher.join(2.0)
        self.server.stop()
        log.info("stopped")
        return 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("signal_received", signal=signal.Signals(signum).name)
        self.stop_event.set()
