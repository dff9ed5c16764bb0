"""Throw-away brokers on free loopback ports: ``redis-server`` and ``rabbitmq-server``.

Each server runs in a temporary directory of its own, keeps nothing after it stops and
registers its log with :data:`tests.support.logs.LOGS`. Reads ``RABBITMQ_SERVER`` (the
rabbitmq-server script to run, when it is not where Debian puts it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from tests.support.logs import LOGS, LogFile
from tests.support.waiting import wait_for

S = TypeVar("S", bound="_PrivateServer")

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


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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


class _PrivateServer:
    """A throw-away server in its own temporary directory, usable as a context manager."""

    dir: Path
    logs: list[LogFile]

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
        for log in self.logs:
            log.close()
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
        self.logs = []
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        """The broker URL of database ``db``."""
        return f"redis://{self.host}:{self.port}/{db}"

    def start(self) -> RedisServer:
        """Start the server (again, on the same port) and wait until it answers PING."""
        log = self.dir / "redis.log"
        args = [
            self.binary, "--port", str(self.port), "--bind", self.host, "--save", "",
            "--appendonly", "no", "--dir", str(self.dir), "--logfile", str(log),
            *self.extra_args,
        ]  # fmt: skip
        self.logs = [LOGS.register(log, f"redis-server on port {self.port}")]
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
        self.logs = []
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
        output = self.dir / "server.log"
        self.logs = [
            LOGS.register(output, f"rabbitmq-server on port {self.port}"),
            LOGS.register(self.dir / "log" / f"{self.node}.log", f"RabbitMQ node {self.node}"),
        ]
        with output.open("ab") as log:
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
