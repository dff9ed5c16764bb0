"""Task and pool metrics from inside a Celery worker, built on Celery's signals.

One line in the module that defines the app turns it on::

    from celery_exporter.worker import install
    install(app, port=9809)

Nothing happens in processes that only import the app (producers, beat, ``celery inspect``):
the exporter starts on the worker's ``worker_init`` signal, serves ``/metrics`` from the
worker's main process and stops on ``worker_shutdown``. It serves the same ``celery_task_*``
families as the event-stream daemon, always with ``hostname``, computed by the same
:class:`~celery_exporter.state.ClusterState` from events made out of signals instead of
Celery's event stream, so no events need be enabled.

Prefork pools run tasks in child processes. Each child sends what its signals say to the main
process, as it happens, over an unnamed Unix datagram socket pair created before the pool
starts (no other process can write to it, no file to clean up), so counts survive
``--max-tasks-per-child`` recycling and hard time limits. A thread of the main process
receives them. Solo,
threads, eventlet and gevent pools run tasks in the main process, which counts directly.

Options of :func:`install`:

- ``port`` (9809), ``host`` (``0.0.0.0``): where ``/metrics`` listens. A port in use is logged
  (``worker_exporter_cannot_listen``) and the worker runs on without the exporter.
- ``web_config_file``: TLS and basic auth for ``/metrics``, in the exporter toolkit's YAML
  (as the daemon's ``--web.config.file``). A file that cannot be used is logged and the worker
  runs on without the exporter.
- ``resources`` (True): also serve the CPU, memory, I/O, fd and thread figures of the worker's
  processes (:mod:`celery_exporter.resources`), refreshed every ``sample_interval`` (1 s).
- ``settings``: a :class:`~celery_exporter.state.Settings` for the label caps, default queue and
  histogram buckets (the daemon's defaults otherwise).
- ``registry``: the registry to serve (a new one otherwise).
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from ..collectors.events import task_families
from ..collectors.processes import ProcessTable, Refresher, ResourceCollector
from ..log import forward_to_logging, get_logger
from ..state import ClusterState, Settings
from ..web.health import Health
from ..web.server import MetricsServer
from ..web.webconfig import WebConfigError, WebConfigWatcher

log = get_logger(__name__)

DEFAULT_PORT = 9809
#: Longest a pool process waits to hand one event to the main process before dropping it.
SEND_TIMEOUT = 1.0
_MAX_DATAGRAM = 65536
#: Errors counted in ``celery_worker_task_errors_total``, by the signal that reports them.
#: The task events the receivers make, the only ones the main process applies to its state.
TASK_EVENT_TYPES = frozenset(
    {
        "task-received", "task-started", "task-succeeded", "task-failed", "task-retried",
        "task-revoked", "task-rejected", "task-ignored",
    }
)  # fmt: skip
ERROR_KINDS = {
    "task_unknown": "unknown_task",
    "task_rejected": "invalid_message",
    "task_internal_error": "internal_error",
}


def install(app: Any, port: int = DEFAULT_PORT, **options: Any) -> WorkerExporter:
    """Export this app's workers' task and pool metrics on ``port``; see the module docstring."""
    exporter = WorkerExporter(app, port=port, **options)
    exporter.connect()
    return exporter


class _Inbox:
    """The main process's end of an unnamed socket pair that pool processes inherit.

    No other process can send to it, and there is no file to clean up. A thread of the main
    process receives and applies what the pool processes send; it keeps receiving whatever
    the worker's own event loop is doing (reconnecting to the broker, shutting down).
    """

    def __init__(self, apply: Callable[[dict[str, Any]], None]) -> None:
        self.apply = apply
        self.sock, self.send_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.malformed = 0

    def start(self) -> None:
        """Receive on a daemon thread."""
        thread = threading.Thread(target=self._run, name="worker-exporter-inbox", daemon=True)
        thread.start()

    def _run(self) -> None:
        while True:
            try:
                data = self.sock.recv(_MAX_DATAGRAM)
            except OSError:
                return  # closed
            if not data:
                return  # shut down
            try:
                event = orjson.loads(data)
                if not isinstance(event, dict):
                    raise TypeError("not an object")
            except (orjson.JSONDecodeError, TypeError):
                self.malformed += 1
                continue
            self.apply(event)

    def close(self) -> None:
        """Stop receiving (the thread wakes and ends) and close both ends."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.send_end.close()


