"""Pool processes hand their events to the main process over the unnamed socket pair."""

from __future__ import annotations

import os
import socket
from typing import Any

from celery import signals

from celery_exporter.worker import WorkerExporter
from celery_exporter.worker.ipc import Inbox, Outbox
from tests.support.scrape import value
from tests.support.waiting import wait_for
from tests.support.worker import HOST, QUEUE, run, samples


def test_pool_process_events_reach_the_main_process(exporter: WorkerExporter) -> None:
    """A forked pool process sends its signals to the main process, which counts them."""
    pid = os.fork()
    if pid == 0:  # the pool process
        try:
            signals.worker_process_init.send(sender=None)
            for i in range(50):
                run("t.child", f"child-{i}", "success")
            os._exit(0 if exporter.role == "pool" else 3)
        finally:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    labels = {"name": "t.child", "hostname": HOST, "queue_name": QUEUE}
    wait_for(
        lambda: value(samples(exporter), "celery_task_succeeded_total", **labels) == 50, 10, 0.05
    )
    got = samples(exporter)
    assert value(got, "celery_task_started_total", **labels) == 50
    assert value(got, "celery_task_received_total", **labels) == 50
    assert value(got, "celery_exporter_worker_events_dropped_total") == 0
    assert exporter.role == "main"


def test_inbox_applies_objects_and_counts_the_rest() -> None:
    """The inbox applies each JSON object it receives and counts what is not one as malformed."""
    got: list[dict[str, Any]] = []
    inbox = Inbox(got.append)
    inbox.start()
    try:
        for data in (b'{"type": "a"}', b"not json", b"[1, 2]", b'{"type": "b"}'):
            inbox.send_end.send(data)
        wait_for(lambda: len(got) == 2, 5, 0.01)
        assert got == [{"type": "a"}, {"type": "b"}]
        assert inbox.malformed == 2
    finally:
        inbox.close()


def test_outbox_reports_what_it_could_not_send_with_the_next_event() -> None:
    """An event the outbox cannot encode is counted and reported before the next one."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with ours, theirs:
        outbox = Outbox(ours)
        outbox.send({"type": "x", "bad": object()})
        assert outbox.dropped == 1
        outbox.send({"type": "y"})
        assert outbox.dropped == 0
        assert theirs.recv(1024) == b'{"type":"_dropped","count":1}'
        assert theirs.recv(1024) == b'{"type":"y"}'


def test_outbox_flush_reports_drops_before_exit() -> None:
    """flush() sends the count of events not sent since the last report, once."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with ours, theirs:
        outbox = Outbox(ours)
        outbox.send({"type": "x", "bad": object()})
        outbox.send({"type": "x", "bad": object()})  # reports the first drop, drops its own
        outbox.flush()
        outbox.flush()
        theirs.setblocking(False)
        assert theirs.recv(1024) == b'{"type":"_dropped","count":1}'
        assert theirs.recv(1024) == b'{"type":"_dropped","count":1}'
        assert outbox.dropped == 0
        try:
            extra = theirs.recv(1024)
        except BlockingIOError:
            extra = b""
        assert extra == b""
