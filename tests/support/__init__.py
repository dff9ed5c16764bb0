"""Helpers for the test suite, the benchmarks and the demo; nothing in the exporter imports them.

One module per concept; import from the modules:

* :mod:`.launchers`: private ``redis-server`` and ``rabbitmq-server``, ``free_port``, ``terminate``
* :mod:`.scrape`: reading ``/metrics`` into dicts (``Sample``, ``scrape``, ``value``, ``total``)
* :mod:`.waiting`: ``wait_for``; :mod:`.clock`: ``ManualClock``
* :mod:`.events`: Celery event factories and ``encode_envelope``
* :mod:`.signals`: scripted Celery signals for the in-worker exporter
* :mod:`.logs`: the registry of the started processes' logs, and their ends in failure reports
* :mod:`.processes`, :mod:`.client`, :mod:`.expect`, :mod:`.stack`: the exporter, workers and a
  client as the integration tests run them; :mod:`.taskapp` is the workers' Celery app
* :mod:`.workload`: the known workload several integration tests send
* :mod:`.beat`: a real ``celery beat`` with the exporter (:mod:`.beatapp` is its app), and what
  it queued
* :mod:`.brokers`: the broker collector tests' helpers
* :mod:`.sqs`: moto's SQS emulator on a loopback port (``MotoServer``) and the fake ``AWS_ENV``
* :mod:`.prometheus`, :mod:`.webhook`: a private Prometheus, Alertmanager and webhook receiver
* :mod:`.browser`: loading a loopback page in headless Chromium and reading its DOM
* :mod:`.taskview_scene`: the task view's unit-test scene: a state fed scripted events, the
  inspect and queue collectors after one poll, a server with the API and pages
* :mod:`.taskview_stack`: the task view's end-to-end stack (private Redis, exporter, worker),
  its known workload and JSON API helpers
* :mod:`.control`: task control's end-to-end stack (basic auth, a result backend, an event tap
  recording the broker's events) and requests as a basic auth user

The names below are re-exported for the callers that still import them from the package.
"""

from tests.support.clock import ManualClock
from tests.support.launchers import RedisServer, free_port
from tests.support.scrape import Sample, fetch, parse_metrics, scrape, total, value
from tests.support.signals import (
    SignalContext,
    SignalPool,
    SignalRequest,
    SignalTask,
    SignalWorker,
    send_task_run,
)
from tests.support.waiting import wait_for

__all__ = [
    "ManualClock",
    "RedisServer",
    "Sample",
    "SignalContext",
    "SignalPool",
    "SignalRequest",
    "SignalTask",
    "SignalWorker",
    "fetch",
    "free_port",
    "parse_metrics",
    "scrape",
    "send_task_run",
    "total",
    "value",
    "wait_for",
]
