"""Private brokers and scrape helpers for the test suite, the benchmarks and the demo.

Nothing in the exporter imports this module. It starts throw-away ``redis-server`` processes on
free loopback ports and reads ``/metrics`` into plain dicts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")
S = TypeVar("S", bound="_PrivateServer")
Sample = tuple[str, frozenset[tuple[str, str]]]

RABBITMQ_MISSING = (
    "rabbitmq-server was not found. Install it (Debian/Ubuntu: sudo apt-get install "
    "rabbitmq-server), or run 'make test', which installs it."
)
#: Where Debian keeps the real rabbitmq-server script (/usr/sbin's switches to the rabbitmq user).
RABBITMQ_SCRIPTS = ("/usr/lib/rabbitmq/bin/rabbitmq-server", "/usr/sbin/rabbitmq-server")
REDIS_MISSING = (
    "redis-server was not found on PATH. Install it (Debian/Ubuntu: sudo apt-get install "
    "redis-server; macOS: brew install redis), or run 'make test' / 'make demo', which install it."
)


class ManualClock:
    """A clock for injecting into the state: it only moves when told to."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += seconds


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], T], timeout: float, interval: float = 0.1, what: str = "") -> T:
    """Call ``check`` until it returns something truthy; raise TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T = check()
    while not last:
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(interval)
        last = check()
    return last


class _PrivateServer:
    """A throw-away server in its own temporary directory, usable as a context manager."""

    dir: Path

    def start(self: S) -> S:
        """Start the server and wait until it answers."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the server."""
        raise NotImplementedError

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisServer(_PrivateServer):
    """A private ``redis-server`` on a free loopback port that keeps nothing on disk."""

    def __init__(self, port: int | None = None, extra_args: Sequence[str] = ()) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(REDIS_MISSING)
        self.binary = binary
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.dir = Path(tempfile.mkdtemp(prefix="celery-exporter-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        """The broker URL of database ``db``."""
        return f"redis://{self.host}:{self.port}/{db}"

    def start(self) -> RedisServer:
        """Start the server (again, on the same port) and wait until it answers PING."""
        args = [
            self.binary, "--port", str(self.port), "--bind", self.host, "--save", "",
            "--appendonly", "no", "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log"),
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.ping, timeout=10, interval=0.05, what=f"redis-server on port {self.port}")
        return self

    def ping(self) -> bool:
        """Whether the server answers PING."""
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server and wait for it to exit."""
        if self.process is not None:
            terminate(self.process, 10)
        self.process = None


class RabbitMQServer(_PrivateServer):
    """A private RabbitMQ node with the management plugin, on free loopback ports."""

    def __init__(self) -> None:
        found = [os.environ.get("RABBITMQ_SERVER", ""), *RABBITMQ_SCRIPTS]
        script = next((p for p in found if p and os.access(p, os.X_OK)), None)
        if script is None:
            raise RuntimeError(RABBITMQ_MISSING)
        self.script = script
        self.host = "127.0.0.1"
        self.port = free_port()
        self.management_port = free_port()
        self.dist_port = free_port()
        self.node = f"celery-exporter-{self.port}@localhost"
        self.dir = Path(tempfile.mkdtemp(prefix="celery-exporter-rabbitmq-"))
        (self.dir / "enabled_plugins").write_text("[rabbitmq_management].\n")
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {self.host}:{self.port}\n"
            f"management.tcp.ip = {self.host}\n"
            f"management.tcp.port = {self.management_port}\n"
            "loopback_users = none\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, vhost: str = "/") -> str:
        """The broker URL (user and password guest)."""
        return f"amqp://guest:guest@{self.host}:{self.port}/{urllib.parse.quote(vhost, safe='')}"

    @property
    def management_url(self) -> str:
        """The management API's base URL."""
        return f"http://{self.host}:{self.management_port}"

    def start(self, timeout: float = 90.0) -> RabbitMQServer:
        """Start the node (again, on the same ports) and wait until AMQP and the API answer."""
        env = {
            **os.environ,
            "HOME": str(self.dir),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.dir / "pid"),
        }
        log = (self.dir / "server.log").open("ab")
        self.process = subprocess.Popen(
            [self.script], env=env, stdout=log, stderr=log, start_new_session=True
        )
        wait_for(self.ready, timeout=timeout, interval=0.25, what=f"RabbitMQ on {self.port}")
        return self

    def ready(self) -> bool:
        """Whether AMQP accepts connections and the management API answers."""
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"rabbitmq-server exited; see {self.dir / 'server.log'}")
        try:
            socket.create_connection((self.host, self.port), timeout=0.5).close()
            request = urllib.request.Request(f"{self.management_url}/api/overview")
            request.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")  # guest:guest
            with urllib.request.urlopen(request, timeout=2) as response:
                return int(response.status) == 200
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the node and everything it started, and wait for them."""
        if self.process is None:
            return
        for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process = None


def terminate(process: subprocess.Popen[bytes], grace: float = 15.0) -> int:
    """SIGTERM a process, SIGKILL it if it outlives ``grace`` seconds; return its exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    return process.returncode


