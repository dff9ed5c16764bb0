"""Pool processes to main process: an unnamed Unix datagram socket pair, made before the pool.

The main process keeps the :class:`Inbox` and receives on a thread of its own; each forked pool
process inherits the other end and sends through an :class:`Outbox`. No other process can write
to the pair, and there is no file to clean up.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable
from typing import Any

import orjson

#: Longest a pool process waits to hand one event to the main process before dropping it.
SEND_TIMEOUT = 1.0
_MAX_DATAGRAM = 65536


class Inbox:
    """The main process's end of an unnamed socket pair that pool processes inherit.

    A thread of the main process receives and applies what the pool processes send; it keeps
    receiving whatever the worker's own event loop is doing (reconnecting to the broker,
    shutting down).
    """

    def __init__(self, apply: Callable[[dict[str, Any]], None]) -> None:
        self.apply = apply
        self.sock, self.send_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.malformed = 0
        #: Held while datagrams are taken off the socket and applied, so that what the main
        #: process applies itself after :meth:`drain` comes after everything already sent.
        self._lock = threading.Lock()

    def start(self) -> None:
        """Receive on a daemon thread."""
        thread = threading.Thread(target=self._run, name="worker-exporter-inbox", daemon=True)
        thread.start()

    def _run(self) -> None:
        while True:
            try:
                select.select([self.sock], [], [])
                if not self.drain():
                    return  # shut down
            except (OSError, ValueError):
                return  # closed

    def drain(self) -> bool:
        """Apply every datagram waiting on the socket, now; False once the socket is shut down.

        The main process calls this before applying an event of its own: a pool process's
        ``task-started`` is sent before the task's result goes back to the main process, so it
        is on the socket by the time the main process reports the task's end (Celery reports
        a rejected task's failure from the main process).
        """
        with self._lock:
            while True:
                try:
                    data = self.sock.recv(_MAX_DATAGRAM, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    return True
                except OSError:
                    return False  # closed
                if not data:
                    return False
                try:
                    event = orjson.loads(data)
                    if not isinstance(event, dict):
                        raise TypeError("not an object")
                except (orjson.JSONDecodeError, TypeError):
                    self.malformed += 1
                    continue
                self.apply(event)

    def outbox(self) -> Outbox:
        """In a forked pool process: drop the receiving end, send from the other."""
        self.sock.close()
        return Outbox(self.send_end)

    def close(self) -> None:
        """Stop receiving (the thread wakes and ends) and close both ends."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.send_end.close()


class Outbox:
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
