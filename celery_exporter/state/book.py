"""Where each task is in its life, and what that adds to the worker and running gauges.

:class:`TaskBook` finds or tracks the task an event is about, counts it under its labels, and
undoes what a task's current step adds to the gauges when it moves on. The handlers
(:mod:`.handlers`) build on it; the caller holds the state's lock.
"""

from __future__ import annotations

from collections.abc import Callable

from ..events.schema import TaskEvent
from .labels import LabelCap
from .series import LabelKey, TaskSeries
from .settings import Settings
from .tasks import PENDING, RECEIVED, STARTED, Task, TaskTable
from .worker_queues import WorkerQueues
from .workers import Worker, WorkerTable


def _ignore(etype: str, where: str) -> None:
    """The default of ``on_error``: nothing."""


class TaskBook:
    """The task, worker and series tables, and the steps a task goes through."""

    def __init__(
        self,
        settings: Settings,
        tasks: TaskTable,
        workers: WorkerTable,
        series: TaskSeries,
        worker_queues: WorkerQueues,
        on_error: Callable[[str, str], None] | None = None,
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
        self._default_queue = settings.default_queue
        # The dicts and sets the hot path reads directly (each owner replaces none of them).
        self._inflight = tasks.tasks
        self._limit = tasks.limit
        self._workers = workers.workers
        self._hosts_seen = workers.hostnames.seen
        self._names_seen = self.names.seen
        self._queues_seen = self.queues.seen
        self._counters = counters = series.counters
        self._running = series.running
        self._received = counters["received"]
        self._started = counters["started"]
        self._succeeded = counters["succeeded"]
        self._runtime, self._runtime_buckets = series.runtime, series.runtime_buckets
        self._queue_wait, self._wait_buckets = series.queue_wait, series.wait_buckets
        self._prefetch_wait = series.prefetch_wait
        #: Whether the task view is on, and its arguments shown.
        self.view = settings.web_task_api
        self.view_args = settings.web_show_task_args
        #: Told (event type, "task_view") when the view's part of an event raises.
        self.on_error = on_error or _ignore

    def _worker(self, event: TaskEvent, now: float) -> Worker:
        """The event's worker (its ``host`` is the capped name), noted as seen now.

        Every task event finds its worker here. The table is looked up by the event's hostname
        first, which finds an admitted worker that is up in one step; a new, capped or offline
        one goes through :meth:`WorkerTable.seen`.
        """
        worker = self._workers.get(event.hostname)
        if worker is not None and worker.online:
            worker.last_seen = now
            worker.offline_since = None
            return worker
        host = self._hosts_seen.get(event.hostname) or self.workers.hostnames(event.hostname)
        return self.workers.seen(host, now)

    def _new_task(self, event: TaskEvent, host: str) -> Task:
        """Track a task first seen in a worker's event, under its capped name and its queue."""
        name = self._names_seen.get(event.name) or self.names(event.name)
        return self._track(event.uuid, name, self._queue_for(event, host))

    def _queue_for(self, event: TaskEvent, host: str) -> str:
        """The queue an event names (the in-worker exporter's do), else its worker's only one."""
        queue = event.queue
        if not queue:
            queues = self.worker_queues.of(host)
            queue = queues[0] if queues is not None and len(queues) == 1 else self._default_queue
        return self._queues_seen.get(queue) or self.queues(queue)

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
        """Start tracking a task; past ``--max-tracked-tasks`` the oldest in flight makes way."""
        inflight = self._inflight
        task = inflight[uuid] = Task(uuid, name, queue)
        if len(inflight) > self._limit:
            self.leave_step(self.tasks.evict())
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
        worker = self._worker(event, now)
        host = worker.host
        task = self._inflight.pop(event.uuid, None)
        if task is None:
            return self._finish_untracked(event, host)
        if task.step == STARTED and task.host is host:
            # leave_step, inline for the usual case (started and finished on the same worker).
            if worker.busy > 0:
                worker.busy -= 1
            running = self._running.get(task.key)
            if running is not None:
                running.pop(task.uuid, None)
            task.step = PENDING
        elif task.step:
            self.leave_step(task)
        task.host = host
        self.tasks.remember(task.uuid, event.type, task)
        return task

    def _finish_untracked(self, event: TaskEvent, host: str) -> Task | None:
        """A final event of a task not in flight: finished already, or never seen."""
        repeat, task = self.tasks.finished_task(event.uuid, event.type)
        if repeat:
            return None
        if task is not None:
            return task
        task = Task(event.uuid, self.names(event.name), self._queue_for(event, host))
        task.host = host
        self.tasks.remember(event.uuid, event.type, task)
        return task

    def _requeue(self, event: TaskEvent, now: float) -> Task:
        """Put a task back to waiting (retried, requeued, cancelled): it keeps its labels.

        A retry publishes its new message (and task-sent) before task-retried, so the new
        task-sent or task-received may already be in: what came after the last start is kept.
        """
        host = self._worker(event, now).host
        task = self.tasks.get(event.uuid)
        if task is None:
            task = self._track(event.uuid, self.names(event.name), self._queue_for(event, host))
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