def fetch(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``url``; return the status and body (also for error statuses)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def parse_metrics(text: str) -> dict[Sample, float]:
    """Map ``(sample name, labels)`` to value for every sample of an exposition."""
    samples: dict[Sample, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape(url: str, timeout: float = 5.0) -> dict[Sample, float]:
    """Fetch and parse a ``/metrics`` page."""
    status, body = fetch(url, timeout)
    if status != 200:
        raise RuntimeError(f"{url} answered {status}")
    return parse_metrics(body.decode())


def value(samples: Mapping[Sample, float], name: str, /, **labels: str) -> float:
    """The value of one sample, or 0 when it is absent."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Mapping[Sample, float], name: str, /, **labels: str) -> float:
    """The sum of every sample named ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, lbls), v in samples.items() if n == name and wanted <= lbls)


# -- scripted Celery signals, for the in-worker exporter ---------------------------------------


@dataclass(eq=False)
class SignalPool:
    """What the in-worker exporter reads of a worker's pool."""

    limit: int = 2


@dataclass(eq=False)
class SignalWorker:
    """What the in-worker exporter reads of ``worker_init``'s sender."""

    app: Any
    hostname: str = "w1@box"
    pool: SignalPool = field(default_factory=SignalPool)
    autoscaler: Any = None


@dataclass(eq=False)
class SignalContext:
    """A task's ``request`` in the process that runs it."""

    id: str
    delivery_info: dict[str, Any] = field(default_factory=lambda: {"routing_key": "celery"})


@dataclass(eq=False)
class SignalTask:
    """The task a run's signals name."""

    name: str
    request: SignalContext


@dataclass(eq=False)
class SignalRequest:
    """``task_received``'s request."""

    id: str
    name: str
    delivery_info: dict[str, Any] = field(default_factory=lambda: {"routing_key": "celery"})
    eta: str | None = None


#: The state ``task_postrun`` reports for each outcome of :func:`send_task_run`.
_POSTRUN_STATE = {
    "success": "SUCCESS",
    "failure": "FAILURE",
    "retry": "RETRY",
    "reject": "REJECTED",
}


def send_task_run(
    name: str,
    task_id: str,
    outcome: str = "success",
    exc: BaseException | None = None,
    queue: str = "celery",
) -> None:
    """Send, through Celery's real signals, what a worker sends for one run of a task.

    ``outcome`` is ``success``, ``failure`` (with ``exc``), ``retry`` (``exc`` is the Retry) or
    ``reject`` (``exc`` is the Reject).
    """
    from celery import signals

    info = {"routing_key": queue}
    task = SignalTask(name, SignalContext(task_id, dict(info)))
    signals.task_received.send(sender=None, request=SignalRequest(task_id, name, dict(info)))
    signals.task_prerun.send(sender=task, task_id=task_id, task=task, args=(), kwargs={})
    if outcome == "success":
        signals.task_success.send(sender=task, result=None)
    elif outcome == "failure":
        signals.task_failure.send(sender=task, task_id=task_id, exception=exc)
    elif outcome == "retry":
        signals.task_retry.send(sender=task, request=task.request, reason=exc)
    retval = exc if outcome == "reject" else None
    signals.task_postrun.send(
        sender=task, task_id=task_id, task=task, state=_POSTRUN_STATE[outcome], retval=retval
    )
