"""The event-stream daemon: state, consumer and HTTP server wired together, stopped by a signal."""

from __future__ import annotations

import gc
import signal
import threading
import time
from types import FrameType

from prometheus_client import CollectorRegistry
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from .broker import Broker, celery_app
from .broker.control import Controller
from .broker.measure import backend_for
from .collectors.base import Collector, Collectors
from .collectors.event_queue import EventQueueCollector
from .collectors.events import EventCollector
from .collectors.exporter import HealthCollector, build_info
from .collectors.inspect import InspectCollector
from .collectors.polling import Poller
from .collectors.queues import QueueCollector
from .config import Config
from .events.consumer import EventConsumer
from .events.durable import EventQueue
from .internal import InternalErrors
from .log import get_logger
from .state import ClusterState, WorkerQueues
from .web.api import TaskApi
from .web.control import ControlActions, TaskControl
from .web.health import Health
from .web.pages import LINKS, TaskPages
from .web.server import MetricsServer, Route
from .web.webconfig import WebConfigWatcher

log = get_logger(__name__)

#: Container allocations between two collections of the youngest generation (default 700).
GC_THRESHOLD = 50_000
#: Seconds between two looks for workers down longer than --worker-purge-after.
PURGE_INTERVAL = 10.0
#: Longest a clean shutdown waits for the consumer thread.
SHUTDOWN_SECONDS = 3.0


def tune_gc() -> None:
    """Collect cycles rarely: events are freed by reference counting, cycles are rare.

    With the default thresholds the collector rescans the large, long-lived in-flight table
    many times a second under load, which costs about a third of the ingest CPU.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 100)


class Purger:
    """Removes workers down for longer than allowed, every ``interval`` seconds, on a thread."""

    def __init__(self, state: ClusterState, interval: float) -> None:
        self.state = state
        self.interval = interval
        self._thread: threading.Thread | None = None

    def start(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set."""
        self._thread = threading.Thread(target=self._run, args=(stop,), name="purge", daemon=True)
        self._thread.start()

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            try:
                gone = self.state.purge()
            except Exception:  # a bug of ours: counted, and the next round tries again
                self.state.errors.count("purge")
                log.exception("purge_failed")
                continue
            if gone:
                log.info("workers_purged", hostnames=gone)


