"""The exporter and Celery workers as child processes of the tests, each writing a log file.

Everything runs on 127.0.0.1 and free ports: Celery prefork (or other pool) workers running
:mod:`tests.support.taskapp`, and ``python -m celery_exporter``. Workers run in their own
session, so stopping one kills its whole process group, pool children included. Every process
started here registers its log with :data:`tests.support.logs.LOGS`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support import taskapp
from tests.support.launchers import free_port, terminate
from tests.support.logs import LOGS
from tests.support.scrape import Sample, fetch, scrape
from tests.support.waiting import wait_for

#: The repository root: workers import ``tests.support.taskapp`` from here.
ROOT = Path(__file__).resolve().parents[2]
#: Generous limits: other jobs share this machine's CPUs.
START_TIMEOUT = 60.0
EVENT_TIMEOUT = 60.0


def now() -> float:
    """Wall-clock time, the clock the exporter stamps heartbeats with."""
    return time.time()


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
    args: Sequence[str],
    env: Mapping[str, str],
    log_path: Path,
    label: str,
    new_session: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a process from the repository root, its output appended to ``log_path``."""
    LOGS.register(log_path, label)
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
            sys.executable, "-m", "celery", "-A", "tests.support.taskapp", "worker",
            "-P", self.pool, *self.options, *(["-E"] if self.events else []), "-n", self.nodename,
            "-Q", ",".join(self.queues), "-l", "info", "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        self.process = spawn(args, env, self.log_path, f"worker {self.nodename}", new_session=True)
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
        self.process = spawn(args, env, self.log_path, f"exporter on port {self.port}")
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
