"""The task view's unit-test scene: a real cluster state fed scripted events, the inspect and
queue collectors after one poll each, and a MetricsServer serving the task view on loopback.

:func:`scene` builds it; :data:`HOSTILE` is markup that must never reach a page unescaped, and
:func:`hostile_scene` puts it in every field that comes from the broker.
"""

from __future__ import annotations

import contextlib
import http.client
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from celery_exporter.broker import Broker
from celery_exporter.broker.measure import Measurement, SentLookup
from celery_exporter.collectors.inspect import InspectCollector
from celery_exporter.collectors.queues import QueueCollector
from celery_exporter.state import ClusterState, Settings
from celery_exporter.web.api import TaskApi
from celery_exporter.web.health import HealthView
from celery_exporter.web.pages import LINKS, TaskPages
from celery_exporter.web.server import MetricsServer
from celery_exporter.web.webconfig import WebConfigWatcher
from tests.support import events as ev
from tests.support.clock import ManualClock

T0 = ev.T0
W1, W2 = ev.W1, ev.W2
#: The scene's clock when the tests read it.
NOW = T0 + 1000
#: --web.stuck-after in the scene: t-slow (started at T0 + 21) is past it, t-fresh is not.
STUCK_AFTER = 900.0
#: When the oldest message waiting in ``celery`` was sent.
OLDEST_SENT = NOW - 42
#: Markup from a hostile broker: a script and an image with an error handler.
HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(1)>"
#: The scene's hostile task id: markup and characters that mean something in a URL.
HOSTILE_ID = "<script>alert(1)</script>/x?y#z%"
READY = HealthView(broker_up=True, consuming=True, reconnects=0, reason="")


def progress(
    uuid: str, current: Any, total: Any, message: Any, host: str = W1, at: float = T0
) -> dict[str, Any]:
    """A task's own task-progress event (``self.send_event("task-progress", ...)``)."""
    return {
        "type": "task-progress", "uuid": uuid, "current": current, "total": total,
        "message": message, "hostname": host, "timestamp": at, "utcoffset": 0, "pid": 101,
        "clock": 9,
    }  # fmt: skip


class ScriptedQueues:
    """A queue backend answering fixed figures for the queues it is asked about."""

    def __init__(self, length: Mapping[str, int], oldest_sent: Mapping[str, float]) -> None:
        self.length = dict(length)
        self.oldest_sent = dict(oldest_sent)

    def measure(self, queues: Sequence[str], sent: SentLookup | None = None) -> Measurement:
        """Figures of the known queues among ``queues``; unacked unknown, as on some brokers."""
        known = [q for q in queues if q in self.length]
        return Measurement(
            length={q: self.length[q] for q in known},
            unacked=None,
            consumers={q: 1 if q == "celery" else 0 for q in known},
            oldest_sent={q: t for q, t in self.oldest_sent.items() if q in known},
        )


@dataclass
class Scene:
    """The state and collectors the task view reads."""

    clock: ManualClock
    state: ClusterState
    inspect: InspectCollector | None = None
    queues: QueueCollector | None = None
    show_args: bool = False

    def at(self, when: float, *events: dict[str, Any]) -> None:
        """Feed ``events`` in one batch with the clock at ``when``."""
        self.clock.now = when
        self.state.handle_batch(events)


def new_scene(show_args: bool = False) -> Scene:
    """A state with the task view on and nothing fed yet."""
    clock = ManualClock(T0)
    settings = Settings(web_task_api=True, web_show_task_args=show_args)
    return Scene(clock, ClusterState(settings, clock=clock), show_args=show_args)


