"""The known workload several integration tests send, and what it must give.

What Celery 5.7 really publishes for the workload (watched on the broker):

* every task sent gets task-sent (from the client) and task-received;
* a retry publishes the new message (task-sent, from the pool process, and task-received with an
  ETA) before the worker's task-retried for the first run;
* the soft time limit ends in one task-failed ``SoftTimeLimitExceeded()``;
* the hard time limit ends in two task-failed ``ExceptionWithTraceback()`` (pool and request),
  the class being on the traceback's last line;
* the revoked ETA task gets task-received, then task-revoked when its ETA comes, no task-started;
* ``Reject(requeue=False)`` with ``acks_late`` gives task-failed (exception text
  ``reject requeue=False: not wanted``, the class on the traceback's last line) then
  task-rejected with ``requeue: false``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tests.support import taskapp
from tests.support.client import Client

Q = "celery"
SUCCEED = taskapp.succeed.name
FAIL_VALUE = taskapp.fail_value.name
FAIL_KEY = taskapp.fail_key.name
RETRY = taskapp.retry_once.name
SOFT = taskapp.soft_timeout.name
HARD = taskapp.hard_timeout.name
REVOKED = taskapp.revoked.name
REJECT = taskapp.reject.name
#: How far ahead the revoked task is due: long enough to revoke it first, on a busy machine too.
REVOKE_COUNTDOWN = 8

#: How many of each task the workload sends.
WORKLOAD = {
    SUCCEED: 5,
    FAIL_VALUE: 2,
    FAIL_KEY: 1,
    RETRY: 1,
    SOFT: 1,
    HARD: 1,
    REVOKED: 1,
    REJECT: 1,
}
#: Tasks that run (all but the revoked one); the retried one runs twice.
RUNS = {SUCCEED: 5, FAIL_VALUE: 2, FAIL_KEY: 1, RETRY: 2, SOFT: 1, HARD: 1, REJECT: 1}
#: Each message published, the retry's included, is sent and received once.
MESSAGES = {**RUNS, REVOKED: 1}

#: Raw events the worker and client publish for the workload, by type.
EVENTS = {
    "task-sent": sum(MESSAGES.values()),
    "task-received": sum(MESSAGES.values()),
    "task-started": sum(RUNS.values()),
    "task-succeeded": 6,
    "task-failed": 7,  # 2 ValueError, 1 KeyError, 1 soft, 2 hard, 1 Reject
    "task-retried": 1,
    "task-revoked": 1,
    "task-rejected": 1,
}

#: Expected increase of each task counter, by label set.
COUNTERS: dict[str, dict[tuple[tuple[str, str], ...], int]] = {
    "celery_task_sent_total": {(("name", n), ("queue_name", Q)): c for n, c in MESSAGES.items()},
    "celery_task_received_total": {
        (("name", n), ("queue_name", Q)): c for n, c in MESSAGES.items()
    },
    "celery_task_started_total": {(("name", n), ("queue_name", Q)): c for n, c in RUNS.items()},
    "celery_task_succeeded_total": {
        (("name", SUCCEED), ("queue_name", Q)): 5,
        (("name", RETRY), ("queue_name", Q)): 1,
    },
    "celery_task_retried_total": {
        (("name", RETRY), ("queue_name", Q), ("exception", "RuntimeError")): 1,
    },
    "celery_task_revoked_total": {(("name", REVOKED), ("queue_name", Q)): 1},
    "celery_task_rejected_total": {(("name", REJECT), ("queue_name", Q)): 1},
}
#: Expected increase of celery_task_failed_total, Reject aside (see test_reject_failure_labelled_with_class).
FAILED = {
    (("name", FAIL_VALUE), ("queue_name", Q), ("exception", "ValueError")): 2,
    (("name", FAIL_KEY), ("queue_name", Q), ("exception", "KeyError")): 1,
    (("name", SOFT), ("queue_name", Q), ("exception", "SoftTimeLimitExceeded")): 1,
    (("name", HARD), ("queue_name", Q), ("exception", "TimeLimitExceeded")): 1,
}


def send_workload(client: Client, workload: Mapping[str, int], **options: Any) -> str | None:
    """Send every task of ``workload`` (the revoked one with a countdown); return that one's id."""
    for name, count in workload.items():
        if name != REVOKED:
            for i in range(count):
                client.send(name, args=(i,) if name == SUCCEED else (), **options)
    if REVOKED not in workload:
        return None
    return client.send(REVOKED, countdown=REVOKE_COUNTDOWN, **options)
