"""How each task event moves a task through its life and into the series.

:class:`TaskHandlers` holds one method per task event type. Each receives a checked
:class:`~celery_exporter.events.decode.TaskEvent` and the time it arrived; the caller
(:class:`~celery_exporter.state.cluster.ClusterState`) holds the lock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..events.decode import TASK_EVENTS
from ..events.fields import unix_time
from ..events.schema import TaskEvent, TaskWithError, TaskWithEta
from .book import TaskBook
from .labels import OVERFLOW
from .records import call_detail, detail_for_update, lineage, run_time
from .series import observe
from .tasks import RECEIVED, STARTED, Task

#: Exception classes that mark a task killed by its time limit, and the ``kind`` they count as.
TIMEOUT_KINDS = {"SoftTimeLimitExceeded": "soft", "TimeLimitExceeded": "hard"}


class TaskHandlers(TaskBook):
    """The task event handlers: what each event type counts, over :class:`TaskBook`."""

    def by_type(self) -> dict[str, Callable[[Any, float], Task | None]]:
        """The handler of each task event type: the method named after it (``task-sent``: sent)."""
        return {etype: getattr(self, etype.removeprefix("task-")) for etype in TASK_EVENTS}

    # -- events ---------------------------------------------------------------------------------

    def sent(self, event: TaskWithEta, now: float) -> Task:
        """A producer published the task (possibly after a short task already finished)."""
        task = self.tasks.get(event.uuid)
        sent = event.timestamp or now
        queue = event.queue
        eta = unix_time(event.eta) if event.eta is not None else None
        if task is None:
            done = self.tasks.was_finished(event.uuid)
            if done is not None:
                # Producers publish task-sent after the task itself: a short task can finish
                # first. Count it under the labels the task ran with, and do not track it again.
                self._late_sent(done, sent, eta, queue)
                return done
            task = self._track(
                event.uuid,
                self.names(event.name),
                self.queues(queue or self.settings.default_queue),
            )
        elif task.step == STARTED and task.started is not None and sent <= task.started:
            self._late_sent(task, sent, eta, queue)
            return task
        elif queue:
            task.queue = self.queues(queue)
        task.sent = sent
        task.eta = eta
        running_key = task.key
        self._count("sent", task, "")
        if task.step == STARTED:
            # A retry's new message, sent while the current run still holds the running gauge.
            task.key = running_key
        return task

    # received, started and succeeded are nearly every event: they find the worker and the
    # task, and count, inline; the rarer cases (a new worker, a task moving between workers, a
    # final event of a task not in flight) go through TaskBook.

    def received(self, event: TaskWithEta, now: float) -> Task:
        """A worker took the task off its queue."""
        worker = self._worker(event, now)
        host = worker.host
        task = self._inflight.get(event.uuid)
        if task is None:
            task = self._new_task(event, host)
        elif task.step:
            self.leave_step(task)
        task.host = host
        task.step = RECEIVED
        task.received = event.timestamp or now
        if event.eta is not None:
            task.eta = unix_time(event.eta)
        worker.reserved += 1
        key = task.key = (
            (task.name, task.queue, host) if self.with_host else (task.name, task.queue)
        )
        counts = self._received
        counts[key] = counts.get(key, 0) + 1
        if self.view:
            try:
                task.history = task.history + ("task-received", task.received, host)  # noqa: RUF005
                if task.finished is None:
                    task.state = "received"
                lineage(task, event)
                if event.parent_id is not None or self.view_args or task.name is OVERFLOW:
                    call_detail(task, event, self.view_args)
                if host is OVERFLOW:
                    detail_for_update(task).worker = event.hostname
            except Exception:
                self.on_error("task-received", "task_view")
        return task

    def started(self, event: TaskWithEta, now: float) -> Task:
        """A worker started running the task."""
        worker = self._worker(event, now)
        host = worker.host
        uuid = event.uuid
        task = self._inflight.get(uuid)
        if task is None:
            task = self._new_task(event, host)
        elif task.step == RECEIVED and task.host is host:
            # leave_step, for the usual case: received and started by the same worker.
            if worker.reserved > 0:
                worker.reserved -= 1
        elif task.step:
            self.leave_step(task)
        task.host = host
        started = event.timestamp or now
        task.step = STARTED
        task.started = started
        worker.busy += 1
        key = task.key = (
            (task.name, task.queue, host) if self.with_host else (task.name, task.queue)
        )
        counts = self._started
        counts[key] = counts.get(key, 0) + 1
        running = self._running.get(key)
        if running is None:
            running = self._running[key] = {}
        # The task's own id object, not the event's: the table keeps it while the task runs.
        running[task.uuid] = started
        ready = task.eta
        if task.sent is not None:
            wait = started - (task.sent if ready is None or ready < task.sent else ready)
            observe(self._queue_wait, key, wait if wait > 0.0 else 0.0, self._wait_buckets)
        if task.received is not None:
            wait = started - (task.received if ready is None or ready < task.received else ready)
            observe(self._prefetch_wait, key, wait if wait > 0.0 else 0.0, self._wait_buckets)
        if self.view:
            try:
                task.history = task.history + ("task-started", started, host)  # noqa: RUF005
                if task.finished is None:
                    task.state = "started"
            except Exception:
                self.on_error("task-started", "task_view")
        return task

    def succeeded(self, event: TaskEvent, now: float) -> Task | None:
        """The task returned."""
        task = self._finish(event, now)
        if task is None:
            return None
        key = task.key = (
            (task.name, task.queue, task.host) if self.with_host else (task.name, task.queue)
        )
        counts = self._succeeded
        counts[key] = counts.get(key, 0) + 1
        when = event.timestamp or now
        runtime = event.runtime
        if runtime is None and task.started is not None:
            runtime = _duration(when - task.started)
        if runtime is not None:
            observe(self._runtime, key + ("succeeded",), runtime, self._runtime_buckets)  # noqa: RUF005
        if self.view:
            try:
                task.history = task.history + ("task-succeeded", when, task.host)  # noqa: RUF005
                if task.finished is None:
                    task.state = "succeeded"
                    task.finished = when
                    task.runtime = event.runtime if event.runtime is not None else run_time(task)
            except Exception:
                self.on_error("task-succeeded", "task_view")
        return task

    def failed(self, event: TaskWithError, now: float) -> Task | None:
        """The task raised."""
        task = self._finish(event, now)
        if task is None:
            return None
        exception = self.exceptions(event.exception)
        key = self._count("failed", task, task.host, exception)
        kind = TIMEOUT_KINDS.get(event.exception)
        series = self.series
        if kind is not None:
            series.count_timeout((*key, kind))
        series.fail(key, now)
        if task.started is not None:
            runtime = _duration((event.timestamp or now) - task.started)
            if runtime is not None:
                series.observe_runtime((*key, "failed"), runtime)
        return task

    def retried(self, event: TaskWithError, now: float) -> Task:
        """The task asked to run again later."""
        task = self._requeue(event, now)
        self._count("retried", task, task.host, self.exceptions(event.exception))
        return task

    def revoked(self, event: TaskEvent, now: float) -> Task | None:
        """The task was revoked (and maybe terminated)."""
        task = self._finish(event, now)
        if task is not None:
            self._count("revoked", task, task.host)
        return task

    def rejected(self, event: TaskEvent, now: float) -> Task | None:
        """A worker rejected the task: back to its queue, or dropped."""
        task = self._requeue(event, now) if event.requeue else self._finish(event, now)
        if task is not None:
            self._count("rejected", task, task.host)
        return task

    def cancelled(self, event: TaskEvent, now: float) -> Task:
        """A worker gave the task back (e.g. its connection was lost)."""
        return self._requeue(event, now)

    def ignored(self, event: TaskEvent, now: float) -> Task | None:
        """A task that raised Ignore (the in-worker exporter's): retired, counted nowhere."""
        return self._finish(event, now)

    def progress(self, event: TaskEvent, now: float) -> Task | None:
        """A task's own report of how far it is: counts nothing, only finds the task."""
        return self.tasks.find(event.uuid)


def _duration(value: float) -> float | None:
    return value if 0 <= value < 1e7 else None
