"""A Celery client of the test app: sends its tasks, revokes them, holds a worker's queue."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from celery import Celery

from tests.support.processes import WorkerProcess
from tests.support.waiting import wait_for


class Client:
    """Sends tasks of the test app to one broker, with task-sent events, and revokes them."""

    def __init__(self, broker_url: str) -> None:
        self.app = Celery("itest-client", broker=broker_url, set_as_current=False)
        self.app.conf.update(task_send_sent_event=True, task_ignore_result=True)
        self.quiet_app = Celery("itest-quiet", broker=broker_url, set_as_current=False)
        self.quiet_app.conf.update(task_send_sent_event=False, task_ignore_result=True)

    def send(self, task: Any, **options: Any) -> str:
        """Send ``task`` (a task of :mod:`taskapp`, or its name); return the task id."""
        name = task if isinstance(task, str) else task.name
        return str(self.app.send_task(name, **options).id)

    def send_quietly(self, name: str, **options: Any) -> str:
        """Send a task without its task-sent event; return the task id."""
        return str(self.quiet_app.send_task(name, **options).id)

    def publish_task_sent(
        self, task_id: str, name: str, sent_at: float, queue: str = "celery"
    ) -> None:
        """Publish, late, the task-sent event a client sends for a task (the same fields)."""
        with self.app.connection_for_write() as conn:
            dispatcher = self.app.events.Dispatcher(conn, enabled=True)
            dispatcher.send(
                "task-sent",
                uuid=task_id,
                root_id=task_id,
                parent_id=None,
                name=name,
                args="()",
                kwargs="{}",
                retries=0,
                eta=None,
                expires=None,
                queue=queue,
                exchange="",
                routing_key=queue,
                timestamp=sent_at,
            )
            dispatcher.close()

    def revoke(self, task_id: str, nodename: str, timeout: float = 30.0) -> list[Any]:
        """Revoke a task at worker ``nodename``; return once it replied (so it knows)."""
        with self.app.connection_for_write() as conn:
            replies: list[Any] = self.app.control.revoke(
                task_id,
                destination=[nodename],
                reply=True,
                limit=1,
                timeout=timeout,
                connection=conn,
            )
        return replies

    @contextlib.contextmanager
    def held(self, worker: WorkerProcess, queue: str = "celery") -> Iterator[None]:
        """Keep ``worker`` from consuming ``queue`` inside the block.

        A client publishes task-sent just after the task message, so a quick worker can start
        the task before its task-sent is out. Tasks sent inside the block wait in the queue
        until every task-sent is published, which makes the order of events deterministic.
        """
        self._control(worker, "cancel_consumer", queue)
        # The worker answers before it acts (call_soon): had it not stopped consuming yet, the
        # check below would see the queue still consumed and the cancel would come after it.
        wait_for(
            lambda: queue not in self.consumed_queues(worker),
            60, 0.5, f"{worker.nodename} to stop consuming {queue}",
        )  # fmt: skip
        try:
            yield
        finally:
            # Likewise for add_consumer: make sure it consumes again.
            def consuming() -> bool:
                if queue in self.consumed_queues(worker):
                    return True
                self._control(worker, "add_consumer", queue)
                return False

            wait_for(consuming, 60, 0.5, f"{worker.nodename} to consume {queue} again")

    def consumed_queues(self, worker: WorkerProcess) -> set[str]:
        """The queues ``worker`` consumes, as it answers ``active_queues``."""
        with self.app.connection_for_write() as conn:
            inspect = self.app.control.inspect(
                destination=[worker.nodename], timeout=30, connection=conn, limit=1
            )
            replies = inspect.active_queues() or {}
        assert replies, f"{worker.nodename} did not answer active_queues"
        return {q["name"] for queues in replies.values() for q in queues}

    def _control(self, worker: WorkerProcess, command: str, *args: Any) -> list[Any]:
        """Call a control command on ``worker`` and return its replies (raise if none)."""
        # A fresh connection each time: a pooled one may be stale after a broker restart.
        with self.app.connection_for_write() as conn:
            replies: list[Any] = getattr(self.app.control, command)(
                *args,
                connection=conn,
                destination=[worker.nodename],
                reply=True,
                limit=1,
                timeout=30,
            )
        assert replies, f"{worker.nodename} did not answer {command}"
        return replies

    def close(self) -> None:
        """Close the client's connections."""
        self.app.close()
        self.quiet_app.close()
