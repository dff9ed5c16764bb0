"""Fixtures for the integration tests: a private Redis, real Celery workers and the exporter.

Everything runs as child processes on 127.0.0.1 and free ports: ``redis-server`` through
:class:`~celery_exporter.testing.RedisServer`, Celery prefork workers running
:mod:`tests.integration.taskapp` with ``-E``, and ``python -m celery_exporter``. Workers run in
their own session, so stopping one kills its whole process group, pool children included.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tests.integration import taskapp
from tests.support import (
    REDIS_MISSING,
    RedisServer,
    Sample,
    fetch,
    free_port,
    scrape,
    terminate,
    value,
    wait_for,
)

#: The repository root: workers import ``tests.integration.taskapp`` from here.
ROOT = Path(__file__).resolve().parents[2]
#: Generous limits: other jobs share this machine's CPUs.
START_TIMEOUT = 60.0
EVENT_TIMEOUT = 60.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip the integration tests when there is no redis-server to run."""
    if shutil.which("redis-server") is None:
        skip = pytest.mark.skip(reason=REDIS_MISSING)
        for item in items:
            if "integration" in item.keywords:
                item.add_marker(skip)


# -- processes --------------------------------------------------------------------------------


def group_alive(pgid: int) -> list[int]:
    """Return the live (not zombie) processes of process group ``pgid``."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [pgid]
    alive = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            alive.append(int(entry.name))
    return alive


def spawn(
    args: Sequence[str], env: Mapping[str, str], log_path: Path, new_session: bool = False
) -> subprocess.Popen[bytes]:
    """Start a process from the repository root with its output appended to ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )


class WorkerProcess:
    """A Celery worker (prefork unless ``pool`` says) running the test app in its own group."""

    def __init__(
        self,
        broker_url: str,
        name: str,
        logdir: Path,
        queues: Sequence[str] = ("celery",),
        options: Sequence[str] = ("-c", "2"),
        env: Mapping[str, str] | None = None,
        pool: str = "prefork",
        events: bool = True,
    ) -> None:
        self.broker_url = broker_url
        self.nodename = f"{name}-{uuid.uuid4().hex[:6]}@itest"
        self.queues = tuple(queues)
        self.options = list(options)
        self.env = dict(env or {})
        self.pool = pool
        self.events = events
        self.log_path = logdir / f"worker-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        """Start the worker; see :func:`wait_worker_up` for when it counts as up."""
        env = {**os.environ, **self.env, taskapp.BROKER_ENV: self.broker_url}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        args = [
            sys.executable, "-m", "celery", "-A", "tests.integration.taskapp", "worker",
            "-P", self.pool, *self.options, *(["-E"] if self.events else []), "-n", self.nodename,
            "-Q", ",".join(self.queues), "-l", "info", "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        self.process = spawn(args, env, self.log_path, new_session=True)
        return self

    @property
    def pid(self) -> int:
        """The worker's main process id (also its process group id)."""
        assert self.process is not None
        return self.process.pid

    def stop(self, timeout: float = 20.0) -> None:
        """Warm-stop the worker, kill what is left of its group, and wait until none is left."""
        if self.process is None:
            return
        pgid = self.process.pid
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        self.kill_group()

    def kill_group(self) -> None:
        """SIGKILL every process left in the worker's group; raise if any survives."""
        assert self.process is not None
        pgid = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        wait_for(
            lambda: not group_alive(pgid), 15, 0.1, f"worker {self.nodename} processes to exit"
        )

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the worker's log, for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class ExporterProcess:
    """``python -m celery_exporter`` on a free loopback port, output kept in a file."""

    def __init__(self, broker_url: str, logdir: Path, extra_args: Sequence[str] = ()) -> None:
        self.broker_url = broker_url
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.extra_args = list(extra_args)
        self.log_path = logdir / f"exporter-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ExporterProcess:
        """Start the exporter and wait until its HTTP server answers."""
        args = [
            sys.executable, "-m", "celery_exporter", "--broker-url", self.broker_url,
            "--host", "127.0.0.1", "--port", str(self.port), "--log-format", "json",
            *self.extra_args,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_EXPORTER_")}
        env.pop("CELERY_BROKER_URL", None)
        self.process = spawn(args, env, self.log_path)
        wait_for(self.answers, START_TIMEOUT, 0.1, f"exporter on port {self.port} to listen")
        return self

    def answers(self) -> bool:
        """Whether ``/healthz`` answers 200."""
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"exporter exited with {self.process.returncode}:\n{self.output()}")
        try:
            return fetch(self.base + "/healthz", timeout=2)[0] == 200
        except OSError:
            return False

    def ready(self) -> bool:
        """Whether ``/readyz`` answers 200."""
        try:
            return fetch(self.base + "/readyz", timeout=2)[0] == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until the exporter consumes events."""
        wait_for(self.ready, timeout, 0.1, f"exporter on port {self.port} to be ready")

    def get(self, path: str) -> tuple[int, bytes]:
        """GET a path of the exporter."""
        return fetch(self.base + path, timeout=5)

    def metrics(self) -> dict[Sample, float]:
        """Scrape ``/metrics``."""
        return scrape(self.base + "/metrics", timeout=10)

    def output(self) -> str:
        """Everything the exporter wrote to stdout and stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> int | None:
        """SIGTERM the exporter (SIGKILL if it lingers); return its exit status."""
        return None if self.process is None else terminate(self.process)


