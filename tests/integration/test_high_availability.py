"""Two exporter replicas de-duplicated by the shipped recording rules on a real Prometheus.

The documented high-availability setup: a private Redis, one prefork worker sending events and
two event-stream exporters on one cluster, both scraped by Prometheus as job
``celery-exporter`` (1 s scrape and evaluation intervals, the shipped rule files). A steady
workload of succeeding tasks runs for about 40 s; in its middle one replica is stopped with
SIGTERM for about 10 s and started again on the same port, so its counters restart from 0 while
the other replica's keep going. The shipped succeeded-rate rule (and the same expression over a
short range, where a double count or a dip would show at once) must neither dip to zero nor
double, and the de-duplicated counter's ``increase()`` must match the tasks sent.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from tests.support.client import Client
from tests.support.dashboards import load_generator
from tests.support.expect import wait_worker_up
from tests.support.launchers import RedisServer, free_port
from tests.support.processes import ROOT, ExporterProcess, WorkerProcess
from tests.support.prometheus import PROMETHEUS_MISSING, PrometheusServer, prometheus_binary
from tests.support.stack import connected_client, running_exporter, running_worker
from tests.support.waiting import wait_for
from tests.support.workload import SUCCEED, Q

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(prometheus_binary() is None, reason=PROMETHEUS_MISSING),
]

PROM_DIR = ROOT / "deploy" / "prometheus"
RECORDING_RULES = PROM_DIR / "rules" / "celery-recording.yml"
#: The shipped rule whose values the test follows.
SUCCEEDED_RATE = "name_queue_name:celery_task_succeeded:rate5m"
#: The rule's range; the short variant replaces it with SHORT_RANGE.
RULE_RANGE = "[5m]"
RULE_RANGE_SECONDS = 300.0
#: Short enough that a double count or a dip shows within seconds, long enough (15 scrapes) that
#: a worker catching up after a stall on a loaded machine does not look like one.
SHORT_RANGE_SECONDS = 15
#: Tasks sent per second, and how many: about 40 s of workload.
RATE = 4.0
TASKS = 160
#: When the replica is stopped (seconds into the workload) and for how long.
OUTAGE_AT = 12.0
OUTAGE_SECONDS = 10.0
#: Samples before this many seconds into the workload are not checked: each replica's series
#: needs two scrapes before rate() has a value.
WARM_UP = 5.0
#: A rate sample may exceed the true rate by this factor (a double count is about 2).
MAX_FACTOR = 1.5
#: The de-duplicated increase may differ from the tasks sent by this share (see the test).
INCREASE_TOLERANCE = 0.15
#: How long Prometheus and the exporters may take to catch up at each step.
PROMETHEUS_TIMEOUT = 30.0


class Stack(NamedTuple):
    """Everything the test runs, started."""

    worker: WorkerProcess
    stays: ExporterProcess
    restarts: ExporterProcess
    prometheus: PrometheusServer
    client: Client


class Run(NamedTuple):
    """What the workload did and when (wall-clock seconds)."""

    sent_at: list[float]
    start: float
    end: float
    stopped_at: float
    restarted_at: float


@pytest.fixture(scope="module")
def stack(logdir: Path) -> Iterator[Stack]:
    """Redis, a worker, two exporter replicas and Prometheus; all stopped in any case."""
    with contextlib.ExitStack() as resources:
        redis = resources.enter_context(RedisServer())
        client = resources.enter_context(connected_client(redis.url()))
        stays = resources.enter_context(running_exporter(redis.url(), logdir))
        restarts = resources.enter_context(running_exporter(redis.url(), logdir))
        worker = resources.enter_context(
            running_worker(WorkerProcess(redis.url(), "ha", logdir), stays)
        )
        wait_worker_up(restarts, worker)
        targets = {
            "celery-exporter": [f"127.0.0.1:{stays.port}", f"127.0.0.1:{restarts.port}"],
            "celery-worker": [],
            "celery-beat": [],
        }
        # No Alertmanager: alerts are not under test, and nothing listens on this port.
        prometheus = resources.enter_context(
            PrometheusServer(PROM_DIR / "prometheus.yml", targets, f"127.0.0.1:{free_port()}")
        )

        def both_up() -> bool:
            health = [t["health"] for t in prometheus.targets()]
            return health == ["up", "up"]

        wait_for(both_up, PROMETHEUS_TIMEOUT, 0.2, "both replicas to be scraped")
        yield Stack(worker, stays, restarts, prometheus, client)


def restart_replica(replica: ExporterProcess, at: float, times: dict[str, float]) -> None:
    """At wall-clock ``at``, SIGTERM ``replica``; OUTAGE_SECONDS later start it again."""
    time.sleep(max(0.0, at - time.time()))
    times["exit_status"] = replica.stop() or 0
    times["stopped_at"] = time.time()
    time.sleep(OUTAGE_SECONDS)
    replica.start()
    replica.wait_ready()
    times["restarted_at"] = time.time()


@pytest.fixture(scope="module")
def run(stack: Stack) -> Run:
    """Send TASKS succeeding tasks at RATE a second, one replica restarting in the middle."""
    start = time.time()
    times: dict[str, float] = {}
    failure: list[BaseException] = []

    def outage() -> None:
        try:
            restart_replica(stack.restarts, start + OUTAGE_AT, times)
        except BaseException as exc:  # re-raised below, in the test's thread
            failure.append(exc)

    thread = threading.Thread(target=outage, name="replica-outage", daemon=True)
    thread.start()
    sent_at: list[float] = []
    due = start
    for i in range(TASKS):
        time.sleep(max(0.0, due - time.time()))
        stack.client.send(SUCCEED, args=(i,))
        sent_at.append(time.time())
        # A late send does not catch up in a burst: the pace restarts from now.
        due = max(due, time.time()) + 1 / RATE
    end = time.time()
    thread.join(OUTAGE_AT + OUTAGE_SECONDS + PROMETHEUS_TIMEOUT)
    if failure:
        raise failure[0]
    assert not thread.is_alive(), stack.restarts.output()[-3000:]
    assert times["exit_status"] == 0, stack.restarts.output()[-3000:]
    assert times["restarted_at"] < end, "the replica came back after the workload ended"
    run = Run(sent_at, start, end, times["stopped_at"], times["restarted_at"])
    # Every task is done, scraped from the replica that stayed up, and recorded.
    prometheus = stack.prometheus
    counted = f'celery_task_succeeded_total{{instance="127.0.0.1:{stack.stays.port}"}}'

    def all_scraped() -> bool:
        result = prometheus.query(counted)
        return bool(result) and float(result[0]["value"][1]) == TASKS

    wait_for(all_scraped, PROMETHEUS_TIMEOUT, 0.5, f"{counted} to reach {TASKS}")
    time.sleep(2.0)  # one more evaluation of the rules after that scrape
    return run


def query_range(prometheus: PrometheusServer, expr: str, start: float, end: float) -> list[Any]:
    """The (time, value) samples of the one series ``expr`` gives, every second in the range."""
    data = prometheus.api(
        "query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step="1"
    )
    series = data["result"]
    assert len(series) == 1, f"{expr} gave {len(series)} series: {series}"
    return [(float(t), float(v)) for t, v in series[0]["values"]]


def short_range_expr() -> str:
    """The shipped succeeded-rate rule's expression with its range shortened."""
    groups = yaml.safe_load(RECORDING_RULES.read_text())["groups"]
    (expr,) = [r["expr"] for g in groups for r in g["rules"] if r.get("record") == SUCCEEDED_RATE]
    assert RULE_RANGE in expr, expr
    return str(expr).replace(RULE_RANGE, f"[{SHORT_RANGE_SECONDS}s]")


