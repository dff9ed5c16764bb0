"""The Celery app the beat tests run ``celery beat`` with, the exporter installed.

Reads ``CELERY_EXPORTER_TEST_BROKER`` (the broker URL, also redbeat's Redis),
``CELERY_EXPORTER_TEST_BEAT_PORT`` (where beat serves ``/metrics``; without it nothing is
installed) and
``CELERY_EXPORTER_TEST_BEAT_MAX_ENTRIES`` (the cap on entries, 500 unless set).
"""

from __future__ import annotations

import os
from datetime import timedelta

from celery import Celery

from celery_exporter.worker import install

BROKER_ENV = "CELERY_EXPORTER_TEST_BROKER"
PORT_ENV = "CELERY_EXPORTER_TEST_BEAT_PORT"
MAX_ENTRIES_ENV = "CELERY_EXPORTER_TEST_BEAT_MAX_ENTRIES"

#: Every entry runs every second.
INTERVAL = timedelta(seconds=1)
#: Entry names, and the task each sends.
EVERY_SECOND = "every-second"
BAD_OPTION = "bad-option"
LAST_ENTRY = "zz-last"
TASKS = {
    EVERY_SECOND: "beatapp.every_second",
    BAD_OPTION: "beatapp.bad_option",
    LAST_ENTRY: "beatapp.last",
}
#: The queue beat sends to (a Redis list named after it).
QUEUE = "beat-tests"

broker = os.environ.get(BROKER_ENV, "redis://127.0.0.1:1/0")
app = Celery("beatapp", broker=broker)
app.conf.update(
    task_default_queue=QUEUE,
    result_expires=None,
    broker_connection_retry_on_startup=True,
    redbeat_redis_url=broker,
    redbeat_key_prefix="beat-tests:",
    beat_schedule={
        EVERY_SECOND: {"task": TASKS[EVERY_SECOND], "schedule": INTERVAL},
        # An unknown serializer: every send raises before anything is published.
        BAD_OPTION: {
            "task": TASKS[BAD_OPTION],
            "schedule": INTERVAL,
            "options": {"serializer": "no-such-serializer"},
        },
        LAST_ENTRY: {"task": TASKS[LAST_ENTRY], "schedule": INTERVAL},
    },
)
if os.environ.get(PORT_ENV):  # in beat; the tests import this module for its names only
    install(
        app,
        port=int(os.environ[PORT_ENV]),
        host="127.0.0.1",
        beat_max_entries=int(os.environ.get(MAX_ENTRIES_ENV, "500")),
        beat_refresh_interval=0.2,
    )
