"""CPU, memory, I/O, file descriptors and threads of Celery worker processes, read with psutil.

The ``resources`` collector. A worker is a main process and its pool: the main's direct
children (prefork), found by :mod:`.process_table`. Figures are per worker ``hostname`` (its
Celery node name) and ``role`` (``main`` or ``pool``), never per pid, so series survive pool
processes being replaced. Counters stay monotonic across replacements:

- CPU: the pool's is the main's reaped-children time plus the live children's own time.
- I/O: the kernel adds a reaped child's I/O to its parent's count, so the worker's total is the
  main's count plus the live children's; the main's own share is the sum over its threads
  (``/proc/PID/task/TID/io``), the pool's is the rest.

A reading can dip for an instant (a child that ended and is not yet reaped); each counter is
held at its highest value for as long as the main process lives.

The :class:`~.process_table.ProcessTable` is refreshed on an interval (``--sample-interval``)
to see pool processes come and go for ``celery_worker_pool_process_restarts_total``; a pool
process that starts and ends between two refreshes is not counted. The other figures are read
at scrape time; when a worker cannot be read, the collector's
``celery_exporter_collector_success`` reads 0.
"""

from __future__ import annotations

from collections.abc import Iterator

import psutil
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from .base import Family, describe
from .process_table import ROLES, ProcessTable, Worker, read_worker

_ROLE = ("hostname", "role")
CPU = Family(
    "celery_worker_process_cpu_seconds",
    "counter",
    "CPU time (user and system) of the worker's processes, by role.",
    _ROLE,
)
RSS = Family(
    "celery_worker_process_resident_memory_bytes",
    "gauge",
    "Resident memory of the worker's processes, summed by role.",
    _ROLE,
)
IO_READ = Family(
    "celery_worker_process_io_read_bytes",
    "counter",
    "Bytes the worker's processes read from storage, by role.",
    _ROLE,
)
IO_WRITE = Family(
    "celery_worker_process_io_write_bytes",
    "counter",
    "Bytes the worker's processes wrote to storage, by role.",
    _ROLE,
)
OPEN_FDS = Family(
    "celery_worker_process_open_fds",
    "gauge",
    "Open file descriptors of the worker's processes, summed by role.",
    _ROLE,
)
THREADS = Family(
    "celery_worker_process_threads",
    "gauge",
    "Threads of the worker's processes, summed by role.",
    _ROLE,
)
_HOST = ("hostname",)
POOL_PROCESSES = Family(
    "celery_worker_pool_processes", "gauge", "Live pool processes of the worker.", _HOST
)
POOL_LARGEST = Family(
    "celery_worker_pool_process_max_resident_memory_bytes",
    "gauge",
    "Resident memory of the worker's largest pool process.",
    _HOST,
)
POOL_RESTARTS = Family(
    "celery_worker_pool_process_restarts",
    "counter",
    "Pool processes of the worker that ended (replaced, e.g. by --max-tasks-per-child).",
    _HOST,
)
WORKERS_FOUND = Family(
    "celery_exporter_workers_found",
    "gauge",
    "Celery worker processes the resource collector watches.",
)
READ_ERRORS = Family(
    "celery_exporter_process_read_errors",
    "counter",
    "Processes the resource collector could not read, by reason.",
    ("reason",),
)
FAMILIES = (
    CPU,
    RSS,
    IO_READ,
    IO_WRITE,
    OPEN_FDS,
    THREADS,
    POOL_PROCESSES,
    POOL_LARGEST,
    POOL_RESTARTS,
    WORKERS_FOUND,
    READ_ERRORS,
)


class ResourceCollector(Collector):
    """The ``celery_worker_process_*`` and ``celery_worker_pool_process*`` families."""

    name = "resources"

    def __init__(self, table: ProcessTable) -> None:
        self.table = table

    def describe(self) -> Iterator[Metric]:
        """Yield the resource families without samples."""
        return describe(FAMILIES)

    def collect(self) -> Iterator[Metric]:
        """Yield every worker's figures, read now."""
        return iter(self.collect_partial()[0])

    def collect_partial(self) -> tuple[list[Metric], bool]:
        """Every worker's figures, read now, and whether every worker could be read."""
        cpu, read, write, restarts = (
            CPU.counter(),
            IO_READ.counter(),
            IO_WRITE.counter(),
            POOL_RESTARTS.counter(),
        )
        rss, fds, threads = RSS.gauge(), OPEN_FDS.gauge(), THREADS.gauge()
        processes, largest = POOL_PROCESSES.gauge(), POOL_LARGEST.gauge()
        ok = True
        with self.table.lock:
            workers = sorted(self.table.workers.values(), key=lambda w: w.hostname)
            for worker in workers:
                try:
                    readings, biggest = read_worker(worker)
                except psutil.NoSuchProcess:
                    continue  # ended since the last refresh, which will drop it
                except psutil.Error as exc:
                    ok = False
                    self.table.count_error(exc)
                    continue
                name = worker.hostname
                for role in ROLES:
                    r = readings[role]
                    key = [name, role]
                    cpu.add_metric(key, self._monotonic(worker, "cpu", role, r.cpu))
                    rss.add_metric(key, r.rss)
                    threads.add_metric(key, r.threads)
                    if r.fds is not None:
                        fds.add_metric(key, r.fds)
                    if r.read is not None and r.write is not None:
                        read.add_metric(key, self._monotonic(worker, "read", role, r.read))
                        write.add_metric(key, self._monotonic(worker, "write", role, r.write))
                processes.add_metric([name], len(worker.pool))
                if worker.pool:
                    largest.add_metric([name], biggest)
                restarts.add_metric([name], worker.restarts)
            errors = dict(self.table.errors)
        failed = READ_ERRORS.counter()
        for reason, count in sorted(errors.items()):
            failed.add_metric([reason], count)
        families: list[Metric] = [cpu, rss, read, write, fds, threads, processes, largest, restarts]
        families += [WORKERS_FOUND.value(len(workers)), failed]
        return families, ok

    @staticmethod
    def _monotonic(worker: Worker, counter: str, role: str, value: float) -> float:
        key = (counter, role)
        best = max(worker.highest.get(key, 0.0), value)
        worker.highest[key] = best
        return best
