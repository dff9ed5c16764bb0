"""Task and pool metrics from inside a Celery worker, built on Celery's signals: ``install(app)``.

One line in the module that defines the app turns it on::

    from celery_exporter.worker import install
    install(app, port=9809)

Nothing happens in processes that only import the app (producers, ``celery inspect``): the
exporter starts on the worker's ``worker_init`` signal, serves ``/metrics`` from the
worker's main process and stops on ``worker_shutdown``. It serves the same ``celery_task_*``
families as the event-stream daemon, always with ``hostname``, computed by the same
:class:`~celery_exporter.state.ClusterState` from events made out of signals
(:mod:`.signals`) instead of Celery's event stream, so no events need be enabled.

Prefork pools run tasks in child processes. Each child sends what its signals say to the main
process, as it happens, over an unnamed Unix datagram socket pair created before the pool
starts (:mod:`.ipc`: no other process can write to it, no file to clean up), so counts survive
``--max-tasks-per-child`` recycling and hard time limits. A thread of the main process
receives them. Solo, threads, eventlet and gevent pools run tasks in the main process, which
counts directly.

In a ``celery beat`` process the same call serves beat's own families instead, from Celery's
``beat_init`` signal (:mod:`.beat`: entries' last and next runs, sends, send errors, ticks).

Options of :func:`install`:

- ``port`` (9809), ``host`` (``0.0.0.0``): where ``/metrics`` listens. A port in use is logged
  (``worker_exporter_cannot_listen``) and the worker runs on without the exporter.
- ``web_config_file``: TLS and basic auth for ``/metrics``, in the exporter toolkit's YAML
  (as the daemon's ``--web.config.file``). A file that cannot be used is logged and the worker
  runs on without the exporter.
- ``resources`` (True): also serve the CPU, memory, I/O, fd and thread figures of the worker's
  processes (:mod:`celery_exporter.collectors.processes`), refreshed every ``sample_interval``
  (1 s).
- ``settings``: a :class:`~celery_exporter.state.Settings` for the label caps, default queue and
  histogram buckets (the daemon's defaults otherwise).
- ``registry``: the registry to serve (a new one otherwise).
- ``beat_max_entries`` (500), ``beat_refresh_interval`` (5 s): beat only, see :mod:`.beat`.
"""

from __future__ import annotations

from typing import Any

from .beat import DEFAULT_MAX_ENTRIES, DEFAULT_REFRESH_INTERVAL, BeatExporter
from .collector import WorkerCollector
from .exporter import DEFAULT_PORT, WorkerExporter

__all__ = ["DEFAULT_PORT", "BeatExporter", "WorkerCollector", "WorkerExporter", "install"]


def install(
    app: Any,
    port: int = DEFAULT_PORT,
    beat_max_entries: int = DEFAULT_MAX_ENTRIES,
    beat_refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
    **options: Any,
) -> WorkerExporter:
    """Export this app's workers' (or beat's) metrics on ``port``; see the module docstring."""
    exporter = WorkerExporter(app, port=port, **options)
    exporter.connect()
    BeatExporter(exporter, beat_max_entries, beat_refresh_interval).connect()
    return exporter
