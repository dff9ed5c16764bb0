"""What heartbeats and task events say about each worker, and when a worker counts as up."""

from __future__ import annotations

from ..events.schema import WorkerEvent
from .labels import LabelCap

#: Heartbeat interval assumed until a worker's heartbeat says otherwise (Celery's default).
DEFAULT_FREQ = 2.0


class Worker:
    """What heartbeats and task events say about one worker."""

    __slots__ = (
        "active", "busy", "freq", "host", "last_heartbeat", "last_seen", "loadavg",
        "offline_since", "online", "processed", "reserved", "sw_ident", "sw_sys", "sw_ver",
    )  # fmt: skip

    def __init__(self, now: float, host: str = "") -> None:
        #: Its hostname, the label's one string object (see LabelCap).
        self.host = host
        self.online = True
        self.offline_since: float | None = None
        self.last_seen = now
        self.last_heartbeat: float | None = None
        self.freq = DEFAULT_FREQ
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

    def heartbeat(self, event: WorkerEvent, now: float) -> None:
        """Take what a worker-online or worker-heartbeat event tells."""
        self.last_heartbeat = now
        if (freq := event.freq) is not None:
            self.freq = freq
        if (active := event.active) is not None:
            self.active = active
        if (processed := event.processed) is not None:
            self.processed = processed
        if (loadavg := event.loadavg) is not None:
            self.loadavg = loadavg
        if (sw_ident := event.sw_ident) is not None:
            self.sw_ident = sw_ident
        if (sw_ver := event.sw_ver) is not None:
            self.sw_ver = sw_ver
        if (sw_sys := event.sw_sys) is not None:
            self.sw_sys = sw_sys


class WorkerTable:
    """Workers by hostname (capped), their liveness, and which have been down too long."""

    def __init__(self, max_workers: int, timeout: float | None, purge_after: float) -> None:
        self.hostnames = LabelCap(max_workers)
        self.timeout = timeout
        self.purge_after = purge_after
        self.workers: dict[str, Worker] = {}

    def seen(self, host: str, now: float, revive: bool = False) -> Worker:
        """Note an event from a worker; only its own online or heartbeat events undo an offline.

        A worker in warm shutdown sends worker-offline before the task events of its last tasks.
        """
        worker = self.workers.get(host)
        if worker is None:
            worker = self.workers[host] = Worker(now, host)
        elif worker.online or revive:
            worker.last_seen = now
            worker.online = True
            worker.offline_since = None
        return worker

    def offline(self, host: str, now: float) -> None:
        """Note a worker's announced shutdown."""
        worker = self.seen(host, now)
        worker.online = False
        worker.offline_since = now

    def is_up(self, worker: Worker, now: float) -> bool:
        """Whether a worker counts as up at ``now``."""
        if not worker.online:
            return False
        timeout = self.timeout if self.timeout is not None else 3 * worker.freq
        return now - worker.last_seen <= timeout

    def views(self, now: float) -> dict[str, tuple[bool, Worker]]:
        """Each worker, whether it is up, and a copy of it."""
        return {host: (self.is_up(w, now), w.copy()) for host, w in self.workers.items()}

    def expired(self, now: float) -> list[str]:
        """Workers down for ``purge_after`` or longer (down since first seen down)."""
        gone = []
        for host, worker in self.workers.items():
            if self.is_up(worker, now):
                continue
            if worker.offline_since is None:
                worker.offline_since = worker.last_seen
            if now - worker.offline_since >= self.purge_after:
                gone.append(host)
        return gone

    def remove(self, host: str) -> None:
        """Forget a worker and free its hostname's slot under the cap."""
        self.workers.pop(host, None)
        self.hostnames.forget(host)
