"""Celery worker processes on this machine and their figures, read with psutil.

A worker is a main process and its pool: the main's direct children (prefork).
:class:`ProcessTable` finds the workers and names each by its Celery node name
(:func:`node_name`); :class:`Refresher` refreshes it every ``--sample-interval`` to see pool
processes come and go; :func:`read_worker` reads one worker's CPU, memory, I/O, file
descriptors and threads by role (``main`` or ``pool``). The I/O of a process's reaped children
is in its own count, so the main's own share is the sum over its threads
(``/proc/PID/task/TID/io``). :mod:`.processes` renders the figures.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import psutil

from ..log import get_logger

log = get_logger(__name__)

ROLES = ("main", "pool")
#: The process title Celery sets when ``setproctitle`` is installed.
_TITLE = re.compile(r"\[celeryd: (?P<node>.+):(?P<proc>[A-Za-z]+(?:-\d+)?)\]")


def is_worker_command(argv: Sequence[str]) -> bool:
    """Whether a command line is a Celery worker's (``celery ... worker``, ``-m celery``)."""
    if argv and _TITLE.match(" ".join(argv)):
        return True
    for i, arg in enumerate(argv):
        name = os.path.basename(arg)
        if name in ("celery", "celery.exe") or (arg == "-m" and argv[i + 1 : i + 2] == ["celery"]):
            return "worker" in argv[i + 1 :]
    return False


def node_name(argv: Sequence[str], hostname: str | None = None) -> str:
    """The node name a worker with this command line runs as, as Celery would derive it.

    ``-n``/``--hostname`` after ``worker`` (with ``%h``, ``%n`` and ``%d`` expanded), else
    ``celery@`` and the machine's host name; a name without ``@`` gets ``celery@`` in front.
    """
    host = hostname or socket.gethostname()
    title = _TITLE.match(" ".join(argv))
    if title:
        return title.group("node")
    given = None
    rest = list(argv[argv.index("worker") + 1 :]) if "worker" in argv else list(argv)
    for i, arg in enumerate(rest):
        if arg in ("-n", "--hostname") and i + 1 < len(rest):
            given = rest[i + 1]
        elif arg.startswith("--hostname="):
            given = arg.split("=", 1)[1]
        elif arg.startswith("-n") and len(arg) > 2:
            given = arg[2:]
    if not given:
        return f"celery@{host}"
    short, _, domain = host.partition(".")
    expanded = re.sub(
        r"%([%hnd])",
        lambda m: {"%": "%", "h": host, "n": short, "d": domain}[m.group(1)],
        given,
    )
    name, sep, node_host = expanded.partition("@")
    return expanded if sep and name and node_host else f"celery@{node_host or name or host}"


@dataclass
class _Proc:
    """What the table knows of one process."""

    process: psutil.Process
    ppid: int
    #: Its command line is a Celery worker's (a main process, or a pool process forked from one).
    worker: bool
    #: It also matches ``--match`` (only main processes are held to it).
    matched: bool = True
    #: It has been seen as a pool process: never taken for a main, even once orphaned.
    pooled: bool = False


@dataclass
class Worker:
    """One worker's main process, its live pool processes and its pool replacements."""

    hostname: str
    main: psutil.Process
    pool: dict[int, psutil.Process] = field(default_factory=dict)
    restarts: int = 0
    #: Highest value served per (counter, role), to keep counters monotonic.
    highest: dict[tuple[str, str], float] = field(default_factory=dict)


