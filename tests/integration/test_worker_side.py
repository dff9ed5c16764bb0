"""The worker side against real workers: the in-worker exporter and the resource sidecar.

The in-worker exporter runs inside prefork (``-c 2 --max-tasks-per-child 2``, so pool
processes are replaced throughout), solo and threads workers that send no events at all; its
task counters must equal the workload's, exactly as the event-stream daemon counts them. The
sidecar watches two prefork workers with different ``-n`` names from a process of its own.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.support import taskapp
from tests.support.client import Client
from tests.support.expect import wait_metrics
from tests.support.launchers import RedisServer, free_port, terminate
from tests.support.processes import EVENT_TIMEOUT, START_TIMEOUT, WorkerProcess, spawn
from tests.support.scrape import Sample, fetch, scrape, value
from tests.support.waiting import wait_for
from tests.support.workload import (
    FAIL_KEY,
    FAIL_VALUE,
    HARD,
    REJECT,
    RETRY,
    REVOKE_COUNTDOWN,
    REVOKED,
    RUNS,
    SOFT,
    SUCCEED,
    WORKLOAD,
    send_workload,
)

pytestmark = pytest.mark.integration

SLEEP = taskapp.sleep.name
#: The workload of the solo and threads pools: no time limits (solo cannot enforce them).
SMALL = {SUCCEED: 3, FAIL_VALUE: 2, RETRY: 1, REJECT: 1}
MIB = 2**20


class Endpoint:
    """An HTTP server with ``/metrics`` on a loopback port (in a worker, or the sidecar)."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def answers(self) -> bool:
        """Whether ``/healthz`` answers 200."""
        try:
            return fetch(self.base + "/healthz", timeout=2)[0] == 200
        except OSError:
            return False

    def metrics(self) -> dict[Sample, float]:
        """Scrape ``/metrics``."""
        return scrape(self.base + "/metrics", timeout=10)


def labels(name: str, worker: WorkerProcess, **extra: str) -> tuple[tuple[str, str], ...]:
    """The sorted label pairs of one task series of ``worker``."""
    pairs = {"name": name, "queue_name": worker.queues[0], "hostname": worker.nodename, **extra}
    return tuple(sorted(pairs.items()))


def deltas(
    before: Mapping[Sample, float], after: Mapping[Sample, float], family: str
) -> dict[tuple[tuple[str, str], ...], float]:
    """Every non-zero increase of the samples named ``family``."""
    out = {}
    for key in {k for k in (*before, *after) if k[0] == family}:
        change = after.get(key, 0.0) - before.get(key, 0.0)
        if change:
            out[tuple(sorted(key[1]))] = change
    return out


def start_in_worker(
    redis_url: str, logdir: Path, name: str, pool: str, options: tuple[str, ...]
) -> tuple[WorkerProcess, Endpoint]:
    """Start a worker with the in-worker exporter and no events; wait until it serves."""
    port = free_port()
    worker = WorkerProcess(
        redis_url, name, logdir, queues=(name,), options=options, pool=pool, events=False,
        env={taskapp.WORKER_PORT_ENV: str(port)},
    ).start()  # fmt: skip
    endpoint = Endpoint(port)

    def serving() -> bool:
        if worker.process is not None and worker.process.poll() is not None:
            raise RuntimeError(f"worker exited:\n{worker.log_tail()}")
        return endpoint.answers()

    try:
        wait_for(serving, START_TIMEOUT, 0.2, f"the exporter in {worker.nodename}")
    except BaseException:
        worker.stop()
        raise
    return worker, endpoint


def run_workload(
    client: Client,
    worker: WorkerProcess,
    endpoint: Endpoint,
    workload: Mapping[str, int],
    expected: Mapping[Sample, float],
) -> tuple[dict[Sample, float], dict[Sample, float]]:
    """Send ``workload`` to ``worker``'s queue; return scrapes before and once ``expected`` is in."""
    before = endpoint.metrics()
    revoked_id = send_workload(client, workload, queue=worker.queues[0])
    if revoked_id is not None:
        wait_metrics(
            endpoint,
            {sample_of("celery_task_received_total", REVOKED, worker): 1},
            before,
            worker=worker,
        )
        assert client.revoke(revoked_id, worker.nodename), worker.log_tail()
    after = wait_metrics(
        endpoint,
        expected,
        before,
        timeout=EVENT_TIMEOUT + REVOKE_COUNTDOWN,
        worker=worker,
    )
    return before, after


