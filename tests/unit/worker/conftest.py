"""The started in-worker exporter most of these tests drive."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import signals

from celery_exporter.worker import WorkerExporter, install
from tests.support.launchers import free_port
from tests.support.signals import SignalPool, SignalWorker
from tests.support.worker import HOST, App


@pytest.fixture
def exporter() -> Iterator[WorkerExporter]:
    """An exporter installed for an app, started by a worker_init of that app."""
    app = App()
    exp = install(app, port=free_port(), host="127.0.0.1", resources=False)
    signals.worker_init.send(sender=SignalWorker(app, HOST, SignalPool(4)))
    try:
        yield exp
    finally:
        exp.stop()
        exp.disconnect()
