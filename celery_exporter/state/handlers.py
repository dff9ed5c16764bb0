"""How each task event moves a task through its life and into the series.

:class:`TaskHandlers` holds one method per task event type. Each receives a checked
:class:`~celery_exporter.events.decode.TaskEvent` and the time it arrived; the caller
(:class:`~celery_exporter.state.cluster.ClusterState`) holds the lock.
"""

from __future__ import annotations

from collections.abc import Callable

from ..events.decode import TaskEvent
from .labels import LabelCap
from .series import LabelKey, TaskSeries
from .settings import Settings
from .tasks import PENDING, RECEIVED, STARTED, Task, TaskTable
from .worker_queues import WorkerQueues
from .workers import Worker, WorkerTable

#: Exception classes that mark a task killed by its time limit, and the ``kind`` they count as.
TIMEOUT_KINDS = {"SoftTimeLimitExceeded": "soft", "TimeLimitExceeded": "hard"}


class TaskHandlers:
    """The task event handlers, over the tables they update."""

    def __init__(
        self,
        settings: Settings,
        tasks: TaskTable,
        workers: WorkerTable,
        series: TaskSeries,
        worker_queues: WorkerQueues,
    ) -> None:
        self.settings = settings
        self.tasks = tasks
        self.workers = workers
        self.series = series
        self.worker_queues = worker_queues
        self.names = LabelCap(settings.max_task_names)
        self.exceptions = LabelCap(settings.max_exceptions)
        self.queues = LabelCap(settings.max_queues)
        self.with_host = settings.worker_label
        # The dicts and sets the hot path reads directly (each owner replaces none of them).
        self._inflight = tasks.tasks
        self._workers = workers.workers
        self._hosts_seen = workers.hostnames.seen
        self._names_seen = self.names.seen
        self._counters = series.counters
        self.table: dict[str, Callable[[TaskEvent, float], None]] = {
            "task-sent": self.sent,
            "task-received": self.received,
            "task-started": self.started,
            "task-succeeded": self.succeeded,
            "task-failed": self.failed,
            "task-retried": self.retried,
            "task-revoked": self.revoked,
            "task-rejected": self.rejected,
            "task-cancelled": self.cancelled,
            "task-ignored": self.ignored,
        }

    # -- events ---------------------------------------------------------------------------------

    def sent(self, event: TaskEvent, now: float) -> None:
        """A producer published the task (possibly after a short task already finished)."""
        task = self.tasks.get(event["uuid"])
        sent = event["timestamp"] or now
        queue = event.get("queue")
        if task is None:
            done = self.tasks.was_finished(event["uuid"])
            if done is not None:
                # Producers publish task-sent after the task itself: a short task can finish
                # first. Count it under the labels the task ran with, and do not track it again.
                self._late_sent(done, sent, event.get("eta"), queue)
                return
            task = self._track(
                event["uuid"],
                self.names(event["name"]),
                self.queues(queue or self.settings.default_queue),
            )
        elif task.step == STARTED and task.started is not None and sent <= task.started:
            self._late_sent(task, sent, event.get("eta"), queue)
            return
        elif queue:
            task.queue = self.queues(queue)
        task.sent = sent
        task.eta = event.get("eta")
        running_key = task.key
        self._count("sent", task, "")
        if task.step == STARTED:
            # A retry's new message, sent while the current run still holds the running gauge.
            task.key = running_key

    def received(self, event: TaskEvent, now: float) -> None:
        """A worker took the task off its queue."""
        task, worker = self._arrive(event, now)
        task.step = RECEIVED
        task.received = event["timestamp"] or now
        if event.get("eta") is not None:
            task.eta = event.get("eta")
        worker.reserved += 1
        self._count("received", task, task.host)

    def started(self, event: TaskEvent, now: float) -> None:
        """A worker started running the task."""
        task, worker = self._arrive(event, now)
        started = event["timestamp"] or now
        task.step = STARTED
        task.started = started
        worker.busy += 1
        key = self._count("started", task, task.host)
        series = self.series
        series.start(key, task.uuid, started)
        ready = task.eta
        if task.sent is not None:
            wait = started - (task.sent if ready is None or ready < task.sent else ready)
            series.observe_queue_wait(key, wait if wait > 0.0 else 0.0)
        if task.received is not None:
            wait = started - (task.received if ready is None or ready < task.received else ready)
            series.observe_prefetch_wait(key, wait if wait > 0.0 else 0.0)

    def succeeded(self, event: TaskEvent, now: float) -> None:
        """The task returned."""
        task = self._finish(event, now)
        if task is None:
            return
        key = self._count("succeeded", task, task.host)
        runtime = event["runtime"]
        if runtime is None and task.started is not None:
            runtime = _duration((event["timestamp"] or now) - task.started)
        if runtime is not None:
            self.series.observe_runtime((*key, "succeeded"), runtime)

    def failed(self, event: TaskEvent, now: float) -> None:
        """The task raised."""
        task = self._finish(event, now)
        if task is None:
            return
        exception = self.exceptions(event["exception"])
        key = self._count("failed", task, task.host, exception)
        kind = TIMEOUT_KINDS.get(event["exception"])
        series = self.series
        if kind is not None:
            series.count_timeout((*key, kind))
        series.fail(key, now)
        if task.started is not None:
            runtime = _duration((event["timestamp"] or now) - task.started)
            if runtime is not None:
                series.observe_runtime((*key, "failed"), runtime)

    def retried(self, event: TaskEvent, now: float) -> None:
        """The task asked to run again later."""
        task = self._requeue(event, now)
        self._count("retried", task, task.host, self.exceptions(event["exception"]))

    def revoked(self, event: TaskEvent, now: float) -> None:
        """The task was revoked (and maybe terminated)."""
        task = self._finish(event, now)
        if task is not None:
            self._count("revoked", task, task.host)

    def rejected(self, event: TaskEvent, now: float) -> None:
        """A worker rejected the task: back to its queue, or dropped."""
        task = self._requeue(event, now) if event["requeue"] else self._finish(event, now)
        if task is not None:
            self._count("rejected", task, task.host)

    def cancelled(self, event: TaskEvent, now: float) -> None:
        """A worker gave the task back (e.g. its connection was lost)."""
        self._requeue(event, now)

    def ignored(self, event: TaskEvent, now: float) -> None:
        """A task that raised Ignore (the in-worker exporter's): retired, counted nowhere."""
        self._finish(event, now)

    # -- bookkeeping ----------------------------------------------------------------------------

    def _late_sent(self, task: Task, sent: float, eta: float | None, queue: str | None) -> None:
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
            self.series.observe_queue_wait(self._key(task, task.host), wait)

    def _worker(self, event: TaskEvent, now: float) -> tuple[str, Worker]:
        """The event's worker, capped, noted as seen now (see :meth:`WorkerTable.seen`)."""
        host = event["hostname"]
        if host not in self._hosts_seen:
            host = self.workers.hostnames(host)
        worker = self._workers.get(host)
        if worker is not None and worker.online:
            worker.last_seen = now
            worker.offline_since = None
            return host, worker
        return host, self.workers.seen(host, now)

    def _arrive(self, event: TaskEvent, now: float) -> tuple[Task, Worker]:
        """Find, or start tracking, the task a worker's received or started event is about."""
        host, worker = self._worker(event, now)
        uuid = event["uuid"]
        task = self._inflight.get(uuid)
        if task is None:
            name = event["name"]
            if name not in self._names_seen:
                name = self.names(name)
            task = self._track(uuid, name, self._queue_for(event, host))
        elif task.step:
            self.leave_step(task)
        task.host = host
        return task, worker

    def _queue_for(self, event: TaskEvent, host: str) -> str:
        """The queue an event names (the in-worker exporter's do), else its worker's only one."""
        if event.get("queue"):
            return self.queues(event.get("queue"))
        queues = self.worker_queues.of(host)
        if queues is not None and len(queues) == 1:
            return self.queues(queues[0])
        return self.queues(self.settings.default_queue)

    def _key(self, task: Task, host: str) -> LabelKey:
        """The task labels: name, queue and, with worker_label, the worker."""
        if self.with_host:
            return (task.name, task.queue, host)
        return (task.name, task.queue)

    def _count(self, kind: str, task: Task, host: str, *extra: str) -> LabelKey:
        key = task.key = (
            (task.name, task.queue, host) if self.with_host else (task.name, task.queue)
        )
        counter = self._counters[kind]
        ckey = (*key, *extra) if extra else key
        counter[ckey] = counter.get(ckey, 0) + 1
        return key

    def _track(self, uuid: str, name: str, queue: str) -> Task:
        task, evicted = self.tasks.track(uuid, name, queue)
        if evicted is not None:
            self.leave_step(evicted)
        return task

    def leave_step(self, task: Task) -> None:
        """Undo what the task's current step adds to the worker and running gauges."""
        if task.step == PENDING:
            return
        worker = self.workers.workers.get(task.host)
        if task.step == RECEIVED:
            if worker is not None and worker.reserved > 0:
                worker.reserved -= 1
        else:
            if worker is not None and worker.busy > 0:
                worker.busy -= 1
            self.series.stop(task.key, task.uuid)
        task.step = PENDING

    def _finish(self, event: TaskEvent, now: float) -> Task | None:
        """Retire a task on a final event; None when this event repeats one already counted."""
        uuid = event["uuid"]
        host = self._worker(event, now)[0]
        task = self._inflight.pop(uuid, None)
        if task is None:
            repeat, task = self.tasks.finished_task(uuid, event["type"])
            if repeat:
                return None
            if task is not None:
                return task
            task = Task(uuid, self.names(event["name"]), self._queue_for(event, host))
        elif task.step:
            self.leave_step(task)
        task.host = host
        self.tasks.remember(uuid, event["type"], task)
        return task

    def _requeue(self, event: TaskEvent, now: float) -> Task:
        """Put a task back to waiting (retried, requeued, cancelled): it keeps its labels.

        A retry publishes its new message (and task-sent) before task-retried, so the new
        task-sent or task-received may already be in: what came after the last start is kept.
        """
        host = self.workers.hostnames(event["hostname"])
        self.workers.seen(host, now)
        task = self.tasks.get(event["uuid"])
        if task is None:
            task = self._track(
                event["uuid"], self.names(event["name"]), self._queue_for(event, host)
            )
            task.host = host
            return task
        last_start = task.started
        if last_start is None or task.received is None or task.received <= last_start:
            self.leave_step(task)
            task.received = None
            task.host = host
        if last_start is None or task.sent is None or task.sent <= last_start:
            task.sent = None
        if task.sent is None and task.received is None:
            task.eta = None
        task.started = None
        return task

    def release_tasks_of(self, host: str) -> None:
        """Take a worker's tasks off its gauges when it leaves or restarts.

        The tasks stay tracked, so the final events a worker in warm shutdown sends after
        worker-offline still find their names; tasks that never finish age out of the table.
        """
        for task in self.tasks.tasks.values():
            if task.step and task.host == host:
                self.leave_step(task)
        worker = self.workers.workers.get(host)
        if worker is not None:
            worker.busy = worker.reserved = 0


def _duration(value: float) -> float | None:
    return value if 0 <= value < 1e7 else None
