"""What the event stream says about tasks and workers, kept as plain counters.

``cluster`` is the facade (lock, dispatch, snapshot, purge); ``handlers`` and ``book`` move
tasks through their life; ``tasks``, ``workers`` and ``series`` are the tables; ``labels``
bounds label values; ``settings`` holds the choices; ``worker_queues`` is what the inspect
collector learned.
"""

from ..events.fields import UNKNOWN
from .cluster import ClusterState, Snapshot
from .series import TASK_COUNTERS, Histogram, LabelKey
from .settings import DEFAULT_RUNTIME_BUCKETS, DEFAULT_WAIT_BUCKETS, Settings
from .worker_queues import WorkerQueues

__all__ = [
    "DEFAULT_RUNTIME_BUCKETS", "DEFAULT_WAIT_BUCKETS", "TASK_COUNTERS", "UNKNOWN", "ClusterState",
    "Histogram", "LabelKey", "Settings", "Snapshot", "WorkerQueues",
]  # fmt: skip
