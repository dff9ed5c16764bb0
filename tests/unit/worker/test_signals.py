"""Celery's real signals, sent with scripted senders, turned into the in-worker exporter's events."""

from __future__ import annotations

import logging
import os

import pytest
from celery import signals
from celery.exceptions import Reject, Retry, TimeLimitExceeded

from celery_exporter.worker import WorkerExporter, install
from tests.support.launchers import free_port
from tests.support.scrape import value
from tests.support.signals import SignalContext as Context
from tests.support.signals import SignalRequest, SignalWorker
from tests.support.signals import SignalTask as Task
from tests.support.waiting import wait_for
from tests.support.worker import HOST, QUEUE, App, run, samples


class BrokenRequest:
    """A request whose id raises: stands for a bug in turning a signal into an event."""

    name = "t.broken"
    eta = None

    @property
    def id(self) -> str:
        """Raise, as our code would on a bug."""
        raise RuntimeError("bug")


def test_signals_before_worker_init_do_nothing() -> None:
    """An installed exporter stays idle in processes that are not the app's worker."""
    app = App()
    exp = install(app, port=free_port(), host="127.0.0.1", resources=False)
    try:
        signals.worker_init.send(sender=SignalWorker(App(), HOST))  # another app's worker
        run("t.a", "id-0", "success")
        assert exp.role == "idle"
        assert exp.state is None
        assert exp.server is None
    finally:
        exp.disconnect()


def test_main_process_counts(exporter: WorkerExporter) -> None:
    """Runs in the main process (solo, threads) count exactly, with hostname and queue."""
    run("t.ok", "id-1", "success")
    run("t.ok", "id-2", "success")
    run("t.bad", "id-3", "failure", ValueError("x"))
    run("t.again", "id-4", "retry", Retry(exc=RuntimeError("later")))
    run("t.no", "id-5", "reject", Reject("no", requeue=False))
    signals.task_failure.send(
        sender=Task("t.no", Context("id-5")), task_id="id-5", exception=Reject("no")
    )
    # A hard time limit: Celery's main process sends task_failure twice for one task.
    hard = Task("t.slow", Context("id-6", {"routing_key": QUEUE}))
    signals.task_received.send(
        sender=None, request=SignalRequest("id-6", "t.slow", {"routing_key": QUEUE})
    )
    signals.task_prerun.send(sender=hard, task_id="id-6", task=hard)
    for _ in range(2):
        signals.task_failure.send(sender=hard, task_id="id-6", exception=TimeLimitExceeded(1))
    signals.task_revoked.send(sender=Task("t.late", Context("id-7")), request=Context("id-7"))
    signals.task_unknown.send(sender=None, name="t.missing", id="id-8", message=None, exc=None)
    got = samples(exporter)
    labels = {"hostname": HOST, "queue_name": QUEUE}
    assert value(got, "celery_task_succeeded_total", name="t.ok", **labels) == 2
    assert (
        value(got, "celery_task_failed_total", name="t.bad", exception="ValueError", **labels) == 1
    )
    assert (
        value(got, "celery_task_retried_total", name="t.again", exception="RuntimeError", **labels)
        == 1
    )
    assert value(got, "celery_task_rejected_total", name="t.no", **labels) == 1
    assert value(got, "celery_task_failed_total", name="t.no", exception="Reject", **labels) == 1
    assert (
        value(
            got, "celery_task_failed_total", name="t.slow", exception="TimeLimitExceeded", **labels
        )
        == 1
    )
    assert value(got, "celery_task_timeouts_total", name="t.slow", kind="hard", **labels) == 1
    assert (
        value(got, "celery_task_revoked_total", name="t.late", hostname=HOST, queue_name="celery")
        == 1
    )
    assert (
        value(got, "celery_task_runtime_seconds_count", name="t.ok", state="succeeded", **labels)
        == 2
    )
    assert value(got, "celery_worker_task_errors_total", hostname=HOST, kind="unknown_task") == 1
    assert value(got, "celery_worker_pool_size", hostname=HOST) == 4
    for name in ("t.ok", "t.bad", "t.again", "t.no", "t.slow"):
        assert value(got, "celery_tasks_active", name=name, **labels) == 0, name


def test_ignored_task_is_retired(exporter: WorkerExporter) -> None:
    """A task that raises Ignore leaves the active gauge and the in-flight table, counted nowhere."""
    task = Task("t.replaced", Context("id-9", {"routing_key": QUEUE}))
    signals.task_received.send(
        sender=None, request=SignalRequest("id-9", task.name, {"routing_key": QUEUE})
    )
    signals.task_prerun.send(sender=task, task_id="id-9", task=task)
    signals.task_postrun.send(sender=task, task_id="id-9", task=task, state="IGNORED", retval=None)
    got = samples(exporter)
    labels = {"name": "t.replaced", "hostname": HOST, "queue_name": QUEUE}
    assert value(got, "celery_tasks_active", **labels) == 0
    assert value(got, "celery_task_started_total", **labels) == 1
    assert value(got, "celery_task_succeeded_total", **labels) == 0
    assert exporter.state is not None and len(exporter.state.tasks) == 0


def test_task_error_signals_count_by_kind(exporter: WorkerExporter) -> None:
    """task_unknown, task_rejected and task_internal_error each count under their own kind."""
    signals.task_rejected.send(sender=None, message=None, exc=None)
    signals.task_rejected.send(sender=None, message=None, exc=None)
    signals.task_internal_error.send(sender=None, task_id="id-x", exception=RuntimeError("x"))
    got = samples(exporter)
    assert value(got, "celery_worker_task_errors_total", hostname=HOST, kind="unknown_task") == 0
    assert value(got, "celery_worker_task_errors_total", hostname=HOST, kind="invalid_message") == 2
    assert value(got, "celery_worker_task_errors_total", hostname=HOST, kind="internal_error") == 1


def test_a_receiver_that_raises_is_logged_and_counted(
    exporter: WorkerExporter, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug turning a signal into an event never reaches Celery: it is logged and counted."""
    with caplog.at_level(logging.ERROR, logger="celery_exporter.worker.signals"):
        responses = signals.task_received.send(sender=None, request=BrokenRequest())
    assert [response for _, response in responses] == [None]
    failed = [r for r in caplog.records if "worker_signal_failed" in r.getMessage()]
    assert [r.levelno for r in failed] == [logging.ERROR]
    assert "signal='task_received'" in failed[0].getMessage()
    run("t.after", "id-10", "success")
    got = samples(exporter)
    assert value(got, "celery_exporter_internal_errors_total", where="worker_signal") == 1
    labels = {"name": "t.after", "hostname": HOST, "queue_name": QUEUE}
    assert value(got, "celery_task_succeeded_total", **labels) == 1
    assert value(got, "celery_task_received_total", name="t.broken", hostname=HOST) == 0


def test_a_pool_process_reports_a_receiver_that_raised(exporter: WorkerExporter) -> None:
    """A receiver that raises in a pool process is counted by the main process."""
    pid = os.fork()
    if pid == 0:  # the pool process
        try:
            signals.worker_process_init.send(sender=None)
            responses = signals.task_received.send(sender=None, request=BrokenRequest())
            ok = exporter.role == "pool" and [r for _, r in responses] == [None]
            os._exit(0 if ok else 3)
        finally:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    wait_for(
        lambda: (
            value(samples(exporter), "celery_exporter_internal_errors_total", where="worker_signal")
            == 1
        ),
        10,
        0.05,
    )
    assert exporter.internal_errors.counts() == {"worker_signal": 1}
