"""What the in-worker exporter's unit tests share: a stand-in app, task runs, a scrape."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest

from celery_exporter.worker import WorkerExporter
from tests.support.scrape import parse_metrics
from tests.support.signals import send_task_run

HOST = "w1@box"
QUEUE = "images"


class App:
    """Stands for the user's Celery app: only its identity matters."""


def run(name: str, task_id: str, outcome: str, exc: BaseException | None = None) -> None:
    """Send the signals a worker sends for one task run, from the queue ``images``."""
    send_task_run(name, task_id, outcome, exc, queue=QUEUE)


def samples(exp: WorkerExporter) -> dict[Any, float]:
    """What /metrics would serve now."""
    return parse_metrics(generate_latest(exp.registry).decode())
