"""Scripted Celery signals for the in-worker exporter's unit tests, docs check and benchmark.

Stand-ins for what Celery passes with each signal, and :func:`send_task_run`, which sends
through Celery's real signals what a worker sends for one run of a task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class SignalPool:
    """What the in-worker exporter reads of a worker's pool."""

    limit: int = 2


@dataclass(eq=False)
class SignalWorker:
    """What the in-worker exporter reads of ``worker_init``'s sender."""

    app: Any
    hostname: str = "w1@box"
    pool: SignalPool = field(default_factory=SignalPool)
    autoscaler: Any = None


@dataclass(eq=False)
class SignalContext:
    """A task's ``request`` in the process that runs it."""

    id: str
    delivery_info: dict[str, Any] = field(default_factory=lambda: {"routing_key": "celery"})


@dataclass(eq=False)
class SignalTask:
    """The task a run's signals name."""

    name: str
    request: SignalContext


@dataclass(eq=False)
class SignalRequest:
    """``task_received``'s request."""

    id: str
    name: str
    delivery_info: dict[str, Any] = field(default_factory=lambda: {"routing_key": "celery"})
    eta: str | None = None


#: The state ``task_postrun`` reports for each outcome of :func:`send_task_run`.
_POSTRUN_STATE = {
    "success": "SUCCESS",
    "failure": "FAILURE",
    "retry": "RETRY",
    "reject": "REJECTED",
}


def send_task_run(
    name: str,
    task_id: str,
    outcome: str = "success",
    exc: BaseException | None = None,
    queue: str = "celery",
) -> None:
    """Send, through Celery's real signals, what a worker sends for one run of a task.

    ``outcome`` is ``success``, ``failure`` (with ``exc``), ``retry`` (``exc`` is the Retry) or
    ``reject`` (``exc`` is the Reject).
    """
    from celery import signals

    info = {"routing_key": queue}
    task = SignalTask(name, SignalContext(task_id, dict(info)))
    signals.task_received.send(sender=None, request=SignalRequest(task_id, name, dict(info)))
    signals.task_prerun.send(sender=task, task_id=task_id, task=task, args=(), kwargs={})
    if outcome == "success":
        signals.task_success.send(sender=task, result=None)
    elif outcome == "failure":
        signals.task_failure.send(sender=task, task_id=task_id, exception=exc)
    elif outcome == "retry":
        signals.task_retry.send(sender=task, request=task.request, reason=exc)
    retval = exc if outcome == "reject" else None
    signals.task_postrun.send(
        sender=task, task_id=task_id, task=task, state=_POSTRUN_STATE[outcome], retval=retval
    )
