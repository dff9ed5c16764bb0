"""What the event stream says about tasks and workers, kept as plain counters.

:class:`ClusterState` is the hot path: every event goes through :meth:`ClusterState.handle_batch`,
which updates dicts keyed by label tuples and nothing else. Metric families are built from a
:class:`Snapshot` at scrape time (see :mod:`celery_exporter.collector`), so an event costs no
``labels()`` lookup and a scrape holds the lock only for the time it takes to copy some dicts.

Task events may carry a ``queue`` field, which Celery's own worker events never do: the
in-worker exporter (:mod:`celery_exporter.worker`) sets it from the message's routing key.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .labels import UNKNOWN, LabelCap, clean, exception_name
from .settings import Settings

Clock = Callable[[], float]
LabelKey = tuple[str, ...]

#: Task event types counted by ``celery_task_<kind>_total``.
TASK_COUNTERS = (
    "sent",
    "received",
    "started",
    "succeeded",
    "failed",
    "retried",
    "revoked",
    "rejected",
)
#: Exception classes that mark a task killed by its time limit, and the ``kind`` they count as.
TIMEOUT_KINDS = {"SoftTimeLimitExceeded": "soft", "TimeLimitExceeded": "hard"}

#: Longest task id accepted; a task event with a longer or missing one is counted as malformed.
MAX_UUID_LENGTH = 200

_PENDING, _RECEIVED, _STARTED = 0, 1, 2
_DEFAULT_FREQ = 2.0
_FAILURE_WINDOW = 60


class Histogram:
    """Per-bucket counts and a sum; cumulated only when rendered."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def copy(self) -> Histogram:
        """Return an independent copy."""
        other = Histogram(self.bounds)
        other.counts = self.counts[:]
        other.total = self.total
        return other


class FailureWindow:
    """Failures in the last 60 seconds, in one-second buckets."""

    __slots__ = ("counts", "seconds")

    def __init__(self) -> None:
        self.seconds = [0] * _FAILURE_WINDOW
        self.counts = [0] * _FAILURE_WINDOW

    def add(self, now: float) -> None:
        """Count one failure at ``now``."""
        second = int(now)
        slot = second % _FAILURE_WINDOW
        if self.seconds[slot] != second:
            self.seconds[slot] = second
            self.counts[slot] = 0
        self.counts[slot] += 1

    def total(self, now: float) -> int:
        """Return the failures of the 60 seconds up to ``now``."""
        newest = int(now)
        return sum(
            count
            for second, count in zip(self.seconds, self.counts, strict=True)
            if newest - _FAILURE_WINDOW < second <= newest
        )


class _Task:
    """One task the exporter has seen and not yet seen finish."""

    __slots__ = (
        "eta",
        "host",
        "key",
        "name",
        "queue",
        "received",
        "sent",
        "started",
        "step",
        "uuid",
    )

    def __init__(self, uuid: str, name: str, queue: str) -> None:
        self.uuid = uuid
        self.name = name
        self.queue = queue
        self.host = ""
        self.key: LabelKey = ()
        self.step = _PENDING
        self.sent: float | None = None
        self.received: float | None = None
        self.started: float | None = None
        self.eta: float | None = None


class Worker:
    """What heartbeats and task events say about one worker."""

    __slots__ = (
        "active", "busy", "freq", "last_heartbeat", "last_seen", "loadavg", "offline_since",
        "online", "processed", "reserved", "sw_ident", "sw_sys", "sw_ver",
    )  # fmt: skip

    def __init__(self, now: float) -> None:
        self.online = True
        self.offline_since: float | None = None
        self.last_seen = now
        self.last_heartbeat: float | None = None
        self.freq = _DEFAULT_FREQ
        self.active = 0
        self.processed = 0
        self.loadavg: tuple[float, float, float] | None = None
        self.sw_ident = ""
        self.sw_ver = ""
        self.sw_sys = ""
        self.busy = 0
        self.reserved = 0

    def copy(self) -> Worker:
        """Return an independent copy."""
        other = Worker.__new__(Worker)
        for slot in Worker.__slots__:
            setattr(other, slot, getattr(self, slot))
        return other