def selector(expr: str) -> str:
    """``expr`` restricted to the workload's task (the rule's input metric gets the labels)."""
    labels = f'{{name="{SUCCEED}",queue_name="{Q}"}}'
    return expr.replace("celery_task_succeeded_total", f"celery_task_succeeded_total{labels}")


def test_the_replica_really_restarted_from_zero(stack: Stack, run: Run) -> None:
    """Prometheus saw the restarted replica down, then its counter reset and counting again."""
    prometheus = stack.prometheus
    instance = f'instance="127.0.0.1:{stack.restarts.port}"'
    window = f"[{int(time.time() - run.start) + 1}s]"
    down = prometheus.query(f'min_over_time(up{{job="celery-exporter",{instance}}}{window})')
    assert [float(s["value"][1]) for s in down] == [0.0]
    # The workload's series: until its first inspect reply the restarted replica does not know
    # the worker's queue, so a task it counts in that first second or so goes under the
    # default queue, a series of its own.
    counter = f'celery_task_succeeded_total{{{instance},name="{SUCCEED}",queue_name="{Q}"}}'
    assert [float(s["value"][1]) for s in prometheus.query(f"resets({counter}{window})")] == [1.0]
    after = float(prometheus.query(counter)[0]["value"][1])
    assert 0 < after < TASKS