def sample_of(family: str, name: str, worker: WorkerProcess, **extra: str) -> Sample:
    """The key of one task sample of ``worker``."""
    return (family, frozenset(labels(name, worker, **extra)))


def counters_for(
    workload: Mapping[str, int], runs: Mapping[str, int], worker: WorkerProcess
) -> dict[str, dict[tuple[tuple[str, str], ...], int]]:
    """Expected increase of each task counter family for a workload, by label set."""
    failed = {
        labels(FAIL_VALUE, worker, exception="ValueError"): workload.get(FAIL_VALUE, 0),
        labels(FAIL_KEY, worker, exception="KeyError"): workload.get(FAIL_KEY, 0),
        labels(SOFT, worker, exception="SoftTimeLimitExceeded"): workload.get(SOFT, 0),
        labels(HARD, worker, exception="TimeLimitExceeded"): workload.get(HARD, 0),
        labels(REJECT, worker, exception="Reject"): workload.get(REJECT, 0),
    }
    received = {**runs, **({REVOKED: 1} if REVOKED in workload else {})}
    expected = {
        "celery_task_received_total": {labels(n, worker): c for n, c in received.items()},
        "celery_task_started_total": {labels(n, worker): c for n, c in runs.items()},
        "celery_task_succeeded_total": {
            labels(SUCCEED, worker): workload[SUCCEED],
            labels(RETRY, worker): workload.get(RETRY, 0),
        },
        "celery_task_failed_total": failed,
        "celery_task_retried_total": {
            labels(RETRY, worker, exception="RuntimeError"): workload.get(RETRY, 0)
        },
        "celery_task_revoked_total": {labels(REVOKED, worker): workload.get(REVOKED, 0)},
        "celery_task_rejected_total": {labels(REJECT, worker): workload.get(REJECT, 0)},
        "celery_task_timeouts_total": {
            labels(SOFT, worker, kind="soft"): workload.get(SOFT, 0),
            labels(HARD, worker, kind="hard"): workload.get(HARD, 0),
        },
    }
    return {family: {k: v for k, v in want.items() if v} for family, want in expected.items()}


def flat(expected: Mapping[str, Mapping[tuple[tuple[str, str], ...], int]]) -> dict[Sample, float]:
    """The expected counters as samples, for :func:`wait_metrics`."""
    return {
        (family, frozenset(key)): want
        for family, table in expected.items()
        for key, want in table.items()
    }


# -- prefork, with pool processes recycled ----------------------------------------------------


@pytest.fixture(scope="module")
def prefork(redis_server: RedisServer, logdir: Path) -> Iterator[tuple[WorkerProcess, Endpoint]]:
    """A prefork worker with two pool processes, each replaced after two tasks."""
    worker, endpoint = start_in_worker(
        redis_server.url(), logdir, "inworker-prefork", "prefork",
        ("-c", "2", "--max-tasks-per-child", "2"),
    )  # fmt: skip
    try:
        yield worker, endpoint
    finally:
        worker.stop()


@pytest.fixture(scope="module")
def prefork_workload(
    prefork: tuple[WorkerProcess, Endpoint], client: Client
) -> tuple[WorkerProcess, Endpoint, dict[Sample, float], dict[Sample, float]]:
    """The event-stream workload run on the prefork worker; scrapes before and after."""
    worker, endpoint = prefork
    expected = counters_for(WORKLOAD, RUNS, worker)
    before, after = run_workload(client, worker, endpoint, WORKLOAD, flat(expected))
    return worker, endpoint, before, after


