"""Celery beat for the compose stack: the sample app's periodic tasks, with the exporter on.

``celery --app=sampleapp.beat beat`` runs it. ``install()`` is called here, not in the app
module, so the worker keeps its resource sidecar and only beat serves metrics: on
``SAMPLEAPP_BEAT_HOST`` (0.0.0.0) port ``SAMPLEAPP_BEAT_PORT`` (9810), scraped as the job
``celery-beat``.
"""

from __future__ import annotations

import os
from datetime import timedelta

from celery.schedules import crontab

from celery_exporter.worker import install
from sampleapp import app

app.conf.beat_schedule = {
    "sync-inventory": {
        "task": "sample.sync_inventory",
        "schedule": timedelta(seconds=30),
        "args": ("SKU-42",),
    },
    "nightly-report": {
        "task": "sample.build_report",
        "schedule": crontab(hour=2, minute=0),
        "args": (10,),
    },
}
install(
    app,
    port=int(os.environ.get("SAMPLEAPP_BEAT_PORT", "9810")),
    host=os.environ.get("SAMPLEAPP_BEAT_HOST", "0.0.0.0"),
)