class Client:
    """Sends tasks of the test app to one broker, with task-sent events, and revokes them."""

    def __init__(self, broker_url: str) -> None:
        self.app = Celery("itest-client", broker=broker_url, set_as_current=False)
        self.app.conf.update(task_send_sent_event=True, task_ignore_result=True)
        self.quiet_app = Celery("itest-quiet", broker=broker_url, set_as_current=False)
        self.quiet_app.conf.update(task_send_sent_event=False, task_ignore_result=True)

    def send(self, task: Any, **options: Any) -> str:
        """Send ``task`` (a task of :mod:`taskapp`, or its name); return the task id."""
        name = task if isinstance(task, str) else task.name
        return str(self.app.send_task(name, **options).id)

    def send_quietly(self, name: str, **options: Any) -> str:
        """Send a task without its task-sent event; return the task id."""
        return str(self.quiet_app.send_task(name, **options).id)

    def publish_task_sent(
        self, task_id: str, name: str, sent_at: float, queue: str = "celery"
    ) -> None:
        """Publish, late, the task-sent event a client sends for a task (the same fields)."""
        with self.app.connection_for_write() as conn:
            dispatcher = self.app.events.Dispatcher(conn, enabled=True)
            dispatcher.send(
                "task-sent",
                uuid=task_id,
                root_id=task_id,
                parent_id=None,
                name=name,
                args="()",
                kwargs="{}",
                retries=0,
                eta=None,
                expires=None,
                queue=queue,
                exchange="",
                routing_key=queue,
                timestamp=sent_at,
            )
            dispatcher.close()

    def revoke(self, task_id: str, nodename: str, timeout: float = 30.0) -> list[Any]:
        """Revoke a task at worker ``nodename``; return once it replied (so it knows)."""
        with self.app.connection_for_write() as conn:
            replies: list[Any] = self.app.control.revoke(
                task_id,
                destination=[nodename],
                reply=True,
                limit=1,
                timeout=timeout,
                connection=conn,
            )
        return replies

    @contextlib.contextmanager
    def held(self, worker: WorkerProcess, queue: str = "celery") -> Iterator[None]:
        """Keep ``worker`` from consuming ``queue`` inside the block.

        A client publishes task-sent just after the task message, so a quick worker can start
        the task before its task-sent is out. Tasks sent inside the block wait in the queue
        until every task-sent is published, which makes the order of events deterministic.
        """
        self._control(worker, "cancel_consumer", queue)
        try:
            yield
        finally:
            # The worker answers before it acts (call_soon): make sure it consumes again.
            def consuming() -> bool:
                if queue in self.consumed_queues(worker):
                    return True
                self._control(worker, "add_consumer", queue)
                return False

            wait_for(consuming, 60, 0.5, f"{worker.nodename} to consume {queue} again")

    def consumed_queues(self, worker: WorkerProcess) -> set[str]:
        """The queues ``worker`` consumes, as it answers ``active_queues``."""
        with self.app.connection_for_write() as conn:
            inspect = self.app.control.inspect(
                destination=[worker.nodename], timeout=30, connection=conn, limit=1
            )
            replies = inspect.active_queues() or {}
        assert replies, f"{worker.nodename} did not answer active_queues"
        return {q["name"] for queues in replies.values() for q in queues}

    def _control(self, worker: WorkerProcess, command: str, *args: Any) -> list[Any]:
        """Call a control command on ``worker`` and return its replies (raise if none)."""
        # A fresh connection each time: a pooled one may be stale after a broker restart.
        with self.app.connection_for_write() as conn:
            replies: list[Any] = getattr(self.app.control, command)(
                *args,
                connection=conn,
                destination=[worker.nodename],
                reply=True,
                limit=1,
                timeout=30,
            )
        assert replies, f"{worker.nodename} did not answer {command}"
        return replies

    def close(self) -> None:
        """Close the client's connections."""
        self.app.close()
        self.quiet_app.close()


