"""How events become series: label choices, caps, time limits and histogram buckets."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_RUNTIME_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
)  # fmt: skip
DEFAULT_WAIT_BUCKETS = DEFAULT_RUNTIME_BUCKETS


@dataclass(frozen=True)
class Settings:
    """How events become series: label choices, caps and time limits."""

    worker_label: bool = False
    default_queue: str = "celery"
    worker_timeout: float | None = None
    worker_purge_after: float = 3600.0
    max_tracked_tasks: int = 100_000
    max_finished_tasks: int = 10_000
    max_task_names: int = 1000
    max_exceptions: int = 200
    max_queues: int = 500
    max_workers: int = 1000
    runtime_buckets: tuple[float, ...] = DEFAULT_RUNTIME_BUCKETS
    wait_buckets: tuple[float, ...] = DEFAULT_WAIT_BUCKETS