def scene(show_args: bool = False, collectors: bool = True) -> Scene:
    """Six tasks on two workers, the inspect and queue collectors polled once (unless off).

    In order of their last event: t-ok succeeded, t-fail failed (ValueError), t-slow started on
    W2 long ago (stuck, with progress), t-wait sent to ``other``, t-retry retried (KeyError),
    t-fresh started on W2 just now.
    """
    s = new_scene(show_args)
    s.at(T0 + 1, ev.heartbeat(W1, active=1, processed=7), ev.heartbeat(W2, active=2))
    s.at(T0 + 3, ev.sent("t-ok", at=T0), ev.received("t-ok", at=T0 + 1),
         ev.started("t-ok", at=T0 + 2), ev.succeeded("t-ok", 0.5, at=T0 + 2.5))  # fmt: skip
    s.at(T0 + 13, ev.received("t-fail", "app.fail", at=T0 + 10),
         ev.started("t-fail", at=T0 + 11),
         ev.failed("t-fail", "ValueError('bad input')", at=T0 + 12))  # fmt: skip
    s.at(T0 + 22, ev.received("t-slow", "app.slow", W2, at=T0 + 20),
         ev.started("t-slow", W2, at=T0 + 21))  # fmt: skip
    s.at(T0 + 500, progress("t-slow", 3, 10, "resizing", W2, at=T0 + 500))
    s.at(T0 + 600, ev.sent("t-wait", queue="other", at=T0 + 600))
    s.at(T0 + 700, ev.received("t-retry", "app.fail", at=T0 + 700),
         ev.started("t-retry", at=T0 + 701), ev.retried("t-retry", "KeyError('k')", at=T0 + 702))  # fmt: skip
    s.at(T0 + 996, ev.received("t-fresh", "app.slow", W2, at=T0 + 990),
         ev.started("t-fresh", W2, at=T0 + 995))  # fmt: skip
    s.at(T0 + 998, ev.heartbeat(W1, active=1, processed=7))
    s.clock.now = NOW
    if collectors:
        add_collectors(s, {"celery": 5, "other": 0}, {"celery": OLDEST_SENT}, ["celery", "fast"])
    return s


def add_collectors(
    s: Scene, length: Mapping[str, int], oldest: Mapping[str, float], w1_queues: list[str]
) -> None:
    """The inspect collector (W1 answers, W2 does not) and the queue collector, polled once."""
    replies = (
        {W1: {"pool": {"max-concurrency": 4}, "prefetch_count": 16}},
        {W1: [{"name": q} for q in w1_queues]},
        {W1: []},
    )
    s.inspect = InspectCollector(
        Broker("redis://127.0.0.1:1/0"), None, 30, clock=s.clock, broadcast=lambda: replies
    )
    assert s.inspect.poller.run_once()
    s.queues = QueueCollector(
        ScriptedQueues(length, oldest), s.state, ["celery"], 10, 3600, clock=s.clock
    )
    assert s.queues.poller.run_once()


def hostile_scene() -> Scene:
    """Hostile markup in a task id, name, queue, worker, args, exception message and traceback."""
    s = new_scene(show_args=True)
    task = ev.sent(HOSTILE_ID, name=HOSTILE, queue=HOSTILE, at=T0)
    arrived = ev.received(HOSTILE_ID, HOSTILE, HOSTILE, at=T0 + 1)
    for event in (task, arrived):
        event["args"], event["kwargs"] = f"('{HOSTILE}',)", f"{{'x': '{HOSTILE}'}}"
    failure = ev.failed(
        HOSTILE_ID, f"ValueError('{HOSTILE}')", f"Traceback\n{HOSTILE}\n", HOSTILE, at=T0 + 4
    )
    s.at(T0 + 1, ev.heartbeat(HOSTILE), task)
    s.at(T0 + 2, arrived)
    s.at(T0 + 3, ev.started(HOSTILE_ID, HOSTILE, at=T0 + 2))
    s.at(T0 + 4, progress(HOSTILE_ID, 1, 2, HOSTILE, HOSTILE, at=T0 + 3), failure)
    s.clock.now = NOW
    add_collectors(s, {HOSTILE: 1}, {}, [HOSTILE])
    return s


@contextlib.contextmanager
def serving(
    s: Scene | None, web_config: Path | None = None, stuck_after: float = STUCK_AFTER
) -> Iterator[MetricsServer]:
    """A started MetricsServer on 127.0.0.1 with the task view of ``s`` (None: the view off)."""
    routes: list[Any] = []
    if s is not None:
        api = TaskApi(s.state, s.inspect, s.queues, show_args=s.show_args)
        routes = [api, TaskPages(api, stuck_after)]
    web = WebConfigWatcher(str(web_config), interval=0.0) if web_config is not None else None
    server = MetricsServer(
        "127.0.0.1", 0, CollectorRegistry(), lambda: READY, web=web, routes=routes,
        links=LINKS if s is not None else (),
    )  # fmt: skip
    server.start()
    try:
        yield server
    finally:
        server.stop()


def get(
    server: MetricsServer, path: str, headers: Mapping[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one request to ``server``."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, headers=dict(headers or {}))
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()
