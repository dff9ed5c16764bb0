"""The exporter, worker and client the integration tests run: one way to start and stop each.

The session fixtures in ``tests/integration/conftest.py`` and the modules that need a broker
of their own build their exporter, workers and client with these context managers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.support.client import Client
from tests.support.expect import wait_worker_up
from tests.support.processes import ExporterProcess, WorkerProcess


@contextlib.contextmanager
def running_exporter(
    broker_url: str, logdir: Path, extra_args: Sequence[str] = (), ready: bool = True
) -> Iterator[ExporterProcess]:
    """An exporter following ``broker_url``, consuming events unless ``ready`` is False."""
    proc = ExporterProcess(broker_url, logdir, extra_args)
    try:
        proc.start()
        if ready:
            proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@contextlib.contextmanager
def running_worker(
    worker: WorkerProcess, watched_by: ExporterProcess | None = None
) -> Iterator[WorkerProcess]:
    """Start ``worker``, wait until ``watched_by`` reports it up; warm-stop it at the end."""
    try:
        worker.start()
        if watched_by is not None:
            wait_worker_up(watched_by, worker)
        yield worker
    finally:
        worker.stop()


@contextlib.contextmanager
def connected_client(broker_url: str) -> Iterator[Client]:
    """A client of the test app on ``broker_url``, closed at the end."""
    client = Client(broker_url)
    try:
        yield client
    finally:
        client.close()