class ProcessTable:
    """The Celery workers on this machine (or one given process) and their pool processes.

    With ``main_pid`` only that process is watched (the in-worker mode), with its children as
    the pool when ``pool_children`` (prefork; other pools' children are the tasks' own
    subprocesses). Otherwise every process whose command line is a Celery worker's, whose
    parent's is not, and that matches ``match`` is a main process; a main's direct children
    are its pool.
    """

    def __init__(
        self,
        match: re.Pattern[str] | None = None,
        main_pid: int | None = None,
        hostname: str | None = None,
        pids: Callable[[], Iterable[int]] = psutil.pids,
        pool_children: bool = True,
    ) -> None:
        self.match = match
        self.main_pid = main_pid
        self.hostname = hostname
        self.pids = pids
        self.pool_children = pool_children
        self.lock = threading.Lock()
        self.procs: dict[int, _Proc] = {}
        self.workers: dict[int, Worker] = {}
        self.errors: dict[str, int] = {}
        self._repeated: set[int] = set()

    def refresh(self) -> None:
        """Look for processes started and ended since the last refresh."""
        with self.lock:
            self._refresh()

    def _refresh(self) -> None:
        alive = set(self.pids())
        for pid in [p for p in self.procs if p not in alive]:
            del self.procs[pid]
        self._repeated &= alive
        for pid in alive - self.procs.keys():
            proc = self._inspect(pid)
            if proc is not None:
                self.procs[pid] = proc
        for pid in [p for p in self.workers if p not in self.procs]:
            log.info("worker_gone", hostname=self.workers[pid].hostname, pid=pid)
            del self.workers[pid]
        for pid, proc in self.procs.items():
            if pid not in self.workers and self._is_main(proc):
                self._add_worker(pid, proc)
        for worker in self.workers.values():
            pool = {}
            if self.pool_children:
                for pid, p in self.procs.items():
                    # On the sidecar, a child counts when it runs the worker's command (a forked
                    # pool process), not when it is a program that a solo worker's task ran.
                    if p.ppid == worker.main.pid and (p.worker or self.main_pid is not None):
                        p.pooled = True
                        pool[pid] = p.process
            worker.restarts += len(worker.pool.keys() - pool.keys())
            worker.pool = pool

    def _is_main(self, proc: _Proc) -> bool:
        if not (proc.worker and proc.matched) or proc.pooled:
            return False
        parent = self.procs.get(proc.ppid)
        return parent is None or not parent.worker

    def _add_worker(self, pid: int, proc: _Proc) -> None:
        try:
            argv = proc.process.cmdline()
        except psutil.NoSuchProcess:
            return
        except psutil.Error as exc:
            self.count_error(exc)
            return
        hostname = self.hostname or node_name(argv)
        if any(w.hostname == hostname for w in self.workers.values()):
            # Two mains with one node name (a restart overlapping a warm shutdown): this one
            # is tried again on each refresh, and watched once the other has gone.
            if pid not in self._repeated:
                self._repeated.add(pid)
                log.warning("worker_hostname_repeated", hostname=hostname, pid=pid)
                self._count("duplicate_hostname")
            return
        self.workers[pid] = Worker(hostname, proc.process)
        log.info("worker_found", hostname=hostname, pid=pid)

    def _inspect(self, pid: int) -> _Proc | None:
        try:
            process = psutil.Process(pid)
        except psutil.Error:
            return None
        try:
            ppid = process.ppid()
            if self.main_pid is not None:
                return _Proc(process, ppid, pid == self.main_pid)
            argv = process.cmdline()
        except psutil.NoSuchProcess:
            return None
        except psutil.Error as exc:
            # Kept as "not a worker", so that it is not read again on every refresh.
            self.count_error(exc)
            return _Proc(process, -1, False)
        matched = self.match is None or self.match.search(" ".join(argv)) is not None
        return _Proc(process, ppid, is_worker_command(argv), matched)

    def count_error(self, exc: psutil.Error) -> None:
        """Count a process that could not be read, by reason."""
        self._count("access_denied" if isinstance(exc, psutil.AccessDenied) else "other")

    def _count(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1


@dataclass
class _Reading:
    """One role's figures."""

    cpu: float = 0.0
    rss: float = 0.0
    read: float | None = 0.0
    write: float | None = 0.0
    fds: float | None = 0.0
    threads: float = 0.0


def _own_io(pid: int) -> tuple[int, int] | None:
    """Read and written bytes of a process's live threads, not counting reaped children."""
    read = write = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/io") as f:
                lines = f.readlines()
        except FileNotFoundError:
            continue  # a thread that ended since the listing
        except OSError:
            return None
        for line in lines:
            key, _, value = line.partition(":")
            if key == "read_bytes":
                read += int(value)
            elif key == "write_bytes":
                write += int(value)
    return read, write


def _add(reading: _Reading, process: psutil.Process) -> tuple[tuple[int, int] | None, float]:
    """Add one process's figures to ``reading``.

    Return its raw I/O counts (None when unreadable) and the CPU time of its reaped children.
    """
    with process.oneshot():
        cpu = process.cpu_times()
        reading.cpu += cpu.user + cpu.system
        reaped = getattr(cpu, "children_user", 0.0) + getattr(cpu, "children_system", 0.0)
        reading.rss += process.memory_info().rss
        reading.threads += process.num_threads()
        try:
            reading.fds = None if reading.fds is None else reading.fds + process.num_fds()
        except (psutil.AccessDenied, AttributeError):
            reading.fds = None
        try:
            io = process.io_counters()
        except (psutil.AccessDenied, AttributeError):
            return None, reaped
    return (io.read_bytes, io.write_bytes), reaped


def read_worker(worker: Worker) -> tuple[dict[str, _Reading], float]:
    """Read the main and pool figures of a worker; return them and the pool's largest RSS."""
    main, pool = _Reading(), _Reading()
    main_io, pool.cpu = _add(main, worker.main)
    largest = 0.0
    pool_io = [0, 0]
    pool_io_ok = True
    for child in list(worker.pool.values()):
        before = pool.rss
        try:
            io, reaped = _add(pool, child)
        except psutil.NoSuchProcess:
            continue
        pool.cpu += reaped  # the tasks' own subprocesses, once their pool process reaped them
        largest = max(largest, pool.rss - before)
        if io is None:
            pool_io_ok = False
        else:
            pool_io[0] += io[0]
            pool_io[1] += io[1]
    own = _own_io(worker.main.pid) if main_io is not None else None
    if main_io is None or own is None or not pool_io_ok:
        main.read = main.write = pool.read = pool.write = None
    else:
        # The main's count includes its reaped children: the pool's share is the rest.
        main.read, main.write = own
        pool.read = main_io[0] + pool_io[0] - own[0]
        pool.write = main_io[1] + pool_io[1] - own[1]
    return {"main": main, "pool": pool}, largest


class Refresher:
    """Refreshes a :class:`ProcessTable` every ``interval`` seconds on a daemon thread."""

    def __init__(self, table: ProcessTable, interval: float) -> None:
        self.table = table
        self.interval = interval
        self._thread: threading.Thread | None = None

    def start(self, stop: threading.Event) -> None:
        """Refresh once now, then on the interval until ``stop`` is set."""
        self.table.refresh()
        self._thread = threading.Thread(
            target=self._run, args=(stop,), name="process-table", daemon=True
        )
        self._thread.start()

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            try:
                self.table.refresh()
            except Exception:  # keep watching: one bad refresh must not end the thread
                log.exception("process_table_refresh_failed")

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the thread to end."""
        if self._thread is not None:
            self._thread.join(timeout)
