"""What the event stream says about tasks and workers, kept as plain counters."""

from .cluster import (
    TASK_COUNTERS,
    UNKNOWN,
    ClusterState,
    Histogram,
    LabelKey,
    Snapshot,
)
from .settings import DEFAULT_RUNTIME_BUCKETS, DEFAULT_WAIT_BUCKETS, Settings

__all__ = [
    "DEFAULT_RUNTIME_BUCKETS", "DEFAULT_WAIT_BUCKETS", "TASK_COUNTERS", "UNKNOWN", "ClusterState",
    "Histogram", "LabelKey", "Settings", "Snapshot",
]  # fmt: skip
