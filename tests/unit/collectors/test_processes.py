"""Worker process discovery and the resource collector, on real processes of the test's own."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from celery_exporter.collectors.base import Collectors
from celery_exporter.collectors.process_table import ProcessTable, is_worker_command, node_name
from celery_exporter.collectors.processes import ResourceCollector
from tests.support import parse_metrics, value, wait_for

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
    registry.register(Collectors([ResourceCollector(table)]))
    table.refresh()
    labels = {"hostname": "w@h"}
    pool = {"hostname": "w@h", "role": "pool"}
    first = scrape(registry)
    assert value(first, "celery_worker_pool_processes", **labels) == 2
    assert value(first, "celery_worker_pool_process_restarts_total", **labels) == 0
    children = psutil.Process(forker.pid).children()
    # Both children, not only the one killed: on a busy machine the other may not yet have had
    # its share of CPU, and the sum checked below would fall short.
    wait_for(
        lambda: all(c.cpu_times().user + c.cpu_times().system >= 0.2 for c in children),
        10,
        0.05,
        "both children to use their CPU",
    )
    victim = children[0]
    os.kill(victim.pid, signal.SIGKILL)

    def replaced() -> bool:
        table.refresh()
        got = scrape(registry)
        return (
            value(got, "celery_worker_pool_process_restarts_total", **labels) == 1
            and value(got, "celery_worker_pool_processes", **labels) == 2
        )

    wait_for(replaced, 10, 0.05, "the restart to be counted and the child replaced")
    after = scrape(registry)
    # The two first children used at least 0.2 s of CPU each (counted in 10 ms ticks); the killed
    # one's is in the reaped time.
    cpu = value(after, "celery_worker_process_cpu_seconds_total", **pool)
    assert cpu >= value(first, "celery_worker_process_cpu_seconds_total", **pool)
    assert cpu >= 0.4
    assert value(after, "celery_exporter_workers_found") == 1
    assert value(after, "celery_exporter_collector_success", collector="resources") == 1


#: A fake ``celery ... worker`` main process: forks one child (same command line), both sleep.
FAKE_CELERY = textwrap.dedent(
    """\
    #!{python}
    import os, sys, time
    if os.fork() == 0:
        while True:
            time.sleep(1)
    print("ready", flush=True)
    while True:
        time.sleep(1)
    """
)


@pytest.fixture
def fake_celery(tmp_path: Path) -> Iterator[Callable[[str], subprocess.Popen[str]]]:
    """Start fake workers named by ``-n``: a main and one pool process each, own group each."""
    script = tmp_path / "celery"
    script.write_text(FAKE_CELERY.format(python=sys.executable))
    script.chmod(0o755)
    started: list[subprocess.Popen[str]] = []

    def start(node: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, str(script), "worker", "-n", node],
            stdout=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        started.append(proc)
        return proc

    yield start
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def watched(table: ProcessTable, node: str) -> list[tuple[int, int]]:
    """(main pid, pool processes) of every watched worker named ``node``."""
    table.refresh()
    return [(pid, len(w.pool)) for pid, w in table.workers.items() if w.hostname == node]


def test_repeated_node_name_is_watched_once_the_first_has_gone(
    fake_celery: Callable[[str], subprocess.Popen[str]],
) -> None:
    """Of two mains with one -n name the first is watched, then the second, never a pool child."""
    table = ProcessTable(match=re.compile(r"-n dup-\d+@h"))
    node = f"dup-{os.getpid()}@h"
    first = fake_celery(node)
    assert watched(table, node) == [(first.pid, 1)]
    second = fake_celery(node)  # started while the first is watched: a restart's overlap
    assert watched(table, node) == [(first.pid, 1)]
    assert table.errors == {"duplicate_hostname": 1}
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    wait_for(lambda: watched(table, node) == [(second.pid, 1)], 10, 0.05, "the second main")
    assert table.errors == {"duplicate_hostname": 1}  # counted once, not on every refresh


def test_orphaned_pool_process_is_not_taken_for_a_worker(
    fake_celery: Callable[[str], subprocess.Popen[str]],
) -> None:
    """When a main process dies, its pool process (reparented) does not become the worker."""
    table = ProcessTable(match=re.compile(r"-n orphan-\d+@h"))
    node = f"orphan-{os.getpid()}@h"
    main = fake_celery(node)
    assert watched(table, node) == [(main.pid, 1)]
    os.kill(main.pid, signal.SIGKILL)  # the pool process lives on
    main.wait(10)
    wait_for(lambda: watched(table, node) == [], 10, 0.05, "the worker to be gone")
    table.refresh()
    assert watched(table, node) == []


def test_other_pools_children_are_not_pool_processes(forker: subprocess.Popen[str]) -> None:
    """In-worker mode without prefork, the main's children (tasks' programs) are no pool."""
    table = ProcessTable(main_pid=forker.pid, hostname="w@h", pool_children=False)
    table.refresh()
    victim = psutil.Process(forker.pid).children()[0]
    os.kill(victim.pid, signal.SIGKILL)
    wait_for(lambda: not victim.is_running() or victim.status() == "zombie", 10, 0.05)
    table.refresh()
    worker = table.workers[forker.pid]
    assert (len(worker.pool), worker.restarts) == (0, 0)


#: A main process whose one child runs a CPU-bound program of its own and waits for it.
SPAWNER = textwrap.dedent(
    """
    import os, subprocess, sys, time
    if os.fork() == 0:
        burn = "import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.4: pass"
        subprocess.run([sys.executable, "-c", burn], check=True)
        print("ready", flush=True)
        while True:
            time.sleep(1)
    while True:
        time.sleep(1)
    """
)


def test_pool_cpu_includes_programs_the_tasks_ran() -> None:
    """CPU of a program a pool process ran and reaped counts while that pool process lives."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SPAWNER], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        table = ProcessTable(main_pid=proc.pid, hostname="w@h")
        registry = CollectorRegistry()
        registry.register(ResourceCollector(table))
        table.refresh()
        pool = {"hostname": "w@h", "role": "pool"}
        assert value(scrape(registry), "celery_worker_process_cpu_seconds_total", **pool) >= 0.35
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_match_picks_the_main_processes_it_names(
    fake_celery: Callable[[str], subprocess.Popen[str]],
) -> None:
    """Of two workers only the one --match names is watched, its pool process with it."""
    tag = os.getpid()
    table = ProcessTable(match=re.compile(rf"-n wanted-{tag}@h"))
    wanted = fake_celery(f"wanted-{tag}@h")
    fake_celery(f"other-{tag}@h")
    table.refresh()
    mine = {
        w.hostname: (pid, len(w.pool)) for pid, w in table.workers.items() if str(tag) in w.hostname
    }
    assert mine == {f"wanted-{tag}@h": (wanted.pid, 1)}


def test_unreadable_worker_reads_success_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that cannot be read: its error is counted and the collector's success is 0."""
    table = ProcessTable(main_pid=os.getpid(), hostname="w@h")
    table.refresh()

    def denied(worker: object) -> None:
        raise psutil.AccessDenied(os.getpid())

    monkeypatch.setattr("celery_exporter.collectors.processes.read_worker", denied)
    registry = CollectorRegistry()
    registry.register(Collectors([ResourceCollector(table)]))
    got = scrape(registry)
    assert value(got, "celery_exporter_collector_success", collector="resources") == 0
    assert value(got, "celery_exporter_process_read_errors_total", reason="access_denied") == 1
    assert value(got, "celery_exporter_workers_found") == 1
