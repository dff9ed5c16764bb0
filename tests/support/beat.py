"""A real ``celery beat`` running :mod:`tests.support.beatapp`, and what it sent to Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import TracebackType

import redis

from tests.support import beatapp
from tests.support.launchers import free_port, terminate
from tests.support.processes import ROOT, START_TIMEOUT, spawn
from tests.support.scrape import Sample, fetch, scrape
from tests.support.waiting import wait_for

#: The message beat logs for each send that raised, followed by the entry's name.
SEND_ERROR_LOG = "Message Error: Couldn't apply scheduled task "


class BeatProcess:
    """``celery beat`` with the exporter installed on a free loopback port, logging to a file."""

    def __init__(
        self,
        broker_url: str,
        workdir: Path,
        scheduler: str | None = None,
        max_entries: int | None = None,
    ) -> None:
        self.broker_url = broker_url
        self.workdir = workdir
        self.scheduler = scheduler
        self.max_entries = max_entries
        self.port = free_port()
        self.log_path = workdir / "beat.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def __enter__(self) -> BeatProcess:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> BeatProcess:
        """Start beat and wait until it serves ``/metrics``."""
        env = {
            **os.environ,
            beatapp.BROKER_ENV: self.broker_url,
            beatapp.PORT_ENV: str(self.port),
        }
        if self.max_entries is not None:
            env[beatapp.MAX_ENTRIES_ENV] = str(self.max_entries)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        args = [
            sys.executable, "-m", "celery", "-A", "tests.support.beatapp", "beat",
            "-s", str(self.workdir / "celerybeat-schedule"), "-l", "info",
            "--pidfile", str(self.workdir / "beat.pid"),
            *(["-S", self.scheduler] if self.scheduler else []),
        ]  # fmt: skip
        self.started_at = time.time()
        self.process = spawn(args, env, self.log_path, "celery beat", new_session=True)
        wait_for(self.answers, START_TIMEOUT, 0.2, "celery beat to serve /metrics")
        return self

    def answers(self) -> bool:
        """Whether ``/metrics`` answers 200 (raises if beat exited)."""
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"celery beat exited:\n{self.log()[-3000:]}")
        try:
            return fetch(self.url, timeout=2)[0] == 200
        except OSError:
            return False

    @property
    def url(self) -> str:
        """The ``/metrics`` URL."""
        return f"http://127.0.0.1:{self.port}/metrics"

    def metrics(self) -> dict[Sample, float]:
        """Scrape ``/metrics``."""
        return scrape(self.url, timeout=10)

    def log(self) -> str:
        """Beat's log so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def send_errors_logged(self, entry: str) -> int:
        """How many sends of ``entry`` beat logged as failed."""
        return self.log().count(SEND_ERROR_LOG + entry + ":")

    def stop(self) -> None:
        """Stop beat (SIGTERM, then SIGKILL) and wait for it."""
        if self.process is not None:
            terminate(self.process, 15)
            self.process = None


def sent_tasks(broker_url: str) -> Counter[str]:
    """The task names of the messages waiting in the beat tests' queue, counted."""
    client = redis.Redis.from_url(broker_url)
    try:
        raw = client.lrange(beatapp.QUEUE, 0, -1)
    finally:
        client.close()
    return Counter(json.loads(message)["headers"]["task"] for message in raw)
