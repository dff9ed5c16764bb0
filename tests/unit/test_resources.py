"""Worker process discovery and the resource collector, on real processes of the test's own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import psutil
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from celery_exporter.resources import ProcessTable, ResourceCollector, is_worker_command, node_name
from celery_exporter.testing import parse_metrics, value, wait_for

HOST = "box.example.com"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["celery", "-A", "proj", "worker"], "celery@box.example.com"),
        (["/venv/bin/celery", "-A", "proj", "worker", "-n", "w1@%h"], "w1@box.example.com"),
        (["python", "-m", "celery", "-A", "p", "worker", "-n", "w1@%n"], "w1@box"),
        (["celery", "worker", "-n", "w1@%d"], "w1@example.com"),
        (["celery", "worker", "-nw2@host"], "w2@host"),
        (["celery", "worker", "--hostname=w3@h%%x"], "w3@h%x"),
        (["celery", "worker", "--hostname", "plain"], "celery@plain"),
        (["celery", "-n", "ignored@x", "worker"], "celery@box.example.com"),
        (["[celeryd: w4@box:MainProcess] -active- (worker -A proj)"], "w4@box"),
        (["[celeryd:", "w5@box:ForkPoolWorker-3]"], "w5@box"),
    ],
)
def test_node_name_as_celery_derives_it(argv: list[str], expected: str) -> None:
    """The node name comes from -n/--hostname after ``worker``, expanded, or Celery's default."""
    assert node_name(argv, hostname=HOST) == expected


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["celery", "-A", "proj", "worker", "-c", "4"], True),
        (["/usr/bin/python3", "/venv/bin/celery", "worker"], True),
        (["python", "-m", "celery", "-A", "proj", "worker"], True),
        (["[celeryd: w@h:ForkPoolWorker-1]"], True),
        (["celery", "-A", "proj", "beat"], False),
        (["celery", "-A", "proj", "inspect", "stats"], False),
        (["celery-exporter", "sidecar", "--match", "worker"], False),
        (["python", "worker.py"], False),
        ([], False),
    ],
)
def test_worker_command_lines(argv: list[str], expected: bool) -> None:
    """Only ``celery ... worker`` command lines (or Celery's process titles) are workers."""
    assert is_worker_command(argv) is expected


#: A main process that keeps two children alive, replacing any that ends.
FORKER = textwrap.dedent(
    """
    import os, signal, sys, time
    def child():
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            began = time.process_time()
            while time.process_time() - began < 0.25:
                pass
            while True:
                time.sleep(1)
        return pid
    children = {child(), child()}
    print("ready", flush=True)
    while True:
        pid, _ = os.wait()
        children.discard(pid)
        children.add(child())
    """
)


@pytest.fixture
def forker() -> Iterator[subprocess.Popen[str]]:
    """A real parent with two children, in its own process group."""
    proc = subprocess.Popen(
        [sys.executable, "-c", FORKER], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def scrape(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The registry's samples."""
    return parse_metrics(generate_latest(registry).decode())


def test_pool_replacement_counted_and_cpu_kept(forker: subprocess.Popen[str]) -> None:
    """A killed pool process counts as a restart; its CPU stays in the pool's counter."""
    table = ProcessTable(main_pid=forker.pid, hostname="w@h")
    registry = CollectorRegistry()
    registry.register(ResourceCollector(table))
    table.refresh()
    labels = {"hostname": "w@h"}
    pool = {"hostname": "w@h", "role": "pool"}
    first = scrape(registry)
    assert value(first, "celery_worker_pool_processes", **labels) == 2
    assert value(first, "celery_worker_pool_process_restarts_total", **labels) == 0
    victim = psutil.Process(forker.pid).children()[0]
    wait_for(
        lambda: victim.cpu_times().user + victim.cpu_times().system >= 0.2,
        10,
        0.05,
        "the child to use its CPU",
    )
    os.kill(victim.pid, signal.SIGKILL)

    def replaced() -> bool:
        table.refresh()
        return value(scrape(registry), "celery_worker_pool_process_restarts_total", **labels) == 1

    wait_for(replaced, 10, 0.05, "the restart to be counted")
    after = scrape(registry)
    assert value(after, "celery_worker_pool_processes", **labels) == 2
    # The two first children used 0.25 s of CPU each (counted in 10 ms ticks); the killed one's is in the reaped time.
    cpu = value(after, "celery_worker_process_cpu_seconds_total", **pool)
    assert cpu >= value(first, "celery_worker_process_cpu_seconds_total", **pool)
    assert cpu >= 0.4
    assert value(after, "celery_exporter_workers_found") == 1
    assert value(after, "celery_exporter_collector_success", collector="resources") == 1


def test_sidecar_table_finds_only_matching_workers(forker: subprocess.Popen[str]) -> None:
    """A table without a main pid finds no worker among processes that are not Celery workers."""
    table = ProcessTable()
    table.refresh()
    assert forker.pid not in table.workers
    assert all(w.main.pid != os.getpid() for w in table.workers.values())
