"""Celery's signals turned into the events the worker's main process applies.

The task signals (``task_received``, ``task_prerun``, ``task_success``, ``task_failure``,
``task_retry``, ``task_revoked``, ``task_postrun``) become the ``task-*`` events of Celery's
event stream; ``task_unknown``, ``task_rejected`` and ``task_internal_error`` become ``_error``
events; ``worker_init``, ``worker_ready``, ``worker_process_init``, ``worker_process_shutdown``
and ``worker_shutdown`` drive the exporter's lifecycle; other parts connect theirs through
:meth:`SignalReceivers.attach` (beat's ``beat_init``, :mod:`.beat`). A receiver never raises
into Celery: an
exception (a bug of ours) is logged and counted in
``celery_exporter_internal_errors_total{where="worker_signal"}``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..log import get_logger

if TYPE_CHECKING:
    from .exporter import WorkerExporter

log = get_logger(__name__)

#: The task events the receivers make, the only ones the main process applies to its state.
TASK_EVENT_TYPES = frozenset(
    {
        "task-received", "task-started", "task-succeeded", "task-failed", "task-retried",
        "task-revoked", "task-rejected", "task-ignored",
    }
)  # fmt: skip
#: Errors counted in ``celery_worker_task_errors_total``, by the signal that reports them.
ERROR_KINDS = {
    "task_unknown": "unknown_task",
    "task_rejected": "invalid_message",
    "task_internal_error": "internal_error",
}
#: The ``where`` label of an exception raised while turning a signal into an event.
WHERE = "worker_signal"


class SignalReceivers:
    """The receivers of one exporter's Celery signals, and the task start times they keep."""

    def __init__(self, exporter: WorkerExporter) -> None:
        self.exporter = exporter
        self._started: dict[str, float] = {}
        self._connected: list[tuple[Any, Callable[..., None]]] = []

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
            guarded = self._guard(name, receiver)
            signal.connect(guarded, weak=False)
            self._connected.append((signal, guarded))

    def attach(self, name: str, receiver: Callable[..., None]) -> None:
        """Connect one more receiver (another part's, e.g. beat's), guarded and disconnected too."""
        from celery import signals

        signal = getattr(signals, name)
        guarded = self._guard(name, receiver)
        signal.connect(guarded, weak=False)
        self._connected.append((signal, guarded))

    def disconnect(self) -> None:
        """Disconnect every receiver."""
        for signal, receiver in self._connected:
            signal.disconnect(receiver)
        self._connected.clear()

    def _guard(self, name: str, receiver: Callable[..., None]) -> Callable[..., None]:
        """``receiver``, logging and counting what it raises instead of raising it into Celery."""

        def guarded(**kwargs: Any) -> None:
            try:
                receiver(**kwargs)
            except Exception:
                log.exception("worker_signal_failed", signal=name)
                self.exporter.internal_error()

        return guarded

    # -- lifecycle ----------------------------------------------------------------------------

    def _on_worker_init(self, sender: Any = None, **_: Any) -> None:
        exp = self.exporter
        if getattr(sender, "app", None) is not exp.app or exp.role != "idle":
            return
        exp.worker = sender
        exp.start(str(sender.hostname))

    def _on_worker_ready(self, sender: Any = None, **_: Any) -> None:
        if self.exporter.role == "main":
            self.exporter.consumer = sender

    def _on_process_init(self, **_: Any) -> None:
        exp = self.exporter
        # The solo pool sends worker_process_init in the main process itself.
        if exp.role != "main" or exp.inbox is None or os.getpid() == exp.main_pid:
            return
        exp.enter_pool()
        self._started.clear()

    def _on_process_shutdown(self, **_: Any) -> None:
        if self.exporter.role == "pool" and self.exporter.outbox is not None:
            self.exporter.outbox.flush()

    def _on_worker_shutdown(self, **_: Any) -> None:
        if self.exporter.role == "main":
            self.exporter.stop()

    # -- tasks --------------------------------------------------------------------------------

    def _on_received(self, request: Any = None, **_: Any) -> None:
        if self.exporter.role == "idle" or request is None:
            return
        self.exporter.emit(
            {
                "type": "task-received",
                "uuid": request.id,
                "name": request.name,
                "queue": _queue(getattr(request, "delivery_info", None)),
                "eta": request.eta,
            }
        )

    def _on_prerun(self, task_id: str | None = None, task: Any = None, **_: Any) -> None:
        if self.exporter.role == "idle" or task_id is None:
            return
        self._started[task_id] = time.monotonic()
        request = getattr(task, "request", None)
        self.exporter.emit(
            {
                "type": "task-started",
                "uuid": task_id,
                "name": getattr(task, "name", None),
                "queue": _queue(getattr(request, "delivery_info", None)),
            }
        )

    def _on_success(self, sender: Any = None, **_: Any) -> None:
        task_id = _request_id(sender)
        if self.exporter.role == "idle" or task_id is None:
            return
        began = self._started.get(task_id)
        runtime = time.monotonic() - began if began is not None else None
        self.exporter.emit({"type": "task-succeeded", "uuid": task_id, "runtime": runtime})

    def _on_failure(
        self, sender: Any = None, task_id: str | None = None, exception: Any = None, **_: Any
    ) -> None:
        if self.exporter.role == "idle" or task_id is None:
            return
        name = getattr(sender, "name", None)
        self.exporter.emit(
            {"type": "task-failed", "uuid": task_id, "name": name, "exception": _class(exception)}
        )

    def _on_retry(self, request: Any = None, reason: Any = None, **_: Any) -> None:
        if self.exporter.role == "idle" or request is None:
            return
        cause = getattr(reason, "exc", None) or reason
        self.exporter.emit({"type": "task-retried", "uuid": request.id, "exception": _class(cause)})

    def _on_revoked(self, sender: Any = None, request: Any = None, **_: Any) -> None:
        task_id = getattr(request, "id", None)
        if self.exporter.role == "idle" or task_id is None:
            return
        name = getattr(sender, "name", None)
        self.exporter.emit({"type": "task-revoked", "uuid": task_id, "name": name})

    def _on_postrun(
        self, task_id: str | None = None, state: str | None = None, retval: Any = None, **_: Any
    ) -> None:
        if self.exporter.role == "idle" or task_id is None:
            return
        self._started.pop(task_id, None)
        if state == "REJECTED":
            requeue = bool(getattr(retval, "requeue", False))
            self.exporter.emit({"type": "task-rejected", "uuid": task_id, "requeue": requeue})
        elif state == "IGNORED":
            # No final signal follows Ignore (raised by Task.replace, too): retire the task.
            self.exporter.emit({"type": "task-ignored", "uuid": task_id})

    def _on_error(self, signal_name: str) -> Callable[..., None]:
        kind = ERROR_KINDS[signal_name]

        def receiver(**_: Any) -> None:
            if self.exporter.role != "idle":
                self.exporter.emit({"type": "_error", "kind": kind})

        return receiver


def _queue(delivery_info: Any) -> str | None:
    """The queue a message came from, as its routing key tells it."""
    if isinstance(delivery_info, dict):
        key = delivery_info.get("routing_key")
        if isinstance(key, str) and key:
            return key
    return None


def _request_id(task: Any) -> str | None:
    """The id of the task run a task object's request is for, if it is a string."""
    request = getattr(task, "request", None)
    task_id = getattr(request, "id", None)
    return task_id if isinstance(task_id, str) else None


def _class(exception: Any) -> str:
    """The class name of an exception (``Reject``, ``TimeLimitExceeded``, ...)."""
    if exception is None:
        return "unknown"
    return type(exception).__name__