# -- metrics helpers ------------------------------------------------------------------------------


def wait_metrics(
    exporter: ExporterProcess,
    expected: Mapping[Sample, float],
    base: Mapping[Sample, float] | None = None,
    timeout: float = EVENT_TIMEOUT,
    worker: WorkerProcess | None = None,
) -> dict[Sample, float]:
    """Poll ``/metrics`` until every expected sample has its value (minus ``base``); return it.

    On timeout, the error lists the samples that did not reach their value, the task counters
    that did move, and the end of the worker's log.
    """
    base = base or {}
    last: dict[Sample, float] = {}

    def reached() -> bool:
        nonlocal last
        last = exporter.metrics()
        return all(
            last.get(key, 0.0) - base.get(key, 0.0) == want for key, want in expected.items()
        )

    try:
        wait_for(reached, timeout, 0.2, "metrics to reach their expected values")
    except TimeoutError:
        missing = {
            f"{name}{dict(sorted(labels))}": (
                last.get((name, labels), 0.0) - base.get((name, labels), 0.0),
                want,
            )
            for (name, labels), want in expected.items()
            if last.get((name, labels), 0.0) - base.get((name, labels), 0.0) != want
        }
        moved = {
            f"{name}{dict(sorted(labels))}": v - base.get((name, labels), 0.0)
            for (name, labels), v in last.items()
            if name.startswith("celery_task_")
            and name.endswith("_total")
            and v != base.get((name, labels), 0.0)
        }
        tail = f"\nworker log:\n{worker.log_tail()}" if worker is not None else ""
        raise AssertionError(
            f"(got, wanted) after {timeout}s: {missing}\ntask counters moved: {moved}{tail}"
        ) from None
    return last


def sample(metric: str, /, **labels: str) -> Sample:
    """The key of one sample in a scrape (``name`` may be one of the labels)."""
    return (metric, frozenset(labels.items()))


def get(samples: Mapping[Sample, float], metric: str, /, **labels: str) -> float:
    """Like :func:`celery_exporter.testing.value`, but ``name`` may be one of the labels."""
    return samples.get(sample(metric, **labels), 0.0)


def wait_heartbeat_after(exporter: ExporterProcess, hostname: str, since: float) -> None:
    """Wait until the exporter gets a heartbeat from ``hostname`` sent after ``since``.

    A worker publishes its task events and heartbeats on one connection, so once a later
    heartbeat is in, every task event the worker sent before it has been counted.
    """

    def newer() -> bool:
        seen = value(
            exporter.metrics(), "celery_worker_last_heartbeat_timestamp_seconds", hostname=hostname
        )
        return seen > since

    wait_for(newer, EVENT_TIMEOUT, 0.2, f"a heartbeat from {hostname}")


def wait_worker_up(exporter: ExporterProcess, worker: WorkerProcess) -> None:
    """Wait until the exporter reports the worker up (its heartbeats arrive)."""

    def up() -> bool:
        if worker.process is not None and worker.process.poll() is not None:
            raise RuntimeError(f"worker {worker.nodename} exited:\n{worker.log_tail()}")
        return value(exporter.metrics(), "celery_worker_up", hostname=worker.nodename) == 1

    wait_for(up, START_TIMEOUT, 0.2, f"worker {worker.nodename} to be up")


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def logdir() -> Iterator[Path]:
    """A directory for worker and exporter output, removed after the session."""
    path = Path(tempfile.mkdtemp(prefix="celery-exporter-it-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server shared by the session (never the system one on 6379)."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def exporter(redis_server: RedisServer, logdir: Path) -> Iterator[ExporterProcess]:
    """The exporter following the shared Redis, ready before any task is sent."""
    proc = ExporterProcess(redis_server.url(), logdir).start()
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def worker(
    redis_server: RedisServer, exporter: ExporterProcess, logdir: Path
) -> Iterator[WorkerProcess]:
    """The shared worker on the default ``celery`` queue, up in the exporter's view."""
    proc = WorkerProcess(redis_server.url(), "main", logdir).start()
    try:
        wait_worker_up(exporter, proc)
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def client(redis_server: RedisServer) -> Iterator[Client]:
    """Sends tasks to the shared Redis."""
    c = Client(redis_server.url())
    yield c
    c.close()


def now() -> float:
    """Wall-clock time, the clock the exporter stamps heartbeats with."""
    return time.time()