class _Outbox:
    """A pool process's end: sends events to the main process, counting what it cannot send."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(SEND_TIMEOUT)
        self.dropped = 0

    def send(self, event: dict[str, Any]) -> None:
        """Send one event; one that cannot be sent is counted, and reported with the next."""
        try:
            if self.dropped:
                self.sock.send(orjson.dumps({"type": "_dropped", "count": self.dropped}))
                self.dropped = 0
            self.sock.send(orjson.dumps(event))
        except (OSError, TypeError):  # TypeError: a field orjson cannot encode
            self.dropped += 1

    def flush(self) -> None:
        """Report what could not be sent, before the pool process exits."""
        if self.dropped:
            with contextlib.suppress(OSError):
                self.sock.send(orjson.dumps({"type": "_dropped", "count": self.dropped}))
                self.dropped = 0


class WorkerExporter:
    """Signal receivers, the state they feed and the HTTP server, for one Celery app."""

    def __init__(
        self,
        app: Any,
        port: int = DEFAULT_PORT,
        host: str = "0.0.0.0",
        resources: bool = True,
        sample_interval: float = 1.0,
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
        self.state: ClusterState | None = None
        self.worker: Any = None
        self.consumer: Any = None
        self.errors: dict[str, int] = {}
        self.dropped = 0
        self.server: MetricsServer | None = None
        self._inbox: _Inbox | None = None
        self._outbox: _Outbox | None = None
        self._refresher: Refresher | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}
        self._main_pid = 0
        self._connected: list[tuple[Any, Callable[..., None]]] = []

    # -- signals ------------------------------------------------------------------------------

    def connect(self) -> None:
        """Connect the receivers to Celery's signals."""
        from celery import signals

        receivers: dict[str, Callable[..., None]] = {
            "worker_init": self._on_worker_init,
            "worker_ready": self._on_worker_ready,
            "worker_process_init": self._on_process_init,
            "worker_process_shutdown": self._on_process_shutdown,
            "worker_shutdown": self._on_worker_shutdown,
            "task_received": self._on_received,
            "task_prerun": self._on_prerun,
            "task_success": self._on_success,
            "task_failure": self._on_failure,
            "task_retry": self._on_retry,
            "task_revoked": self._on_revoked,
            "task_postrun": self._on_postrun,
            "task_unknown": self._on_error("task_unknown"),
            "task_rejected": self._on_error("task_rejected"),
            "task_internal_error": self._on_error("task_internal_error"),
        }
        for name, receiver in receivers.items():
            signal = getattr(signals, name)
            signal.connect(receiver, weak=False)
            self._connected.append((signal, receiver))

    def disconnect(self) -> None:
        """Disconnect every receiver (the exporter goes on serving until stopped)."""
        for signal, receiver in self._connected:
            signal.disconnect(receiver)
        self._connected.clear()

    def _on_worker_init(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not self.app or self.role != "idle":
            return
        self.worker = sender
        self.start(str(sender.hostname))

    def _on_worker_ready(self, sender: Any = None, **_: Any) -> None:
        if self.role == "main":
            self.consumer = sender

    def _on_process_init(self, **_: Any) -> None:
        # The solo pool sends worker_process_init in the main process itself.
        if self.role != "main" or self._inbox is None or os.getpid() == self._main_pid:
            return
        # A forked pool process: keep none of the main process's sockets, send to it instead.
        self.role = "pool"
        if self.server is not None:
            self.server.httpd.socket.close()
        self._inbox.sock.close()
        self._outbox = _Outbox(self._inbox.send_end)
        self._started.clear()

    def _on_process_shutdown(self, **_: Any) -> None:
        if self.role == "pool" and self._outbox is not None:
            self._outbox.flush()

    def _on_worker_shutdown(self, **_: Any) -> None:
        if self.role == "main":
            self.stop()

    def _on_received(self, request: Any = None, **_: Any) -> None:
        if self.role == "idle" or request is None:
            return
        self._emit(
            {
                "type": "task-received",
                "uuid": request.id,
                "name": request.name,
                "queue": _queue(getattr(request, "delivery_info", None)),
                "eta": request.eta,
            }
        )

    def _on_prerun(self, task_id: str | None = None, task: Any = None, **_: Any) -> None:
        if self.role == "idle" or task_id is None:
            return
        self._started[task_id] = time.monotonic()
        request = getattr(task, "request", None)
        self._emit(
            {
                "type": "task-started",
                "uuid": task_id,
                "name": getattr(task, "name", None),
                "queue": _queue(getattr(request, "delivery_info", None)),
            }
        )

    def _on_success(self, sender: Any = None, **_: Any) -> None:
        task_id = _request_id(sender)
        if self.role == "idle" or task_id is None:
            return
        began = self._started.get(task_id)
        runtime = time.monotonic() - began if began is not None else None
        self._emit({"type": "task-succeeded", "uuid": task_id, "runtime": runtime})

    def _on_failure(
        self, sender: Any = None, task_id: str | None = None, exception: Any = None, **_: Any
    ) -> None:
        if self.role == "idle" or task_id is None:
            return
        name = getattr(sender, "name", None)
        self._emit(
            {"type": "task-failed", "uuid": task_id, "name": name, "exception": _class(exception)}
        )

    def _on_retry(self, request: Any = None, reason: Any = None, **_: Any) -> None:
        if self.role == "idle" or request is None:
            return
        cause = getattr(reason, "exc", None) or reason
        self._emit({"type": "task-retried", "uuid": request.id, "exception": _class(cause)})

    def _on_revoked(self, sender: Any = None, request: Any = None, **_: Any) -> None:
        task_id = getattr(request, "id", None)
        if self.role == "idle" or task_id is None:
            return
        self._emit({"type": "task-revoked", "uuid": task_id, "name": getattr(sender, "name", None)})

    def _on_postrun(
        self, task_id: str | None = None, state: str | None = None, retval: Any = None, **_: Any
    ) -> None:
        if self.role == "idle" or task_id is None:
            return
        self._started.pop(task_id, None)
        if state == "REJECTED":
            requeue = bool(getattr(retval, "requeue", False))
            self._emit({"type": "task-rejected", "uuid": task_id, "requeue": requeue})
        elif state == "IGNORED":
            # No final signal follows Ignore (raised by Task.replace, too): retire the task.
            self._emit({"type": "task-ignored", "uuid": task_id})

    def _on_error(self, signal_name: str) -> Callable[..., None]:
        kind = ERROR_KINDS[signal_name]

        def receiver(**_: Any) -> None:
            if self.role != "idle":
                self._emit({"type": "_error", "kind": kind})

        return receiver

    # -- events -------------------------------------------------------------------------------

    def _emit(self, event: dict[str, Any]) -> None:
        event["timestamp"] = self.clock()  # the hostname is the main process's to add
        if self.role == "pool" and self._outbox is not None:
            self._outbox.send(event)
        else:
            self.apply(event)

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
        elif etype in TASK_EVENT_TYPES and self.state is not None:
            event["hostname"] = self.hostname  # only this worker's tasks are ever counted here
            self.state.handle(event)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, hostname: str) -> None:
        """Start counting and serving as the worker ``hostname``'s main process."""
        forward_to_logging()
        self._main_pid = os.getpid()
        self.hostname = hostname
        self.state = ClusterState(self.settings, clock=self.clock)
        self.registry.register(WorkerCollector(self))
        if self.resources:
            # Only a prefork pool's children are pool processes; other pools' children are
            # programs their tasks run.
            pool_cls = getattr(self.worker, "pool_cls", None)
            prefork = "prefork" in str(getattr(pool_cls, "__module__", pool_cls))
            table = ProcessTable(main_pid=os.getpid(), hostname=hostname, pool_children=prefork)
            self._refresher = Refresher(table, self.sample_interval)
            self._refresher.start(self._stop)
            self.registry.register(ResourceCollector(table))
        self._inbox = _Inbox(self.apply)
        self._inbox.start()
        self.role = "main"
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

    def stop(self) -> None:
        """Stop serving and receiving."""
        self._stop.set()
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self._inbox is not None:
            self._inbox.close()
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


