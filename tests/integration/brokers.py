"""Fixtures and helpers for the broker and worker-pool collector tests.

Workers with extra command-line options (``--concurrency``, ``--autoscale``,
``--prefetch-multiplier``), one private RabbitMQ node per session, and waiting on a collector's
samples. Test modules import the fixtures they use from here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from celery_exporter.testing import RabbitMQServer, Sample, wait_for
from tests.integration import taskapp
from tests.integration.conftest import ROOT, ExporterProcess, WorkerProcess

#: Generous: two CPUs are shared with other jobs and each inspect round takes about 3 s.
COLLECT_TIMEOUT = 90.0
#: Short intervals, so the collectors answer quickly in tests.
FAST = ("--queue-interval", "0.3s", "--inspect-interval", "1s")


class OptionWorker(WorkerProcess):
    """A prefork worker whose concurrency options are given (instead of ``-c 2``)."""

    def __init__(
        self,
        broker_url: str,
        name: str,
        logdir: Path,
        queues: Sequence[str],
        options: Sequence[str],
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(broker_url, name, logdir, queues)
        self.options = list(options)
        self.env = dict(env or {})

    def start(self) -> OptionWorker:
        """Start the worker with its options."""
        env = {**os.environ, **self.env, taskapp.BROKER_ENV: self.broker_url}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        args = [
            sys.executable, "-m", "celery", "-A", "tests.integration.taskapp", "worker",
            "-P", "prefork", *self.options, "-E", "-n", self.nodename,
            "-Q", ",".join(self.queues), "-l", "info", "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self


def wait_samples(
    exporter: ExporterProcess,
    expected: Mapping[Sample, float],
    timeout: float = COLLECT_TIMEOUT,
    absent: Sequence[Sample] = (),
) -> dict[Sample, float]:
    """Poll ``/metrics`` until every expected sample has exactly its value; return the scrape."""
    last: dict[Sample, float] = {}

    def reached() -> bool:
        nonlocal last
        last = exporter.metrics()
        return all(last.get(k) == v for k, v in expected.items()) and not any(
            k in last for k in absent
        )

    try:
        wait_for(reached, timeout, 0.2, "collector samples")
    except TimeoutError:
        got = {f"{n}{dict(sorted(lb))}": (last.get((n, lb)), v) for (n, lb), v in expected.items()}
        raise AssertionError(
            f"(got, wanted) after {timeout}s: {got}; present but unwanted: "
            f"{[k for k in absent if k in last]}\nexporter output:\n{exporter.output()[-3000:]}"
        ) from None
    return last


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitMQServer]:
    """One private RabbitMQ node with the management plugin for the session."""
    with RabbitMQServer() as server:
        yield server
