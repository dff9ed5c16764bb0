"""The compose stack's sample Celery app: a few tasks that succeed, fail, retry and time out.

The worker runs it as ``celery --app sampleapp worker -E``; ``python -m sampleapp.producer``
sends it tasks. The broker comes from ``CELERY_BROKER_URL``.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

app = Celery("sampleapp")
app.conf.update(
    broker_url=os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0"),
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
    task_send_sent_event=True,  # task-sent events: queue names and queue wait times
    worker_send_task_events=True,
    task_routes={"sample.build_report": {"queue": "reports"}},
)


class PaymentDeclined(Exception):
    """The card issuer said no."""


class UpstreamUnavailable(ConnectionError):
    """A service the task depends on did not answer."""


@app.task(name="sample.resize_image")
def resize_image(width: int) -> int:
    """Succeed in 20 ms to 0.6 s."""
    time.sleep(random.uniform(0.02, 0.6))
    return width // 2


@app.task(name="sample.charge_card")
def charge_card(amount: int) -> int:
    """Fail one time in four with PaymentDeclined, otherwise succeed quickly."""
    time.sleep(random.uniform(0.05, 0.3))
    if random.random() < 0.25:
        raise PaymentDeclined(f"card declined for {amount}")
    return amount


@app.task(name="sample.sync_inventory", bind=True, max_retries=3)
def sync_inventory(self: Any, sku: str) -> str:
    """Retry once (after 1 s) half of the time, then succeed."""
    time.sleep(random.uniform(0.05, 0.2))
    if self.request.retries == 0 and random.random() < 0.5:
        raise self.retry(exc=UpstreamUnavailable("inventory service busy"), countdown=1)
    return sku


@app.task(name="sample.build_report", soft_time_limit=2.0, time_limit=4.0)
def build_report(pages: int) -> int:
    """Take 0.5-1.5 s; one time in five hit the soft time limit, now and then the hard one."""
    roll = random.random()
    try:
        time.sleep(random.uniform(0.5, 1.5) if roll > 0.2 else 5.0)
    except SoftTimeLimitExceeded:
        if roll < 0.05:  # ignores the soft limit: the pool kills it at the hard limit
            time.sleep(5.0)
        raise
    return pages