class WorkerCollector(Collector):
    """Task families from the worker's signals, and the pool figures only the worker knows."""

    def __init__(self, exporter: WorkerExporter) -> None:
        self.exporter = exporter

    def collect(self) -> Iterator[Metric]:
        """Yield the task families, the worker gauges and the exporter's self-metrics."""
        from celery.worker import state as worker_state

        exp = self.exporter
        if exp.state is not None:
            yield from task_families(exp.state.snapshot())
        label = [exp.hostname]
        active = len(worker_state.active_requests)
        reserved = max(len(worker_state.reserved_requests) - active, 0)
        gauges: list[tuple[str, str, float | None]] = [
            ("celery_worker_up", "1 while the worker serves its metrics.", 1),
            ("celery_worker_pool_busy", "Tasks executing in the worker's pool now.", active),
            ("celery_worker_pool_size", "The pool's maximum concurrency.", exp.pool_size()),
            (
                "celery_worker_tasks_reserved",
                "Tasks the worker received and has not started.",
                reserved,
            ),
            (
                "celery_worker_prefetch_count",
                "The worker's current prefetch count.",
                exp.prefetch_count(),
            ),
        ]
        for name, doc, value in gauges:
            family = GaugeMetricFamily(name, doc, labels=["hostname"])
            if value is not None:
                family.add_metric(label, value)
            yield family
        with exp._lock:
            errors = dict(exp.errors)
            dropped = exp.dropped
        errors_family = CounterMetricFamily(
            "celery_worker_task_errors",
            "Messages the worker could not run, by kind (unknown_task, invalid_message, "
            "internal_error).",
            labels=["hostname", "kind"],
        )
        for kind in sorted(ERROR_KINDS.values()):
            errors_family.add_metric([exp.hostname, kind], errors.get(kind, 0))
        yield errors_family
        yield CounterMetricFamily(
            "celery_exporter_worker_events_dropped",
            "Signal events a pool process could not hand to the main process (not counted).",
            value=dropped + (exp._inbox.malformed if exp._inbox is not None else 0),
        )
        from ..daemon import build_info

        info = InfoMetricFamily(
            "celery_exporter_build", "Version of the exporter and its libraries."
        )
        info.add_metric([], dict(build_info()))
        yield info


def _queue(delivery_info: Any) -> str | None:
    """The queue a message came from, as its routing key tells it."""
    if isinstance(delivery_info, dict):
        key = delivery_info.get("routing_key")
        if isinstance(key, str) and key:
            return key
    return None


def _request_id(task: Any) -> str | None:
    request = getattr(task, "request", None)
    task_id = getattr(request, "id", None)
    return task_id if isinstance(task_id, str) else None


def _class(exception: Any) -> str:
    """The class name of an exception (``Reject``, ``TimeLimitExceeded``, ...)."""
    if exception is None:
        return "unknown"
    return type(exception).__name__
