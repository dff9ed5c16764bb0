"""Task control's end-to-end stack: basic auth, a result backend, and an event tap.

:func:`control_stack` starts a private Redis (database 0 the broker, 1 the result backend), the
exporter with ``--web.enable-control`` behind a bcrypt basic auth user, a prefork worker with
events on :data:`QUEUE` whose app stores extended results there, a client and an
:class:`EventTap` that records the task events on the broker. :class:`AuthedHttp` talks to the
exporter as that user.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery

from tests.support import taskapp
from tests.support.client import Client
from tests.support.launchers import RedisServer
from tests.support.processes import EVENT_TIMEOUT, START_TIMEOUT, ExporterProcess, WorkerProcess
from tests.support.scrape import Sample, parse_metrics
from tests.support.stack import connected_client, running_exporter, running_worker
from tests.support.waiting import wait_for
from tests.tls import bcrypt_hash

#: The queue the control stack's worker consumes.
QUEUE = "control"
USER, PASSWORD = "operator", "tr0ub4dor &3"
#: Pool processes: a long task, and room for the others of the workload beside it.
CONCURRENCY = 3


class AuthedHttp:
    """Requests to the exporter as one basic auth user (or with other credentials)."""

    def __init__(self, port: int, user: str = USER, password: str = PASSWORD) -> None:
        self.port = port
        self.auth = (user, password)

    def call(
        self,
        method: str,
        path: str,
        body: bytes | str = b"",
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | bool | None = True,
    ) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body of one request; ``auth`` True sends the stack's user."""
        sent = dict(headers or {})
        credentials = self.auth if auth is True else auth or None
        if credentials:
            token = base64.b64encode(":".join(credentials).encode()).decode()
            sent["Authorization"] = f"Basic {token}"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def post_json(self, path: str, data: Mapping[str, Any] | None = None) -> tuple[int, Any]:
        """POST ``data`` as JSON; the status and the decoded answer."""
        status, _, body = self.call(
            "POST", path, json.dumps(data or {}), {"Content-Type": "application/json"}
        )
        return status, json.loads(body)

    def get_json(self, path: str) -> tuple[int, Any]:
        """GET a JSON path; the status and the decoded answer."""
        status, _, body = self.call("GET", path)
        return status, json.loads(body)

    def task(self, task_id: str) -> dict[str, Any] | None:
        """``/api/v1/tasks/{id}``, or None while it is not known."""
        status, answer = self.get_json(f"/api/v1/tasks/{task_id}")
        if status == 404:
            return None
        assert status == 200, (status, answer)
        detail: dict[str, Any] = answer
        return detail

    def wait_task(self, task_id: str, state: str, what: str = "") -> dict[str, Any]:
        """Wait until the task view shows ``task_id`` in ``state``; return its detail."""
        last: list[Any] = [None]

        def reached() -> bool:
            last[0] = self.task(task_id)
            return last[0] is not None and last[0]["state"] == state

        try:
            wait_for(reached, EVENT_TIMEOUT, 0.2, what or f"task {task_id} {state}")
        except TimeoutError:
            raise AssertionError(f"task {task_id} never {state}; last: {last[0]}") from None
        detail: dict[str, Any] = last[0]
        return detail

    def metrics(self) -> dict[Sample, float]:
        """Scrape ``/metrics`` as the user."""
        status, _, body = self.call("GET", "/metrics")
        assert status == 200, status
        return parse_metrics(body.decode())


class EventTap:
    """Records every event the broker carries, from a real Celery event receiver on a thread."""

    def __init__(self, broker_url: str) -> None:
        self.app = Celery("itest-tap", broker=broker_url, set_as_current=False)
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._run, name="event-tap", daemon=True)

    def start(self) -> EventTap:
        """Start receiving; return once a probe event sent after the start came back."""
        self._thread.start()

        def probed() -> bool:
            with self.app.connection_for_write() as conn:
                dispatcher = self.app.events.Dispatcher(conn, enabled=True)
                dispatcher.send("tap-probe")
                dispatcher.close()
            return bool(self.of("tap-probe"))

        wait_for(probed, START_TIMEOUT, 0.2, "the event tap to subscribe")
        return self

    def _run(self) -> None:
        with self.app.connection() as conn:
            self._receiver = self.app.events.Receiver(conn, handlers={"*": self._record})
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def _record(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, etype: str, match: Any = None) -> list[dict[str, Any]]:
        """The events of type ``etype`` received so far (those ``match`` accepts)."""
        with self._lock:
            found = [e for e in self.events if e.get("type") == etype]
        return [e for e in found if match is None or match(e)]

    def stop(self) -> None:
        """Stop receiving."""
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(10)


def stored_result(broker_url: str, backend_url: str, task_id: str) -> dict[str, Any]:
    """What the result backend holds for ``task_id`` (status, result, name, args, kwargs...)."""
    app = Celery("itest-results", broker=broker_url, backend=backend_url, set_as_current=False)
    app.conf.result_extended = True
    try:
        meta: dict[str, Any] = app.backend.get_task_meta(task_id, cache=False)
        return meta
    finally:
        app.close()


@dataclass
class ControlStack:
    """A private Redis with the exporter (control on), one worker, a client and an event tap."""

    redis: RedisServer
    exporter: ExporterProcess
    worker: WorkerProcess
    client: Client
    tap: EventTap
    http: AuthedHttp
    web_config: Path


def write_web_config(path: Path) -> Path:
    """A web config with the stack's user (low bcrypt cost: tests only)."""
    path.write_text(f"basic_auth_users:\n  {USER}: {bcrypt_hash(PASSWORD)}\n")
    return path


@contextlib.contextmanager
def control_stack(
    logdir: Path, tmp: Path, exporter_args: Sequence[str] = ()
) -> Iterator[ControlStack]:
    """The stack, each part started and up in the exporter's view before it is yielded."""
    config = write_web_config(tmp / "web.yml")
    with RedisServer() as redis, contextlib.ExitStack() as parts:
        backend = redis.url(1)
        args = ["--web.config.file", str(config), "--web.healthz-unauthenticated",
                "--web.enable-control", "--result-backend", backend, "--inspect-interval", "1s",
                *exporter_args]  # fmt: skip
        exporter = parts.enter_context(running_exporter(redis.url(), logdir, args, ready=False))
        http = AuthedHttp(exporter.port)
        wait_for(lambda: http.call("GET", "/readyz")[0] == 200, START_TIMEOUT, 0.1,
                 "the exporter to be ready")  # fmt: skip
        worker = WorkerProcess(
            redis.url(), "control", logdir, queues=(QUEUE,),
            options=("-c", str(CONCURRENCY)), env={taskapp.RESULT_BACKEND_ENV: backend},
        )  # fmt: skip
        parts.enter_context(running_worker(worker))
        client = parts.enter_context(connected_client(redis.url()))
        tap = EventTap(redis.url()).start()
        parts.callback(tap.stop)

        def worker_up() -> bool:
            if worker.process is not None and worker.process.poll() is not None:
                raise RuntimeError(f"worker exited:\n{worker.log_tail()}")
            rows = http.get_json("/api/v1/workers")[1]["workers"]
            return any(
                w["hostname"] == worker.nodename and w["up"] and w["queues"] == [QUEUE]
                for w in rows
            )

        # Up, and its queue known from inspect: a task whose task-sent comes after the
        # worker's task-received is then still counted under its queue, not the default one.
        wait_for(worker_up, START_TIMEOUT, 0.2, f"worker {worker.nodename} up, queues known")
        yield ControlStack(redis, exporter, worker, client, tap, http, config)