class Daemon:
    """Owns the parts of a running exporter and their lifecycle."""

    def __init__(self, config: Config, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.stop_event = threading.Event()
        self.health = Health()
        #: Counts our own bugs; one object for every part (the collectors, the cluster state).
        self.internal_errors = InternalErrors()
        #: What the inspect collector learns about each worker's queues, read by the state.
        self.worker_queues = WorkerQueues()
        self.state = ClusterState(
            config.settings, worker_queues=self.worker_queues, errors=self.internal_errors
        )
        self.purger = Purger(self.state, PURGE_INTERVAL)
        self.registry = registry or CollectorRegistry()
        self.broker = Broker(
            config.broker_url, config.broker_transport_options, config.broker_ssl_options
        )
        # Built here, on the main thread: Celery's lazy top-level module is not safe to import
        # for the first time from two threads at once (the consumer's and inspect's broadcasts).
        self.app = celery_app(self.broker, "celery-exporter")
        event_queue = None
        if config.event_queue is not None:
            event_queue = EventQueue(
                config.event_queue, config.event_queue_expires, config.event_queue_max_length
            )
        self.consumer = EventConsumer(
            self.broker,
            self.state,
            self.health,
            enable_events=config.enable_events,
            enable_events_interval=config.enable_events_interval,
            app=self.app,
            event_queue=event_queue,
        )
        web = WebConfigWatcher(config.web_config_file) if config.web_config_file else None
        collectors: list[Collector] = [
            EventCollector(self.state),
            HealthCollector(self.health, build_info()),
        ]
        if event_queue is not None:
            collectors.append(EventQueueCollector(event_queue))
        self.pollers = self._broker_collectors(config, collectors)
        self.registry.register(Collectors(collectors, errors=self.internal_errors))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        routes, links = self._task_view(config, collectors, web)
        self.server = MetricsServer(
            config.host, config.port, self.registry, self.health.view,
            web=web, healthz_open=config.web_healthz_unauthenticated, routes=routes, links=links,
        )  # fmt: skip

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; return the exit status."""
        tune_gc()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        self.server.start()
        log.info("listening", host=self.config.host, port=self.server.port)
        if self.broker.scheme == "sqs":
            log.info(
                "event_stream_unavailable", transport="sqs",
                message="Celery events do not travel over SQS (it has no fanout): task metrics "
                "come from the in-worker exporter (celery_exporter.worker.install), queue metrics "
                "from the SQS API, whose answers /readyz and celery_exporter_broker_up follow",
            )  # fmt: skip
        else:
            self.consumer.start(self.stop_event)
        self.purger.start(self.stop_event)
        for poller in self.pollers:
            poller.start(self.stop_event)
        while not self.stop_event.wait(1.0):
            pass
        log.info("shutting_down")
        deadline = time.monotonic() + SHUTDOWN_SECONDS
        self.consumer.join(SHUTDOWN_SECONDS)
        for poller in self.pollers:  # one budget for all: their threads are daemon threads
            poller.join(max(0.0, deadline - time.monotonic()))
        self.server.stop()
        log.info("stopped")
        return 0

    def _broker_collectors(
        self, config: Config, collectors: list[Collector]
    ) -> list[Poller[object]]:
        """Append the queue and inspect collectors that are on; return their pollers."""
        broker = self.broker
        pollers: list[Poller[object]] = []
        inspect = None
        if config.inspect_collector and broker.scheme != "sqs":  # SQS cannot broadcast
            inspect = InspectCollector(
                broker, self.worker_queues, config.inspect_interval, app=self.app
            )
            collectors.append(inspect)
            pollers.append(inspect.poller)  # type: ignore[arg-type]
        backend = None
        if config.queue_collector:
            try:
                backend = backend_for(broker, config.rabbitmq_management_url, self.health)
            except ValueError as exc:
                log.warning("queue_collector_off", reason=str(exc))
        if getattr(backend, "errors", None) is not None:  # SQS counts its failed API calls
            self.registry.register(backend.errors)  # type: ignore[union-attr]
        if backend is not None:
            queues = QueueCollector(
                backend,
                self.state,
                config.queues,
                config.queue_interval,
                config.queue_purge_after,
                consumers=inspect.consumers if inspect is not None else lambda: None,
            )
            collectors.append(queues)
            pollers.append(queues.poller)  # type: ignore[arg-type]
        return pollers

    def _task_view(
        self, config: Config, collectors: list[Collector], web: WebConfigWatcher | None
    ) -> tuple[list[Route], tuple[tuple[str, str], ...]]:
        """The task view's routes and landing page links; none with ``--no-web.task-api``.

        With ``--web.enable-control`` (which config checked has basic auth) the control
        routes come first, and the counter of their actions is registered.
        """
        if not config.settings.web_task_api:
            return [], ()
        inspect = next((c for c in collectors if isinstance(c, InspectCollector)), None)
        queues = next((c for c in collectors if isinstance(c, QueueCollector)), None)
        api = TaskApi(self.state, inspect, queues, show_args=config.settings.web_show_task_args)
        if not config.web_enable_control or web is None:
            return [api, TaskPages(api, config.web_stuck_after)], LINKS
        actions = ControlActions()
        self.registry.register(actions)
        controller = Controller(self.app, config.result_backend)
        if controller.backend_error is not None:
            log.error("result_backend_unusable", error=controller.backend_error)
        control = TaskControl(controller, self.state, lambda: web.current().auth_required, actions)
        pages = TaskPages(api, config.web_stuck_after, form_token=control.form_token)
        return [control, api, pages], LINKS

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("signal_received", signal=signal.Signals(signum).name)
        self.stop_event.set()