def test_prefork_counts_equal_the_workload(prefork_workload) -> None:
    """Across pool recycling and a hard time limit, every task counter equals the workload."""
    worker, _, before, after = prefork_workload
    for family, want in counters_for(WORKLOAD, RUNS, worker).items():
        assert deltas(before, after, family) == dict(want), family
    assert deltas(before, after, "celery_task_sent_total") == {}  # producers' events only


def test_prefork_time_limits_count_once(prefork_workload) -> None:
    """The soft and the hard time limit count once each, the hard one though Celery signals twice."""
    worker, _, before, after = prefork_workload
    assert deltas(before, after, "celery_task_timeouts_total") == {
        labels(SOFT, worker, kind="soft"): 1,
        labels(HARD, worker, kind="hard"): 1,
    }
    assert deltas(before, after, "celery_task_runtime_seconds_count") == {
        labels(SUCCEED, worker, state="succeeded"): 5,
        labels(RETRY, worker, state="succeeded"): 1,
        labels(FAIL_VALUE, worker, state="failed"): 2,
        labels(FAIL_KEY, worker, state="failed"): 1,
        labels(SOFT, worker, state="failed"): 1,
        labels(HARD, worker, state="failed"): 1,
        labels(REJECT, worker, state="failed"): 1,
    }
    hard = after[sample_of("celery_task_runtime_seconds_sum", HARD, worker, state="failed")]
    assert 1.0 <= hard < 5.0  # its time_limit is 1 s; it would sleep 5 s


def test_prefork_gauges_settle(prefork_workload) -> None:
    """After the workload nothing is active or busy, the pool size is 2 and nothing was dropped."""
    worker, endpoint, _, _ = prefork_workload
    after = endpoint.metrics()
    host = worker.nodename
    for name in RUNS:
        assert after[sample_of("celery_tasks_active", name, worker)] == 0, name
    assert value(after, "celery_worker_pool_busy", hostname=host) == 0
    assert value(after, "celery_worker_pool_size", hostname=host) == 2
    assert value(after, "celery_worker_tasks_reserved", hostname=host) == 0
    assert value(after, "celery_worker_up", hostname=host) == 1
    assert value(after, "celery_exporter_worker_events_dropped_total") == 0
    # A process that ran its second task may be between its exit and its replacement.
    wait_for(
        lambda: value(endpoint.metrics(), "celery_worker_pool_processes", hostname=host) == 2,
        EVENT_TIMEOUT, 0.2, "two pool processes",
    )  # fmt: skip


def test_pool_busy_counts_sleeping_tasks(prefork, client: Client) -> None:
    """While two tasks sleep in the two pool processes, pool_busy reads 2; then 0 again."""
    worker, endpoint = prefork
    for _ in range(2):
        client.send(SLEEP, args=(4,), queue=worker.queues[0])
    host = worker.nodename

    def busy(n: int) -> bool:
        samples = endpoint.metrics()
        return (
            value(samples, "celery_worker_pool_busy", hostname=host) == n
            and samples.get(sample_of("celery_tasks_active", SLEEP, worker), 0) == n
        )

    wait_for(lambda: busy(2), EVENT_TIMEOUT, 0.1, "two tasks busy in the pool")
    wait_for(lambda: busy(0), EVENT_TIMEOUT, 0.2, "the pool to be idle again")


# -- solo and threads -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pool", "options", "size"), [("solo", (), 1), ("threads", ("-c", "2"), 2)]
)
def test_solo_and_threads_count_the_workload(
    redis_server: RedisServer,
    logdir: Path,
    client: Client,
    pool: str,
    options: tuple[str, ...],
    size: int,
) -> None:
    """In the solo and threads pools, which run tasks in the main process, counts are exact."""
    runs = {**SMALL, RETRY: 2}
    worker, endpoint = start_in_worker(
        redis_server.url(), logdir, f"inworker-{pool}", pool, options
    )
    try:
        expected = counters_for(SMALL, runs, worker)
        before, after = run_workload(client, worker, endpoint, SMALL, flat(expected))
        for family, want in expected.items():
            assert deltas(before, after, family) == dict(want), family
        assert value(after, "celery_worker_pool_size", hostname=worker.nodename) == size
        assert value(after, "celery_worker_pool_busy", hostname=worker.nodename) == 0
    finally:
        worker.stop()


