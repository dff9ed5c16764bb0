"""The event-stream daemon: state, consumer and HTTP server wired together, stopped by a signal."""

from __future__ import annotations

import platform
import signal
import threading
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from types import FrameType

from prometheus_client import CollectorRegistry
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from . import __version__
from .collector import EventCollector, HealthCollector
from .config import Config
from .consumer import Broker, EventConsumer
from .health import Health
from .http import MetricsServer
from .log import get_logger
from .state import ClusterState

log = get_logger(__name__)

#: Longest a clean shutdown waits for the consumer thread.
SHUTDOWN_SECONDS = 3.0


def build_info() -> Mapping[str, str]:
    """Versions of the exporter, Celery, kombu and Python, for ``celery_exporter_build_info``."""

    def dist(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "unknown"

    return {
        "version": __version__,
        "celery_version": dist("celery"),
        "kombu_version": dist("kombu"),
        "python_version": platform.python_version(),
    }


class Daemon:
    """Owns the parts of a running exporter and their lifecycle."""

    def __init__(self, config: Config, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.stop_event = threading.Event()
        self.health = Health()
        self.state = ClusterState(config.settings)
        self.registry = registry or CollectorRegistry()
        self.registry.register(EventCollector(self.state))
        self.registry.register(HealthCollector(self.health, build_info()))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.consumer = EventConsumer(
            Broker(config.broker_url, config.broker_transport_options, config.broker_ssl_options),
            self.state,
            self.health,
            enable_events=config.enable_events,
            enable_events_interval=config.enable_events_interval,
        )
        self.server = MetricsServer(config.host, config.port, self.registry, self.health.view)

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; return the exit status."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        self.server.start()
        log.info("listening", host=self.config.host, port=self.server.port)
        self.consumer.start(self.stop_event)
        while not self.stop_event.wait(1.0):
            pass
        log.info("shutting_down")
        self.consumer.join(SHUTDOWN_SECONDS)
        self.server.stop()
        log.info("stopped")
        return 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("signal_received", signal=signal.Signals(signum).name)
        self.stop_event.set()