@dataclass
class Snapshot:
    """A consistent copy of the state, taken under the lock and rendered outside it."""

    now: float
    task_labels: tuple[str, ...]
    counters: dict[str, dict[LabelKey, int]]
    timeouts: dict[LabelKey, int]
    runtime: dict[LabelKey, Histogram]
    queue_wait: dict[LabelKey, Histogram]
    prefetch_wait: dict[LabelKey, Histogram]
    failures_per_minute: dict[LabelKey, int]
    active: dict[LabelKey, tuple[int, float]]
    workers: dict[str, tuple[bool, Worker]]
    events: dict[str, int]
    tracked_tasks: int
    tasks_evicted: int
    duplicates: int
    overflow: dict[str, int]
    last_event: float | None
    malformed: dict[str, int] = field(default_factory=dict)


class ClusterState:
    """Counters, histograms and gauges for the tasks and workers seen in the event stream."""

    def __init__(self, settings: Settings | None = None, clock: Clock = time.time) -> None:
        self.settings = s = settings or Settings()
        self.clock = clock
        self.lock = threading.Lock()
        self.task_labels = (
            ("name", "queue_name", "hostname") if s.worker_label else ("name", "queue_name")
        )
        self.names = LabelCap(s.max_task_names)
        self.exceptions = LabelCap(s.max_exceptions)
        self.queues = LabelCap(s.max_queues)
        self.hostnames = LabelCap(s.max_workers)
        self.tasks: dict[str, _Task] = {}
        #: Recently finished tasks and the final event types seen for each, to spot repeats.
        self.finished: dict[str, tuple[set[str], _Task]] = {}
        self._finished_ring: list[str | None] = [None] * s.max_finished_tasks
        self._finished_pos = 0
        self.counters: dict[str, dict[LabelKey, int]] = {kind: {} for kind in TASK_COUNTERS}
        self.timeouts: dict[LabelKey, int] = {}
        self.runtime: dict[LabelKey, Histogram] = {}
        self.queue_wait: dict[LabelKey, Histogram] = {}
        self.prefetch_wait: dict[LabelKey, Histogram] = {}
        self.failure_windows: dict[LabelKey, FailureWindow] = {}
        self.running: dict[LabelKey, dict[str, float]] = {}
        self.workers: dict[str, Worker] = {}
        #: Queues each worker consumes, when a collector has learned them.
        self.worker_queues: dict[str, tuple[str, ...]] = {}
        self.events: dict[str, int] = {}
        self.malformed: dict[str, int] = {}
        self.tasks_evicted = 0
        self.duplicates = 0
        self.last_event: float | None = None
        self.last_task_event: float | None = None
        self._handlers: dict[str, Callable[[dict[str, Any], float], None]] = {
            "task-sent": self._on_sent,
            "task-received": self._on_received,
            "task-started": self._on_started,
            "task-succeeded": self._on_succeeded,
            "task-failed": self._on_failed,
            "task-retried": self._on_retried,
            "task-revoked": self._on_revoked,
            "task-rejected": self._on_rejected,
            "task-cancelled": self._on_cancelled,
            "task-ignored": self._on_ignored,
            "worker-online": self._on_worker_online,
            "worker-heartbeat": self._on_worker_heartbeat,
            "worker-offline": self._on_worker_offline,
        }

    # -- input ------------------------------------------------------------------------------

    def handle_batch(self, events: Iterable[Any]) -> None:
        """Apply events in order; an item that is not an object with a string type is malformed."""
        now = self.clock()
        handlers = self._handlers
        counts = self.events
        with self.lock:
            self.last_event = now
            for event in events:
                try:
                    etype = event["type"]
                    if type(etype) is not str:
                        raise TypeError("event type is not a string")
                    handler = handlers.get(etype)
                    if handler is None:
                        counts["other"] = counts.get("other", 0) + 1
                        continue
                    counts[etype] = counts.get(etype, 0) + 1
                    handler(event, now)
                except Exception:
                    # Not an event, or one that breaks a handler: counted and skipped; the rest
                    # of the batch still counts.
                    self.malformed["schema"] = self.malformed.get("schema", 0) + 1

    def handle(self, event: dict[str, Any]) -> None:
        """Apply one event."""
        self.handle_batch((event,))

    def count_malformed(self, reason: str) -> None:
        """Count a message that could not be decoded."""
        with self.lock:
            self.malformed[reason] = self.malformed.get(reason, 0) + 1

    # -- task events --------------------------------------------------------------------------

    def _on_sent(self, event: dict[str, Any], now: float) -> None:
        uuid = _uuid(event)
        task = self.tasks.get(uuid)
        queue = event.get("queue") or event.get("routing_key")
        sent = _timestamp(event, now)
        eta = _eta(event.get("eta"))
        if task is None:
            done = self.finished.get(uuid)
            if done is not None:
                # Producers publish task-sent after the task itself: a short task can finish
                # first. Count it under the labels the task ran with, and do not track it again.
                self._late_sent(done[1], sent, eta, queue)
                return
            task = self._track(
                uuid,
                self.names(event.get("name")),
                self.queues(queue or self.settings.default_queue),
            )
        elif task.step == _STARTED and task.started is not None and sent <= task.started:
            self._late_sent(task, sent, eta, queue)
            return
        elif queue:
            task.queue = self.queues(queue)
        task.sent = sent
        task.eta = eta
        running_key = task.key
        self._count("sent", task, "")
        if task.step == _STARTED:
            # A retry's new message, sent while the current run still holds the running gauge.
            task.key = running_key

    def _late_sent(self, task: _Task, sent: float, eta: float | None, queue: Any) -> None:
        """Count a task-sent that arrived after its task started; it still tells the queue."""
        running_key = task.key
        if queue:
            task.queue = self.queues(queue)
        self._count("sent", task, "")
        task.key = running_key
        task.sent = sent
        if task.started is not None:
            ready = sent if eta is None or eta < sent else eta
            wait = max(task.started - ready, 0.0)
            key = self._key(task, task.host)
            self._observe(self.queue_wait, key, wait, self.settings.wait_buckets)

    def _arrive(self, event: dict[str, Any], now: float) -> tuple[_Task, Worker]:
        """Find, or start tracking, the task a worker's received or started event is about."""
        uuid = _uuid(event)
        host = self.hostnames(event.get("hostname"))
        worker = self._seen(host, now)
        task = self.tasks.get(uuid)
        if task is None:
            task = self._track(uuid, self.names(event.get("name")), self._queue_for(event, host))
        else:
            self._leave_step(task)
        task.host = host
        return task, worker

    def _on_received(self, event: dict[str, Any], now: float) -> None:
        task, worker = self._arrive(event, now)
        task.step = _RECEIVED
        task.received = _timestamp(event, now)
        eta = _eta(event.get("eta"))
        if eta is not None:
            task.eta = eta
        worker.reserved += 1
        self._count("received", task, task.host)

    def _on_started(self, event: dict[str, Any], now: float) -> None:
        task, worker = self._arrive(event, now)
        started = _timestamp(event, now)
        task.step = _STARTED
        task.started = started
        worker.busy += 1
        key = self._count("started", task, task.host)
        self.running.setdefault(key, {})[task.uuid] = started
        ready = task.eta
        if task.sent is not None:
            wait = started - (task.sent if ready is None or ready < task.sent else ready)
            self._observe(self.queue_wait, key, max(wait, 0.0), self.settings.wait_buckets)
        if task.received is not None:
            wait = started - (task.received if ready is None or ready < task.received else ready)
            self._observe(self.prefetch_wait, key, max(wait, 0.0), self.settings.wait_buckets)

    def _on_succeeded(self, event: dict[str, Any], now: float) -> None:
        task = self._finish(event, "task-succeeded", now)
        if task is None:
            return
        key = self._count("succeeded", task, task.host)
        runtime = _duration(event.get("runtime"))
        if runtime is None and task.started is not None:
            runtime = _duration(_timestamp(event, now) - task.started)
        if runtime is not None:
            self._observe(self.runtime, (*key, "succeeded"), runtime, self.settings.runtime_buckets)

    def _on_failed(self, event: dict[str, Any], now: float) -> None:
        task = self._finish(event, "task-failed", now)
        if task is None:
            return
        exc_class = exception_name(event.get("exception"), event.get("traceback"))
        key = self._count("failed", task, task.host, self.exceptions(exc_class))
        kind = TIMEOUT_KINDS.get(exc_class)
        if kind is not None:
            tkey = (*key, kind)
            self.timeouts[tkey] = self.timeouts.get(tkey, 0) + 1
        window = self.failure_windows.get(key)
        if window is None:
            window = self.failure_windows[key] = FailureWindow()
        window.add(now)
        if task.started is not None:
            runtime = _duration(_timestamp(event, now) - task.started)
            if runtime is not None:
                self._observe(
                    self.runtime, (*key, "failed"), runtime, self.settings.runtime_buckets
                )

    def _on_retried(self, event: dict[str, Any], now: float) -> None:
        task = self._requeue(event, now)
        exc_class = exception_name(event.get("exception"), event.get("traceback"))
        self._count("retried", task, task.host, self.exceptions(exc_class))

    def _on_revoked(self, event: dict[str, Any], now: float) -> None:
        task = self._finish(event, "task-revoked", now)
        if task is not None:
            self._count("revoked", task, task.host)

    def _on_rejected(self, event: dict[str, Any], now: float) -> None:
        if event.get("requeue") is True:
            task: _Task | None = self._requeue(event, now)
        else:
            task = self._finish(event, "task-rejected", now)
        if task is not None:
            self._count("rejected", task, task.host)

    def _on_cancelled(self, event: dict[str, Any], now: float) -> None:
        self._requeue(event, now)

    def _on_ignored(self, event: dict[str, Any], now: float) -> None:
        """A task that raised Ignore (the in-worker exporter's): retired, counted nowhere."""
        self._finish(event, "task-ignored", now)

    # -- worker events ------------------------------------------------------------------------

    def _on_worker_online(self, event: dict[str, Any], now: float) -> None:
        host = self.hostnames(event.get("hostname"))
        self._release_tasks_of(host)
        self._heartbeat(self._seen(host, now, revive=True), event, now)

    def _on_worker_heartbeat(self, event: dict[str, Any], now: float) -> None:
        host = self.hostnames(event.get("hostname"))
        self._heartbeat(self._seen(host, now, revive=True), event, now)

    def _on_worker_offline(self, event: dict[str, Any], now: float) -> None:
        host = self.hostnames(event.get("hostname"))
        worker = self._seen(host, now)
        worker.online = False
        worker.offline_since = now
        self._release_tasks_of(host)

    def _heartbeat(self, worker: Worker, event: dict[str, Any], now: float) -> None:
        worker.last_heartbeat = now
        freq = event.get("freq")
        if isinstance(freq, (int, float)) and 0 < freq < 3600:
            worker.freq = float(freq)
        active = event.get("active")
        if isinstance(active, int) and active >= 0:
            worker.active = active
        processed = event.get("processed")
        if isinstance(processed, int) and processed >= 0:
            worker.processed = processed
        loadavg = event.get("loadavg")
        if (
            isinstance(loadavg, (list, tuple))
            and len(loadavg) == 3
            and all(isinstance(v, (int, float)) and abs(v) < 1e12 for v in loadavg)
        ):
            worker.loadavg = (float(loadavg[0]), float(loadavg[1]), float(loadavg[2]))
        for attr in ("sw_ident", "sw_ver", "sw_sys"):
            value = event.get(attr)
            if isinstance(value, str):
                setattr(worker, attr, clean(value))

    # -- bookkeeping ----------------------------------------------------------------------------

    def _seen(self, host: str, now: float, revive: bool = False) -> Worker:
        """Note an event from a worker; only its own online or heartbeat events undo an offline.

        A worker in warm shutdown sends worker-offline before the task events of its last tasks.
        """
        worker = self.workers.get(host)
        if worker is None:
            worker = self.workers[host] = Worker(now)
        elif worker.online or revive:
            worker.last_seen = now
            worker.online = True
            worker.offline_since = None
        return worker

    def _queue_for(self, event: dict[str, Any], host: str) -> str:
        """The queue an event names (the in-worker exporter's do), else the worker's."""
        queue = event.get("queue")
        if isinstance(queue, str) and queue:
            return self.queues(queue)
        return self._queue_of(host)

    def _queue_of(self, host: str) -> str:
        queues = self.worker_queues.get(host)
        if queues is not None and len(queues) == 1:
            return self.queues(queues[0])
        return self.queues(self.settings.default_queue)

    def _key(self, task: _Task, host: str) -> LabelKey:
        """The task labels: name, queue and, with worker_label, the worker."""
        if self.settings.worker_label:
            return (task.name, task.queue, host)
        return (task.name, task.queue)

    def _count(self, kind: str, task: _Task, host: str, *extra: str) -> LabelKey:
        key = task.key = self._key(task, host)
        counter = self.counters[kind]
        ckey = (*key, *extra) if extra else key
        counter[ckey] = counter.get(ckey, 0) + 1
        return key

    def _observe(
        self,
        hists: dict[LabelKey, Histogram],
        key: LabelKey,
        value: float,
        bounds: tuple[float, ...],
    ) -> None:
        hist = hists.get(key)
        if hist is None:
            hist = hists[key] = Histogram(bounds)
        hist.observe(value)

    def _track(self, uuid: str, name: str, queue: str) -> _Task:
        task = _Task(uuid, name, queue)
        tasks = self.tasks
        tasks[uuid] = task
        if len(tasks) > self.settings.max_tracked_tasks:
            self._leave_step(tasks.pop(next(iter(tasks))))
            self.tasks_evicted += 1
        return task

    def _leave_step(self, task: _Task) -> None:
        """Undo what the task's current step adds to the worker and running gauges."""
        if task.step == _PENDING:
            return
        worker = self.workers.get(task.host)
        if task.step == _RECEIVED:
            if worker is not None and worker.reserved > 0:
                worker.reserved -= 1
        else:
            if worker is not None and worker.busy > 0:
                worker.busy -= 1
            running = self.running.get(task.key)
            if running is not None:
                running.pop(task.uuid, None)
        task.step = _PENDING

    def _finish(self, event: dict[str, Any], etype: str, now: float) -> _Task | None:
        """Retire a task on a final event; None when this event repeats one already counted."""
        uuid = _uuid(event)
        host = self.hostnames(event.get("hostname"))
        self._seen(host, now)
        task = self.tasks.pop(uuid, None)
        if task is None:
            done = self.finished.get(uuid)
            if done is not None:
                if etype in done[0]:
                    self.duplicates += 1
                    return None
                done[0].add(etype)
                return done[1]
            task = _Task(uuid, self.names(event.get("name")), self._queue_for(event, host))
        else:
            self._leave_step(task)
        task.host = host
        self._remember_finished(uuid, etype, task)
        return task

    def _remember_finished(self, uuid: str, etype: str, task: _Task) -> None:
        """Keep the last ``max_finished_tasks`` finished tasks, the oldest making way first."""
        ring, pos = self._finished_ring, self._finished_pos
        oldest = ring[pos]
        if oldest is not None:
            self.finished.pop(oldest, None)
        ring[pos] = uuid
        self._finished_pos = (pos + 1) % len(ring)
        self.finished[uuid] = ({etype}, task)

    def _requeue(self, event: dict[str, Any], now: float) -> _Task:
        """Put a task back to waiting (retried, requeued, cancelled): it keeps its labels.

        A retry publishes its new message (and task-sent) before task-retried, so the new
        task-sent or task-received may already be in: what came after the last start is kept.
        """
        uuid = _uuid(event)
        host = self.hostnames(event.get("hostname"))
        self._seen(host, now)
        task = self.tasks.get(uuid)
        if task is None:
            task = self._track(uuid, self.names(event.get("name")), self._queue_for(event, host))
            task.host = host
            return task
        last_start = task.started
        if last_start is None or task.received is None or task.received <= last_start:
            self._leave_step(task)
            task.received = None
            task.host = host
        if last_start is None or task.sent is None or task.sent <= last_start:
            task.sent = None
        if task.sent is None and task.received is None:
            task.eta = None
        task.started = None
        return task

    def _release_tasks_of(self, host: str) -> None:
        """Take a worker's tasks off its gauges when it leaves or restarts.

        The tasks stay tracked, so the final events a worker in warm shutdown sends after
        worker-offline still find their names; tasks that never finish age out of the table.
        """
        for task in self.tasks.values():
            if task.step and task.host == host:
                self._leave_step(task)
        worker = self.workers.get(host)
        if worker is not None:
            worker.busy = worker.reserved = 0

    # -- output ---------------------------------------------------------------------------------

    def worker_up(self, worker: Worker, now: float) -> bool:
        """Whether a worker counts as up at ``now``."""
        if not worker.online:
            return False
        timeout = self.settings.worker_timeout
        if timeout is None:
            timeout = 3 * worker.freq
        return now - worker.last_seen <= timeout

    def snapshot(self) -> Snapshot:
        """Copy the state for rendering; also purge workers down for longer than allowed."""
        with self.lock:
            now = self.clock()
            workers: dict[str, tuple[bool, Worker]] = {}
            purge = []
            for host, worker in self.workers.items():
                up = self.worker_up(worker, now)
                if not up:
                    if worker.offline_since is None:
                        worker.offline_since = worker.last_seen
                    if now - worker.offline_since >= self.settings.worker_purge_after:
                        purge.append(host)
                        continue
                workers[host] = (up, worker.copy())
            for host in purge:
                self._purge_worker(host)
            return Snapshot(
                now=now,
                task_labels=self.task_labels,
                counters={kind: c.copy() for kind, c in self.counters.items()},
                timeouts=self.timeouts.copy(),
                runtime={k: h.copy() for k, h in self.runtime.items()},
                queue_wait={k: h.copy() for k, h in self.queue_wait.items()},
                prefetch_wait={k: h.copy() for k, h in self.prefetch_wait.items()},
                failures_per_minute={k: w.total(now) for k, w in self.failure_windows.items()},
                active={
                    k: (len(r), min(r.values()) if r else 0.0) for k, r in self.running.items()
                },
                workers=workers,
                events=self.events.copy(),
                tracked_tasks=len(self.tasks),
                tasks_evicted=self.tasks_evicted,
                duplicates=self.duplicates,
                overflow={
                    "name": self.names.overflow,
                    "exception": self.exceptions.overflow,
                    "queue_name": self.queues.overflow,
                    "hostname": self.hostnames.overflow,
                },
                last_event=self.last_event,
                malformed=self.malformed.copy(),
            )

    def _purge_worker(self, host: str) -> None:
        self._release_tasks_of(host)
        del self.workers[host]
        self.worker_queues.pop(host, None)
        self.hostnames.forget(host)
        if self.settings.worker_label:
            self._drop_host_series(host)

    def _drop_host_series(self, host: str) -> None:
        """Remove the task series labelled with a purged worker, so the hostname cap bounds them."""
        tables: list[dict[LabelKey, Any]] = [
            *self.counters.values(), self.timeouts, self.runtime, self.queue_wait,
            self.prefetch_wait, self.failure_windows, self.running,
        ]  # fmt: skip
        for table in tables:
            for key in [k for k in table if k[2] == host]:
                del table[key]

    # -- for the broker and worker collectors ------------------------------------------------

    def set_worker_queues(self, host: str, queues: Iterable[str]) -> None:
        """Record the queues a worker consumes (used to attribute its tasks to a queue)."""
        with self.lock:
            self.worker_queues[host] = tuple(queues)

    def sent_timestamp(self, uuid: str) -> float | None:
        """When the task-sent of a task still waiting or running was sent, if it was seen."""
        with self.lock:
            task = self.tasks.get(uuid)
            return task.sent if task is not None else None

    def sent_queues(self) -> set[str]:
        """The queue names task-sent events have named."""
        with self.lock:
            return {key[1] for key in self.counters["sent"]}

    def heartbeat_summary(self) -> Mapping[str, int]:
        """Sum of ``active`` and ``processed`` over the workers, to tell if tasks run unseen."""
        with self.lock:
            return {
                "workers": len(self.workers),
                "active": sum(w.active for w in self.workers.values()),
                "processed": sum(w.processed for w in self.workers.values()),
                "task_events": sum(v for k, v in self.events.items() if k.startswith("task-")),
            }


def _uuid(event: dict[str, Any]) -> str:
    uuid = event.get("uuid")
    if isinstance(uuid, str) and 0 < len(uuid) <= MAX_UUID_LENGTH:
        return uuid
    raise ValueError("task event without a usable uuid")


def _timestamp(event: dict[str, Any], now: float) -> float:
    ts = event.get("timestamp")
    if type(ts) is float or (isinstance(ts, int) and not isinstance(ts, bool)):
        # A range check, not math.isfinite: it also rejects NaN and inf, and never overflows.
        return float(ts) if 0 < ts < 1e11 else now
    return now


def _duration(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok and 0 <= value < 1e7 else None


def _eta(value: Any) -> float | None:
    if not value or not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


__all__ = ["UNKNOWN", "ClusterState", "Settings", "Snapshot"]
