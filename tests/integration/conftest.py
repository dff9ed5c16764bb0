"""Fixtures for the integration tests: a private Redis, a real Celery worker and the exporter.

They are built from :mod:`tests.support.stack`; the helpers the tests use live in
:mod:`tests.support`, never here.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.client import Client
from tests.support.launchers import REDIS_MISSING, RabbitMQServer, RedisServer
from tests.support.processes import ExporterProcess, WorkerProcess
from tests.support.stack import connected_client, running_exporter, running_worker


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip the integration tests when there is no redis-server to run."""
    if shutil.which("redis-server") is None:
        skip = pytest.mark.skip(reason=REDIS_MISSING)
        for item in items:
            if "integration" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def logdir() -> Iterator[Path]:
    """A directory for worker and exporter output, removed after the session."""
    path = Path(tempfile.mkdtemp(prefix="celery-exporter-it-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server shared by the session (never the system one on 6379)."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def exporter(redis_server: RedisServer, logdir: Path) -> Iterator[ExporterProcess]:
    """The exporter following the shared Redis, ready before any task is sent."""
    with running_exporter(redis_server.url(), logdir) as proc:
        yield proc


@pytest.fixture(scope="session")
def worker(
    redis_server: RedisServer, exporter: ExporterProcess, logdir: Path
) -> Iterator[WorkerProcess]:
    """The shared worker on the default ``celery`` queue, up in the exporter's view."""
    with running_worker(WorkerProcess(redis_server.url(), "main", logdir), exporter) as proc:
        yield proc


@pytest.fixture(scope="session")
def client(redis_server: RedisServer) -> Iterator[Client]:
    """Sends tasks to the shared Redis."""
    with connected_client(redis_server.url()) as c:
        yield c


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitMQServer]:
    """One private RabbitMQ node with the management plugin for the session."""
    with RabbitMQServer() as server:
        yield server