# -- the sidecar --------------------------------------------------------------------------------


class SidecarProcess:
    """``python -m celery_exporter sidecar`` watching the workers whose names match."""

    def __init__(self, logdir: Path, match: str) -> None:
        self.port = free_port()
        self.endpoint = Endpoint(self.port)
        args = [
            sys.executable, "-m", "celery_exporter", "sidecar", "--host", "127.0.0.1",
            "--port", str(self.port), f"--match={match}", "--sample-interval", "0.2",
            "--log-format", "json",
        ]  # fmt: skip
        self.process = spawn(
            args, {}, logdir / f"sidecar-{self.port}.log", f"sidecar on port {self.port}"
        )
        wait_for(self.endpoint.answers, START_TIMEOUT, 0.1, "the sidecar to listen")

    def stop(self) -> int:
        """SIGTERM the sidecar; return its exit status."""
        return terminate(self.process)


@pytest.fixture(scope="module")
def sidecar_workers(
    redis_server: RedisServer, logdir: Path
) -> Iterator[tuple[WorkerProcess, WorkerProcess]]:
    """Two prefork workers named apart: alpha (2 processes, replaced after 2 tasks), beta (1)."""
    alpha = WorkerProcess(
        redis_server.url(), "sidecar-a", logdir, queues=("sidecar-a",),
        options=("-c", "2", "--max-tasks-per-child", "2"),
    ).start()  # fmt: skip
    beta = WorkerProcess(
        redis_server.url(), "sidecar-b", logdir, queues=("sidecar-b",), options=("-c", "1")
    ).start()
    try:
        yield alpha, beta
    finally:
        alpha.stop()
        beta.stop()


@pytest.fixture(scope="module")
def sidecar(sidecar_workers, logdir: Path) -> Iterator[SidecarProcess]:
    """The sidecar, once it sees both workers with all their pool processes."""
    alpha, beta = sidecar_workers
    proc = SidecarProcess(logdir, r"-n sidecar-[ab]-")

    def both() -> bool:
        samples = proc.endpoint.metrics()
        return (
            value(samples, "celery_worker_pool_processes", hostname=alpha.nodename) == 2
            and value(samples, "celery_worker_pool_processes", hostname=beta.nodename) == 1
        )

    try:
        wait_for(both, START_TIMEOUT, 0.2, "the sidecar to see both workers")
        yield proc
    finally:
        assert proc.stop() == 0


def test_sidecar_labels_two_workers_apart(sidecar, sidecar_workers) -> None:
    """Two workers with different -n names on one machine get a main and a pool series each."""
    alpha, beta = sidecar_workers
    samples = sidecar.endpoint.metrics()
    assert value(samples, "celery_exporter_workers_found") == 2
    hosts = {
        dict(labels)["hostname"]
        for name, labels in samples
        if name == "celery_worker_process_cpu_seconds_total"
    }
    assert hosts == {alpha.nodename, beta.nodename}
    for worker in (alpha, beta):
        for role in ("main", "pool"):
            key = {"hostname": worker.nodename, "role": role}
            assert value(samples, "celery_worker_process_resident_memory_bytes", **key) > 0
            assert value(samples, "celery_worker_process_threads", **key) >= 1
            assert value(samples, "celery_worker_process_open_fds", **key) >= 3
    assert value(samples, "celery_worker_pool_process_restarts_total", hostname=beta.nodename) == 0


