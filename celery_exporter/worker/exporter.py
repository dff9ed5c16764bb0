"""The in-worker exporter's lifecycle: start on ``worker_init``, serve, stop on shutdown.

Options are those of :func:`celery_exporter.worker.install`, listed in the package docstring.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from prometheus_client import CollectorRegistry

from ..collectors.base import Collector, Collectors
from ..collectors.process_table import ProcessTable, Refresher
from ..collectors.processes import ResourceCollector
from ..config import SIDECAR_OPTIONS, SIDECAR_PORT, default
from ..internal import InternalErrors
from ..log import forward_to_logging, get_logger
from ..state import ClusterState, Settings
from ..web.health import Health
from ..web.server import MetricsServer
from ..web.webconfig import WebConfigError, WebConfigWatcher
from .collector import WorkerCollector
from .ipc import Inbox, Outbox
from .signals import ERROR_KINDS, TASK_EVENT_TYPES, WHERE, SignalReceivers

log = get_logger(__name__)

#: The worker side's defaults, as the resource sidecar's flags give them (9809, 0.0.0.0, 1 s).
DEFAULT_PORT: int = SIDECAR_PORT
DEFAULT_HOST: str = default("--host", SIDECAR_OPTIONS)
DEFAULT_SAMPLE_INTERVAL: float = default("--sample-interval", SIDECAR_OPTIONS)


class WorkerExporter:
    """Signal receivers, the state they feed and the HTTP server, for one Celery app."""

    def __init__(
        self,
        app: Any,
        port: int = DEFAULT_PORT,
        host: str = DEFAULT_HOST,
        resources: bool = True,
        sample_interval: float = DEFAULT_SAMPLE_INTERVAL,
        web_config_file: str | None = None,
        settings: Settings | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.port = port
        self.host = host
        self.resources = resources
        self.sample_interval = sample_interval
        self.web_config_file = web_config_file
        # The worker is always "up" to itself: never time it out nor purge its task series.
        base = settings or Settings()
        self.settings = replace(
            base, worker_label=True, worker_timeout=math.inf, worker_purge_after=math.inf
        )
        self.registry = registry or CollectorRegistry()
        self.clock = clock
        #: "idle" until worker_init, "main" in the worker's main process, "pool" in a child.
        self.role = "idle"
        self.hostname = ""
        self.main_pid = 0
        self.state: ClusterState | None = None
        self.worker: Any = None
        self.consumer: Any = None
        self.errors: dict[str, int] = {}
        self.dropped = 0
        #: Our own bugs, from every part: the receivers, the collectors, the state.
        self.internal_errors = InternalErrors()
        self.server: MetricsServer | None = None
        self.inbox: Inbox | None = None
        self.outbox: Outbox | None = None
        self.receivers = SignalReceivers(self)
        self._refresher: Refresher | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def connect(self) -> None:
        """Connect the receivers to Celery's signals."""
        self.receivers.connect()

    def disconnect(self) -> None:
        """Disconnect every receiver (the exporter goes on serving until stopped)."""
        self.receivers.disconnect()

    # -- events -------------------------------------------------------------------------------

    def emit(self, event: dict[str, Any]) -> None:
        """Stamp one event a signal made; a pool process sends it, the main process applies it."""
        event["timestamp"] = self.clock()  # the hostname is the main process's to add
        if self.role == "pool" and self.outbox is not None:
            self.outbox.send(event)
            return
        if self.inbox is not None:
            self.inbox.drain()  # what the pool processes sent before this comes first
        self.apply(event)

    def internal_error(self) -> None:
        """Count a signal that could not be turned into an event (in the main process)."""
        if self.role == "pool" and self.outbox is not None:
            self.outbox.send({"type": "_internal_error"})
        else:
            self.internal_errors.count(WHERE)

    def apply(self, event: dict[str, Any]) -> None:
        """Apply one event in the main process: task events to the state, the rest here."""
        etype = event.get("type")
        if etype == "_error":
            kind = event.get("kind")
            if kind in ERROR_KINDS.values():
                with self._lock:
                    self.errors[str(kind)] = self.errors.get(str(kind), 0) + 1
        elif etype == "_dropped":
            count = event.get("count")
            if isinstance(count, int) and 0 < count < 2**32:
                with self._lock:
                    self.dropped += count
        elif etype == "_internal_error":
            self.internal_errors.count(WHERE)
        elif etype in TASK_EVENT_TYPES and self.state is not None:
            event["hostname"] = self.hostname  # only this worker's tasks are ever counted here
            self.state.handle(event)

    def counts(self) -> tuple[dict[str, int], int]:
        """Task errors by kind, and events lost on the way from pool processes."""
        with self._lock:
            errors, dropped = dict(self.errors), self.dropped
        return errors, dropped + (self.inbox.malformed if self.inbox is not None else 0)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, hostname: str) -> None:
        """Start counting and serving as the worker ``hostname``'s main process."""
        forward_to_logging()
        self.main_pid = os.getpid()
        self.hostname = hostname
        self.state = ClusterState(self.settings, clock=self.clock, errors=self.internal_errors)
        collectors: list[Collector] = [WorkerCollector(self)]
        if self.resources:
            # Only a prefork pool's children are pool processes; other pools' children are
            # programs their tasks run.
            pool_cls = getattr(self.worker, "pool_cls", None)
            prefork = "prefork" in str(getattr(pool_cls, "__module__", pool_cls))
            table = ProcessTable(main_pid=os.getpid(), hostname=hostname, pool_children=prefork)
            self._refresher = Refresher(table, self.sample_interval)
            self._refresher.start(self._stop)
            collectors.append(ResourceCollector(table))
        self.registry.register(Collectors(collectors, self.internal_errors))
        self.inbox = Inbox(self.apply)
        self.inbox.start()
        self.role = "main"
        self._serve(hostname)

    def _serve(self, hostname: str) -> None:
        """Serve /metrics, or log why it cannot and let the worker run on without it."""
        health = Health()
        health.connected()
        try:
            web = WebConfigWatcher(self.web_config_file) if self.web_config_file else None
            self.server = MetricsServer(
                self.host, self.port, self.registry, health.view,
                title="Celery worker exporter", about=f"Metrics of Celery worker {hostname}.",
                web=web,
            )  # fmt: skip
        except OSError as exc:
            log.error(
                "worker_exporter_cannot_listen", host=self.host, port=self.port, error=str(exc),
                hint="pass another port to celery_exporter.worker.install(app, port=...)",
            )  # fmt: skip
            return
        except WebConfigError as exc:
            log.error(
                "worker_exporter_bad_web_config", path=self.web_config_file, error=str(exc),
                hint="fix the file given to celery_exporter.worker.install(web_config_file=...)",
            )  # fmt: skip
            return
        self.server.start()
        log.info("worker_exporter_listening", hostname=hostname, port=self.server.port)

    def enter_pool(self) -> None:
        """In a forked pool process: keep none of the main process's sockets, send to it."""
        assert self.inbox is not None
        self.role = "pool"
        if self.server is not None:
            self.server.httpd.socket.close()
        self.outbox = self.inbox.outbox()

    def stop(self) -> None:
        """Stop serving and receiving."""
        self._stop.set()
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.inbox is not None:
            self.inbox.close()
        if self._refresher is not None:
            self._refresher.join(1.0)

    # -- reading ------------------------------------------------------------------------------

    def pool_size(self) -> int | None:
        """The pool's maximum concurrency (the ``--autoscale`` maximum under autoscale)."""
        worker = self.worker
        if worker is None:
            return None
        autoscaler = getattr(worker, "autoscaler", None)
        size = getattr(autoscaler, "max_concurrency", None) or getattr(
            getattr(worker, "pool", None), "limit", None
        )
        return int(size) if isinstance(size, int) else None

    def prefetch_count(self) -> int | None:
        """The consumer's current prefetch count."""
        qos = getattr(self.consumer, "qos", None)
        value = getattr(qos, "value", None)
        return int(value) if isinstance(value, int) else None
