"""How events become series: label choices, caps, time limits and histogram buckets.

Each field that a flag sets takes its default from that flag's entry in
:data:`celery_exporter.options.OPTIONS`, so ``Settings()`` is what the daemon runs with when no
flag is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .. import config

DEFAULT_RUNTIME_BUCKETS: tuple[float, ...] = config.default("--runtime-buckets")
DEFAULT_WAIT_BUCKETS: tuple[float, ...] = config.default("--wait-buckets")


def _flag(flag: str) -> Any:
    """A field whose default, and value in :meth:`Settings.from_values`, is the flag's."""
    return field(default=config.default(flag), metadata={"flag": flag})


@dataclass(frozen=True)
class Settings:
    """How events become series: label choices, caps and time limits."""

    worker_label: bool = _flag("--worker-label")
    default_queue: str = _flag("--default-queue")
    worker_timeout: float | None = _flag("--worker-timeout")
    worker_purge_after: float = _flag("--worker-purge-after")
    max_tracked_tasks: int = _flag("--max-tracked-tasks")
    max_finished_tasks: int = _flag("--max-finished-tasks")
    max_task_names: int = _flag("--max-task-names")
    max_exceptions: int = _flag("--max-exceptions")
    max_queues: int = _flag("--max-queues")
    max_workers: int = _flag("--max-workers")
    runtime_buckets: tuple[float, ...] = _flag("--runtime-buckets")
    wait_buckets: tuple[float, ...] = _flag("--wait-buckets")
    #: Keep a record of each task for the task view (its API and pages).
    web_task_api: bool = _flag("--web.task-api")
    #: Keep the task arguments' reprs in those records.
    web_show_task_args: bool = _flag("--web.show-task-args")

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> Settings:
        """Settings from resolved option values; KeyError names one that is missing."""
        return cls(
            **{
                f.name: values[config.option(f.metadata["flag"]).dest]
                for f in fields(cls)
                if "flag" in f.metadata
            }
        )
