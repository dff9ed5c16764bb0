"""Changing the cluster on an operator's request: revoke a task, or send a finished one again.

:class:`Controller` revokes through Celery's broadcast (``app.control.revoke``) and sends a
task again with the name, positional and keyword arguments and queue the result backend
stored for it: workers store them when their app sets ``result_extended = True``. The task
events' argument reprs are never used: they are cut, and a repr is not the value.

Every call runs on a thread of its own (a daemon thread, at most :data:`MAX_CALLS` at once)
with a deadline (:data:`CALL_TIMEOUT`): a broker or backend that refuses answers
:class:`ControlError` 503 at once, one that hangs 504, and the HTTP thread never waits longer;
socket timeouts end the call itself soon after. Options read (through the daemon): ``--result-backend``;
the broker comes with the shared app (``--broker-url`` and its options).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..redact import mask_url

T = TypeVar("T")

#: The signals a terminate may send to the pool process running the task.
SIGNALS = ("SIGTERM", "SIGKILL")
#: Longest one call to the broker or the result backend may take, in seconds.
CALL_TIMEOUT = 10.0
#: Most calls under way at once; one more is refused (503) rather than queued.
MAX_CALLS = 4
#: Seconds a connection to the broker or the result backend may take to open, and a read of
#: the result backend to answer.
BACKEND_SOCKET_TIMEOUT = 5.0
#: Seconds a broker read may go on after the call's deadline has answered 504.
SOCKET_GRACE = 2.0
#: How to have workers store what a retry needs.
RESULT_EXTENDED_HINT = (
    "set result_extended = True and a result_backend in the Celery app's configuration, so "
    "that workers store each task's name, arguments and queue, and give the exporter that "
    "backend with --result-backend"
)
#: Backend states of a finished task that may be sent again.
RETRYABLE_STATES = frozenset({"FAILURE", "REVOKED", "REJECTED"})


class ControlError(Exception):
    """The broker or the result backend refused or did not answer; ``status`` is 503 or 504."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class StoredCall:
    """What the result backend holds about one task: its state and, if extended, the call."""

    task_id: str
    state: str
    name: str | None
    args: list[Any] | None
    kwargs: dict[str, Any] | None
    queue: str | None

    @property
    def complete(self) -> bool:
        """Whether it holds the name and the arguments (``result_extended``)."""
        return self.name is not None and self.args is not None and self.kwargs is not None


class Controller:
    """Revokes tasks and sends finished ones again, each call within :data:`CALL_TIMEOUT`."""

    def __init__(self, app: Any, result_backend: str | None, timeout: float = CALL_TIMEOUT) -> None:
        self.app = app
        self.timeout = timeout
        # Only this controller sends tasks with the shared app: have them announce themselves.
        app.conf.task_send_sent_event = True
        app.conf.redis_socket_timeout = BACKEND_SOCKET_TIMEOUT
        app.conf.redis_socket_connect_timeout = BACKEND_SOCKET_TIMEOUT
        self.backend: Any = None
        self.backend_error: str | None = None
        if result_backend is not None:
            try:  # built here, on the main thread, like the app (Celery's lazy imports)
                from celery.app.backends import by_url

                cls, url = by_url(result_backend, app.loader)
                self.backend = cls(app=app, url=url)
            except Exception as exc:  # a missing driver, a URL the backend refuses
                self.backend_error = f"--result-backend cannot be used: {_error(exc)}"
        self._slots = threading.BoundedSemaphore(MAX_CALLS)
        # Celery's lazy parts the calls use, made here on the main thread, not first on theirs.
        app.control  # noqa: B018
        app.amqp  # noqa: B018

    @property
    def can_retry(self) -> bool:
        """Whether a result backend was given (one that cannot be used answers 503 on reads)."""
        return self.backend is not None or self.backend_error is not None

    def revoke(self, task_id: str, terminate: bool, signal: str) -> None:
        """Broadcast a revoke of ``task_id`` (terminating its process with ``signal``)."""
        if signal not in SIGNALS:
            raise ValueError(f"signal must be one of {', '.join(SIGNALS)}")
        self._call("revoke broadcast to the broker", self._revoke, task_id, terminate, signal)

    def stored_call(self, task_id: str) -> StoredCall:
        """What the result backend holds about ``task_id`` (state PENDING when nothing)."""
        if self.backend is None:
            raise ControlError(503, self.backend_error or "no --result-backend is given")
        return self._call("read from the result backend", self._read, task_id)

    def send_again(self, call: StoredCall) -> str:
        """Send a new task with the stored call's name, arguments and queue; its id."""
        return self._call("send to the broker", self._send, call)

    # -- on the calls' threads ------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a thread of its own, waited for until the deadline."""
        if not self._slots.acquire(blocking=False):
            raise ControlError(503, f"{what}: {MAX_CALLS} calls are already under way")
        done = threading.Event()
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["value"] = fn(*args)
            except Exception as exc:
                outcome["error"] = exc
            finally:
                self._slots.release()
                done.set()

        threading.Thread(target=run, name="control", daemon=True).start()
        if not done.wait(self.timeout):
            raise ControlError(504, f"{what}: no answer within {self.timeout:g} s")
        if "error" in outcome:
            raise ControlError(503, f"{what} failed: {_error(outcome['error'])}")
        value: T = outcome["value"]
        return value

    def _connection(self) -> Any:
        # The socket gives up a little after the deadline, so a silent broker is always told
        # as one (504) rather than as a failed call, even when the machine is slow.
        read_timeout = self.timeout + SOCKET_GRACE
        options = {"socket_connect_timeout": BACKEND_SOCKET_TIMEOUT, "socket_timeout": read_timeout,
                   **dict(self.app.conf.broker_transport_options or {})}  # fmt: skip
        conn = self.app.connection_for_write(transport_options=options)
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=self.timeout)
        return conn

    def _revoke(self, task_id: str, terminate: bool, signal: str) -> None:
        with self._connection() as conn:
            self.app.control.revoke(task_id, connection=conn, terminate=terminate, signal=signal)

    def _read(self, task_id: str) -> StoredCall:
        meta = self.backend.get_task_meta(task_id, cache=False)
        args, kwargs = meta.get("args"), meta.get("kwargs")
        return StoredCall(
            task_id=task_id,
            state=str(meta.get("status") or "PENDING"),
            name=meta.get("name") if isinstance(meta.get("name"), str) else None,
            args=list(args) if isinstance(args, list | tuple) else None,
            kwargs=dict(kwargs) if isinstance(kwargs, dict) else None,
            queue=meta.get("queue") if isinstance(meta.get("queue"), str) else None,
        )

    def _send(self, call: StoredCall) -> str:
        with self._connection() as conn:
            result = self.app.send_task(
                call.name, args=call.args, kwargs=call.kwargs, queue=call.queue,
                connection=conn, retry=False,
            )  # fmt: skip
        return str(result.id)


def _error(exc: BaseException) -> str:
    """An exception as one line of text without passwords, cut to a readable length."""
    text = mask_url(f"{type(exc).__name__}: {exc}").replace("\n", " ")
    return text if len(text) <= 300 else text[:297] + "..."