def test_sidecar_counts_restarts_and_keeps_cpu(sidecar, sidecar_workers, client: Client) -> None:
    """Replaced pool processes are counted, and the pool's CPU counter keeps their CPU."""
    alpha, _ = sidecar_workers
    cpu_key = (
        "celery_worker_process_cpu_seconds_total",
        frozenset({("hostname", alpha.nodename), ("role", "pool")}),
    )
    start = sidecar.endpoint.metrics()
    tasks, burn = 6, 0.3
    with tempfile.TemporaryDirectory() as directory:
        for _ in range(tasks):
            client.send(taskapp.burn.name, args=(burn, directory), queue=alpha.queues[0])
        seen: list[float] = []

        def all_ran() -> bool:
            seen.append(sidecar.endpoint.metrics()[cpu_key])
            runs = [p.read_text().count("run") for p in Path(directory).iterdir()]
            return sum(runs) == tasks

        wait_for(all_ran, EVENT_TIMEOUT, 0.1, "the burn tasks to run")
        runs = [p.read_text().count("run") for p in Path(directory).iterdir()]
    ended = sum(1 for n in runs if n == 2)  # --max-tasks-per-child 2: these processes exit
    restarts = (
        "celery_worker_pool_process_restarts_total",
        frozenset({("hostname", alpha.nodename)}),
    )
    processes = ("celery_worker_pool_processes", frozenset({("hostname", alpha.nodename)}))

    def settled() -> bool:
        # The replacements start, and the ended processes are reaped, on their own time: wait
        # for the sidecar's next refreshes to see all of it rather than assume how fast.
        now = sidecar.endpoint.metrics()
        seen.append(now[cpu_key])
        return (
            now[restarts] - start[restarts] == ended
            and now[processes] == 2
            and now[cpu_key] - start[cpu_key] >= tasks * burn
        )

    wait_for(settled, EVENT_TIMEOUT, 0.2, f"{ended} pool restarts and 2 live pool processes")
    end = sidecar.endpoint.metrics()
    assert ended >= 2  # six tasks over processes that each take two at most
    assert seen == sorted(seen), "the pool CPU counter went down"
    assert end[restarts] - start[restarts] == ended
    assert end[cpu_key] - start[cpu_key] >= tasks * burn
    assert end[processes] == 2


def test_allocation_raises_the_pool_max_rss(sidecar, sidecar_workers, client: Client) -> None:
    """A task holding 200 MiB raises its worker's largest pool process RSS by at least that."""
    _, beta = sidecar_workers
    family = "celery_worker_pool_process_max_resident_memory_bytes"
    before = value(sidecar.endpoint.metrics(), family, hostname=beta.nodename)
    client.send(taskapp.allocate.name, args=(200, 8), queue=beta.queues[0])
    wait_for(
        lambda: value(sidecar.endpoint.metrics(), family, hostname=beta.nodename)
        >= before + 200 * MIB,
        EVENT_TIMEOUT, 0.2, "the pool's max RSS to grow by 200 MiB",
    )  # fmt: skip


def test_prefork_counts_survive_a_broker_restart(logdir: Path) -> None:
    """After Redis restarts under a prefork worker, its pool processes' events still count."""
    with RedisServer() as broker:
        worker, endpoint = start_in_worker(
            broker.url(), logdir, "inworker-restart", "prefork", ("-c", "2")
        )
        client = Client(broker.url())
        try:
            queue = worker.queues[0]
            done = sample_of("celery_task_succeeded_total", SUCCEED, worker)
            for i in range(3):
                client.send(SUCCEED, args=(i,), queue=queue)
            wait_for(lambda: endpoint.metrics().get(done) == 3, EVENT_TIMEOUT, 0.2, "3 tasks")
            broker.stop()
            broker.start()
            # More tasks than the socket's queue holds (10 datagrams), once the worker is back.
            for i in range(20):
                client.send(SUCCEED, args=(i,), queue=queue)
            wait_for(
                lambda: endpoint.metrics().get(done) == 23,
                EVENT_TIMEOUT * 2, 0.2, "23 tasks after the restart",
            )  # fmt: skip
            after = endpoint.metrics()
            assert after[sample_of("celery_task_started_total", SUCCEED, worker)] == 23
            assert value(after, "celery_exporter_worker_events_dropped_total") == 0
        finally:
            client.close()
            worker.stop()
