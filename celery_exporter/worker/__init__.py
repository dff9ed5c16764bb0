"""Task and pool metrics from inside a Celery worker: ``install(app)``."""

from .exporter import DEFAULT_PORT, WorkerExporter, install

__all__ = ["DEFAULT_PORT", "WorkerExporter", "install"]