def test_recorded_rate_never_dips_or_doubles(stack: Stack, run: Run) -> None:
    """The succeeded-rate rule stays above 0 and below 1.5x the tasks sent so far over 5 min."""
    samples = query_range(
        stack.prometheus, f'{SUCCEEDED_RATE}{{name="{SUCCEED}"}}', run.start + WARM_UP, run.end
    )
    assert len(samples) >= int(run.end - run.start - WARM_UP) - 1
    bad = []
    for t, v in samples:
        # Over 5 minutes, the true rate at t is what was sent by t (all within the range) / 300.
        ceiling = MAX_FACTOR * sum(1 for s in run.sent_at if s <= t) / RULE_RANGE_SECONDS
        if not 0 < v <= ceiling:
            bad.append((round(t - run.start, 1), v, ceiling))
    assert bad == [], f"(seconds into the workload, value, ceiling): {bad}"


def test_short_range_rate_never_dips_or_doubles(stack: Stack, run: Run) -> None:
    """The rule's expression over 15 s stays above 0 and below 1.5x the sending rate."""
    expr = selector(short_range_expr())
    samples = query_range(stack.prometheus, expr, run.start + WARM_UP, run.end)
    steady = TASKS / (run.end - run.start)
    outage = [v for t, v in samples if run.stopped_at <= t <= run.restarted_at]
    assert outage, "no sample while the replica was down"
    bad = [(round(t - run.start, 1), v) for t, v in samples if not 0 < v <= MAX_FACTOR * steady]
    assert bad == [], f"(seconds into the workload, value) outside (0, {MAX_FACTOR * steady}]"


def test_dashboard_task_rate_never_doubles(stack: Stack, run: Run) -> None:
    """The dashboards' succeeded-rate query over 15 s counts the two replicas once, never 0."""
    generator = load_generator()
    (template,) = {
        q.expr
        for q in generator.panel_queries()
        if q.dashboard_uid == "celery-tasks" and "rate(celery_task_succeeded_total" in q.expr
        and q.expr.startswith("max by (name) (")
    }  # fmt: skip
    expr = generator.substitute(template, f"{SHORT_RANGE_SECONDS}s")
    expr = re.sub(r'(?<![\w])name=~"\.\*"', f'name="{SUCCEED}"', expr)
    assert f'{{job=~".*",queue_name=~".*",name="{SUCCEED}",' in expr, expr
    samples = query_range(stack.prometheus, expr, run.start + WARM_UP, run.end)
    steady = TASKS / (run.end - run.start)
    bad = [(round(t - run.start, 1), v) for t, v in samples if not 0 < v <= MAX_FACTOR * steady]
    assert bad == [], f"(seconds into the workload, value) outside (0, {MAX_FACTOR * steady}]"


def test_deduplicated_increase_matches_tasks_sent(stack: Stack, run: Run) -> None:
    """increase() of the de-duplicated counter over the workload is the tasks sent, within 15 %.

    The replica that stayed up saw every task; the restarted one missed those finished while it
    was down (a quarter of them), so ``max`` must pick the former. The tolerance covers
    Prometheus' extrapolation: a counter series begins at its first scrape, whose value (about
    one scrape interval of tasks, 4 of 160) is not part of the increase, and each end of the
    sampled interval is extrapolated by up to half a scrape interval; a late first scrape on a
    loaded machine can lose a few more.
    """
    now = time.time()
    window = f"[{int(now - run.start) + 2}s]"
    expr = selector(
        "sum without (hostname) (max without (instance, pod) "
        f"(increase(celery_task_succeeded_total{window})))"
    )
    result = stack.prometheus.query(expr)
    assert len(result) == 1, result
    increase = float(result[0]["value"][1])
    assert abs(increase - TASKS) <= INCREASE_TOLERANCE * TASKS, (increase, TASKS)
