"""The demo's Celery app: a handful of tasks that succeed, fail, retry and time out.

The worker imports this module as ``-A tasks`` from this folder; the broker comes from
``CELERY_BROKER_URL``, which ``run.py`` sets to its private redis-server.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

app = Celery("demo")
app.conf.update(
    broker_url=os.environ.get("CELERY_BROKER_URL"),
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
    task_send_sent_event=True,  # task-sent events, so the exporter measures queue waits
    worker_send_task_events=True,
    worker_hijack_root_logger=False,
)


class PaymentDeclined(Exception):
    """The card issuer said no."""


class UpstreamUnavailable(ConnectionError):
    """A service the task depends on did not answer."""


@app.task(name="demo.resize_image")
def resize_image(width: int) -> int:
    """Always succeeds, in 20 ms to 0.8 s."""
    time.sleep(random.uniform(0.02, 0.8))
    return width // 2


@app.task(name="demo.charge_card")
def charge_card(amount: int) -> int:
    """Fails one time in three with PaymentDeclined, otherwise succeeds quickly."""
    time.sleep(random.uniform(0.05, 0.3))
    if random.random() < 0.33:
        raise PaymentDeclined(f"card declined for {amount}")
    return amount


@app.task(name="demo.fetch_feed")
def fetch_feed(url: str) -> int:
    """Fails one time in four, with UpstreamUnavailable or a KeyError."""
    time.sleep(random.uniform(0.1, 0.5))
    roll = random.random()
    if roll < 0.15:
        raise UpstreamUnavailable(f"{url} did not answer")
    if roll < 0.25:
        raise KeyError("items")
    return len(url)


@app.task(name="demo.sync_inventory", bind=True, max_retries=5)
def sync_inventory(self: Any, sku: str) -> str:
    """Retries once or twice (after 0.5 s) before it succeeds."""
    time.sleep(random.uniform(0.05, 0.2))
    if self.request.retries < random.choice((1, 2)):
        raise self.retry(exc=UpstreamUnavailable("inventory service busy"), countdown=0.5)
    return sku


@app.task(name="demo.build_report", soft_time_limit=1.0, time_limit=2.0)
def build_report(pages: int) -> int:
    """Usually 0.2-0.8 s; now and then too slow, hitting the soft or (rarely) the hard limit."""
    roll = random.random()
    seconds = random.uniform(0.2, 0.8) if roll > 0.3 else 3.0
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        if roll < 0.1:  # ignores the soft limit: the pool kills it at the hard limit
            time.sleep(3.0)
        raise
    return pages
