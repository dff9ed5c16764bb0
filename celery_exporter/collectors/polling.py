"""Polling in the background on an interval with a timeout, keeping the last result.

A :class:`Poller` calls a collector's ``poll()`` every ``interval`` seconds on a thread of its
own and keeps what it returned; scrapes only read that. A poll that raises, or that has not
returned after ``timeout`` seconds, counts as a failure: the previous data is dropped (stale
queue depths must not drive an autoscaler) and a poll still stuck is not started again until it
returns. A collector that polls is a :class:`~.base.Background` one: its ``status()`` is
:func:`status_of` its poller, which :class:`~.base.Collectors` renders as
``celery_exporter_collector_success``, ``_duration_seconds`` and
``_last_success_timestamp_seconds``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..log import get_logger
from ..redact import mask_url
from .base import Status

log = get_logger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class PollStatus:
    """The outcome of the last poll: success, duration, last success time and error text."""

    success: bool
    duration: float
    last_success: float | None
    error: str | None


class Poller(Generic[T]):
    """Runs ``poll`` every ``interval`` seconds with a ``timeout``; keeps its last result."""

    def __init__(
        self,
        name: str,
        poll: Callable[[], T],
        interval: float,
        timeout: float | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.poll = poll
        self.interval = interval
        self.timeout = interval if timeout is None else timeout
        self.clock = clock
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._data: T | None = None
        self._status: PollStatus | None = None
        self._stuck: threading.Thread | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def data(self) -> T | None:
        """What the last poll returned; None before the first success or after a failure."""
        with self._lock:
            return self._data

    @property
    def status(self) -> PollStatus | None:
        """The outcome of the last poll; None before the first has ended."""
        with self._lock:
            return self._status

    def latest(self) -> tuple[T | None, float | None]:
        """:attr:`data` and the time of the last success, read together."""
        with self._lock:
            return self._data, None if self._status is None else self._status.last_success

    def run_once(self) -> bool:
        """Poll once on a helper thread, waiting at most ``timeout``; return whether it worked."""
        if self._stuck is not None and self._stuck.is_alive():
            self._record(None, 0.0, "the previous poll has not returned yet")
            return False
        self._stuck = None
        box: dict[str, object] = {}

        def call() -> None:
            try:
                box["data"] = self.poll()
            except Exception as exc:
                box["error"] = mask_url(f"{type(exc).__name__}: {exc}")

        started = self.monotonic()
        thread = threading.Thread(target=call, name=f"{self.name}-poll", daemon=True)
        thread.start()
        deadline = time.monotonic() + self.timeout
        while thread.is_alive() and not self._stop.is_set():
            thread.join(min(0.1, max(0.0, deadline - time.monotonic())))
            if time.monotonic() >= deadline:
                break
        duration = self.monotonic() - started
        if thread.is_alive() and self._stop.is_set():
            return False  # shutting down: leave the poll to die with the process
        if thread.is_alive():
            self._stuck = thread
            self._record(None, duration, f"poll timed out after {self.timeout:g}s")
            return False
        if "error" in box:
            self._record(None, duration, str(box["error"]))
            return False
        self._record(box.get("data"), duration, None)  # type: ignore[arg-type]
        return True

    def _record(self, data: T | None, duration: float, error: str | None) -> None:
        with self._lock:
            previous = self._status
            ok = error is None
            last = self.clock() if ok else (previous.last_success if previous else None)
            self._data = data if ok else None
            self._status = PollStatus(ok, duration, last, error)
        if not ok and (previous is None or previous.success or previous.error != error):
            log.warning("collector_failed", collector=self.name, error=error)
        elif ok and previous is not None and not previous.success:
            log.info("collector_recovered", collector=self.name)

    def run(self, stop: threading.Event) -> None:
        """Poll every ``interval`` seconds until ``stop`` is set."""
        self._stop = stop
        while not stop.is_set():
            started = self.monotonic()
            self.run_once()
            stop.wait(max(0.0, self.interval - (self.monotonic() - started)))

    def start(self, stop: threading.Event) -> None:
        """Run :meth:`run` on a daemon thread."""
        self._thread = threading.Thread(
            target=self.run, args=(stop,), name=f"{self.name}-collector", daemon=True
        )
        self._thread.start()

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the thread to end."""
        if self._thread is not None:
            self._thread.join(timeout)


def status_of(poller: Poller[T]) -> Status | None:
    """The poller's last outcome as a collector status; None before its first poll ended."""
    polled = poller.status
    if polled is None:
        return None
    return Status(polled.success, polled.duration, polled.last_success)
