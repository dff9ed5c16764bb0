"""The shipped Prometheus rules and Grafana queries against a real Prometheus and Alertmanager.

A private Redis, the event-stream daemon (job ``celery-exporter``) and a prefork worker that
sends events, watched in each of the two worker-side modes (job ``celery-worker``): the
in-worker exporter, or the resource sidecar beside the worker. They carry a workload with
successes, failures, a retry, both time limits, a revoked and a rejected task, task-sent
events, a backlog on a queue no worker consumes and one long task still running. Prometheus
scrapes both every second with the shipped rules; every recording rule and every dashboard
query must return data (counters with a fixed set of labels start at 0; the oldest waiting
message's age is 0 for an empty queue), except, in sidecar mode, exactly the panels only the
in-worker exporter feeds (they say so with Grafana's noValue). A real ``celery beat`` with the
exporter installed is scraped as job ``celery-beat`` and feeds the overview's beat row. Then the
worker is killed, and the worker-down alert must fire in Prometheus and reach a webhook through
a real Alertmanager.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from tests.support import taskapp
from tests.support.beat import BeatProcess
from tests.support.client import Client
from tests.support.dashboards import PanelKey, empty_queries, load_generator, panel_keys
from tests.support.expect import wait_metrics, wait_worker_up
from tests.support.launchers import RedisServer, free_port, terminate
from tests.support.processes import (
    EVENT_TIMEOUT,
    ROOT,
    START_TIMEOUT,
    ExporterProcess,
    WorkerProcess,
    spawn,
)
from tests.support.prometheus import (
    ALERTMANAGER_MISSING,
    PROMETHEUS_MISSING,
    AlertmanagerServer,
    PrometheusServer,
    alertmanager_binary,
    prometheus_binary,
)
from tests.support.scrape import Sample, fetch, sample, value
from tests.support.stack import connected_client, running_exporter
from tests.support.waiting import wait_for
from tests.support.webhook import Delivery, WebhookReceiver, firing_alerts
from tests.support.workload import (
    COUNTERS,
    FAILED,
    HARD,
    REVOKE_COUNTDOWN,
    REVOKED,
    SOFT,
    SUCCEED,
    WORKLOAD,
    send_workload,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(prometheus_binary() is None, reason=PROMETHEUS_MISSING),
    pytest.mark.skipif(alertmanager_binary() is None, reason=ALERTMANAGER_MISSING),
]

PROM_DIR = ROOT / "deploy" / "prometheus"
RECORDING_RULES = PROM_DIR / "rules" / "celery-recording.yml"
WORKER_DOWN = "CeleryWorkerDown"
#: The shipped `for:` of the worker-down alert (1m) is too long for a test: only that field, in
#: the test's copy of the rules only, becomes this, so it fires seconds after the worker is down.
WORKER_DOWN_FOR = "2s"
#: A queue no worker consumes, listed in the daemon's --queues: it holds a backlog.
BACKLOG_QUEUE = "backlog"
BACKLOG = 3
SLEEP = taskapp.sleep.name
#: Longer than the whole test: this task is still running when the worker is killed.
LONG_TASK_SECONDS = 600
#: How long Prometheus may take to have a result for every rule and query.
PROMETHEUS_TIMEOUT = 60.0


#: The worker-side modes: the in-worker exporter, or the resource sidecar beside the worker.
IN_WORKER, SIDECAR = "in-worker", "sidecar"
#: Panels only the in-worker exporter feeds: in sidecar mode they have no series (and say so).
WORKER_EXPORTER_ONLY = {
    PanelKey(
        "celery-workers", "Messages the worker could not run", "celery_worker_task_errors_total"
    ),
    PanelKey(
        "celery-exporter", "Worker events dropped", "celery_exporter_worker_events_dropped_total"
    ),
}
#: Panels only an SQS broker feeds (delayed messages, redrive policies): empty on Redis.
SQS_ONLY = {
    PanelKey("celery-queues", "Delayed", "celery_queue_delayed"),
    PanelKey("celery-queues", "Dead-letter queues", "celery_queue_length"),
    PanelKey("celery-queues", "Dead-letter queues", "celery_queue_dead_letter_info"),
}
#: The dashboard query of the oldest waiting message's age, by queue.
OLDEST_WAITING = PanelKey(
    "celery-queues",
    "Oldest waiting message",
    "celery_queue_oldest_message_sent_timestamp_seconds",
)


def recording_selectors() -> dict[str, str]:
    """A selector of each shipped recording rule's series (its record name and extra labels)."""
    groups = yaml.safe_load(RECORDING_RULES.read_text())["groups"]
    out: dict[str, str] = {}
    for group in groups:
        for rule in group["rules"]:
            if "record" in rule:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(rule.get("labels", {}).items()))
                selector = f"{rule['record']}{{{labels}}}" if labels else rule["record"]
                out[selector] = selector
    return out


class Stack(NamedTuple):
    """Everything the test runs, started."""

    mode: str
    redis: RedisServer
    daemon: ExporterProcess
    worker: WorkerProcess
    worker_port: int
    prometheus: PrometheusServer
    alertmanager: AlertmanagerServer
    webhook: WebhookReceiver
    client: Client


# -- fixtures -----------------------------------------------------------------------------------


def start_sidecar(worker: WorkerProcess, port: int, logdir: Path) -> subprocess.Popen[bytes]:
    """``celery-exporter sidecar`` on ``port`` watching ``worker``, once it answers."""
    args = [
        sys.executable, "-m", "celery_exporter", "sidecar", "--host", "127.0.0.1",
        "--port", str(port), f"--match=-n {re.escape(worker.nodename)}",
        "--sample-interval", "0.2", "--log-format", "json",
    ]  # fmt: skip
    return spawn(args, {}, logdir / f"sidecar-{port}.log", f"sidecar on port {port}")


@pytest.fixture(scope="module", params=[IN_WORKER, SIDECAR])
def stack(request: pytest.FixtureRequest, logdir: Path) -> Iterator[Stack]:
    """Redis, daemon, worker (and sidecar), webhook, Alertmanager, Prometheus; all stopped."""
    mode: str = request.param
    with contextlib.ExitStack() as resources:
        redis = resources.enter_context(RedisServer())
        webhook = resources.enter_context(WebhookReceiver())
        alertmanager = resources.enter_context(
            AlertmanagerServer(PROM_DIR / "alertmanager.yml", webhook.url)
        )
        client = resources.enter_context(connected_client(redis.url()))
        args = [
            "--queues", f"celery,{BACKLOG_QUEUE}",
            "--queue-interval", "1s",
            "--inspect-interval", "2s",
        ]  # fmt: skip
        daemon = resources.enter_context(running_exporter(redis.url(), logdir, args))
        worker_port = free_port()
        env = {taskapp.WORKER_PORT_ENV: str(worker_port)} if mode == IN_WORKER else {}
        worker = WorkerProcess(redis.url(), f"e2e-{mode}", logdir, env=env)

        def kill_worker() -> None:
            # No warm shutdown: the long task would hold it up.
            if worker.process is not None:
                worker.kill_group()

        resources.callback(kill_worker)
        worker.start()
        wait_worker_up(daemon, worker)
        if mode == SIDECAR:
            sidecar = start_sidecar(worker, worker_port, logdir)
            resources.callback(terminate, sidecar)

        def answers() -> bool:
            try:
                return fetch(f"http://127.0.0.1:{worker_port}/healthz")[0] == 200
            except OSError:
                return False

        wait_for(answers, START_TIMEOUT, 0.2, f"the {mode} exporter")
        beat_dir = logdir / f"beat-{mode}"
        beat_dir.mkdir(exist_ok=True)
        beat = resources.enter_context(BeatProcess(redis.url(), beat_dir))
        targets = {
            "celery-exporter": [f"127.0.0.1:{daemon.port}"],
            "celery-worker": [f"127.0.0.1:{worker_port}"],
            "celery-beat": [f"127.0.0.1:{beat.port}"],
        }
        prometheus = resources.enter_context(
            PrometheusServer(
                PROM_DIR / "prometheus.yml",
                targets,
                alertmanager.address,
                for_overrides={WORKER_DOWN: WORKER_DOWN_FOR},
            )
        )
        yield Stack(
            mode, redis, daemon, worker, worker_port, prometheus, alertmanager, webhook, client
        )


@pytest.fixture(scope="module")
def workload(stack: Stack) -> Stack:
    """Run the workload, fill the backlog and leave one long task running; wait for the daemon."""
    client, worker, daemon = stack.client, stack.worker, stack.daemon
    with client.held(worker):
        revoked_id = send_workload(client, WORKLOAD)
    assert revoked_id is not None
    for i in range(BACKLOG):
        client.send(SUCCEED, args=(i,), queue=BACKLOG_QUEUE)
    wait_metrics(
        daemon,
        {sample("celery_task_received_total", name=REVOKED, queue_name="celery"): 1},
        worker=worker,
    )
    assert client.revoke(revoked_id, worker.nodename), worker.log_tail()
    expected: dict[Sample, float] = {
        (family, frozenset(labels)): count
        for family, table in COUNTERS.items()
        for labels, count in table.items()
    }
    for labels, count in FAILED.items():
        expected[("celery_task_failed_total", frozenset(labels))] = count
    expected[sample("celery_task_timeouts_total", name=SOFT, queue_name="celery", kind="soft")] = 1
    expected[sample("celery_task_timeouts_total", name=HARD, queue_name="celery", kind="hard")] = 1
    expected[sample("celery_task_sent_total", name=SUCCEED, queue_name=BACKLOG_QUEUE)] = BACKLOG
    expected[sample("celery_queue_length", queue_name=BACKLOG_QUEUE)] = BACKLOG
    wait_metrics(daemon, expected, timeout=EVENT_TIMEOUT + REVOKE_COUNTDOWN, worker=worker)
    client.send(SLEEP, args=(LONG_TASK_SECONDS,))
    wait_metrics(
        daemon, {sample("celery_tasks_active", name=SLEEP, queue_name="celery"): 1}, worker=worker
    )
    return stack


# -- tests --------------------------------------------------------------------------------------


def test_both_jobs_are_scraped(workload: Stack) -> None:
    """Prometheus scrapes the daemon as celery-exporter, the worker as celery-worker, and beat."""
    prometheus = workload.prometheus

    def healthy() -> dict[str, str]:
        health = {t["labels"]["job"]: t["health"] for t in prometheus.targets()}
        return health if set(health.values()) == {"up"} else {}

    health = wait_for(healthy, PROMETHEUS_TIMEOUT, 0.5, "both targets to be up")
    assert health == {"celery-exporter": "up", "celery-worker": "up", "celery-beat": "up"}
    up = {r["metric"]["job"]: r["value"][1] for r in prometheus.query("up")}
    assert up == {"celery-exporter": "1", "celery-worker": "1", "celery-beat": "1"}


def test_every_recording_rule_has_data(workload: Stack) -> None:
    """Each record name of the shipped recording rules returns a result through the HTTP API."""
    prometheus = workload.prometheus
    exprs = recording_selectors()
    rules = yaml.safe_load(RECORDING_RULES.read_text())["groups"]
    assert len(exprs) == sum(len(group["rules"]) for group in rules)  # one selector per rule
    missing: set[Any] = set()

    def all_present() -> bool:
        nonlocal missing
        missing = empty_queries(prometheus, exprs)
        return not missing

    try:
        wait_for(all_present, PROMETHEUS_TIMEOUT, 1.0, "every recording rule to have data")
    except TimeoutError:
        pytest.fail(f"recording rules without data: {sorted(missing)}")


def values_by(
    prometheus: PrometheusServer, expr: str, *labels: str
) -> dict[tuple[str, ...], float]:
    """The result of ``expr`` as {label values: value}."""
    return {
        tuple(r["metric"].get(label, "") for label in labels): float(r["value"][1])
        for r in prometheus.query(expr)
    }


def test_recorded_gauges_have_exact_values(workload: Stack) -> None:
    """The worker, pool and queue recording rules read what the cluster is, for each job."""
    prometheus, host = workload.prometheus, workload.worker.nodename
    want: dict[str, tuple[tuple[str, ...], dict[tuple[str, ...], float]]] = {
        "job:celery_worker_up:sum": (("job",), {("celery-exporter",): 1, ("celery-worker",): 1}),
        # The long task holds one of the two pool processes.
        "hostname:celery_worker_pool_busy_per_pool_size:ratio": (
            ("job", "hostname"),
            {("celery-exporter", host): 0.5, ("celery-worker", host): 0.5},
        ),
        "queue_name:celery_queue_length:max": (
            ("job", "queue_name"),
            {("celery-exporter", "celery"): 0, ("celery-exporter", BACKLOG_QUEUE): BACKLOG},
        ),
        "queue_name:celery_queue_consumers:max": (
            ("job", "queue_name"),
            {("celery-exporter", "celery"): 1, ("celery-exporter", BACKLOG_QUEUE): 0},
        ),
        f'name_queue_name:celery_tasks_active:sum{{name="{SLEEP}"}}': (
            ("job", "queue_name"),
            {("celery-exporter", "celery"): 1, ("celery-worker", "celery"): 1},
        ),
    }
    if workload.mode == SIDECAR:  # the sidecar exports resources only: no worker or task gauges
        for _, values in want.values():
            values.pop(("celery-worker",), None)
            values.pop(("celery-worker", host), None)
            values.pop(("celery-worker", "celery"), None)
    got: dict[str, Any] = {}

    def reached() -> bool:
        got.update(
            {expr: values_by(prometheus, expr, *labels) for expr, (labels, _) in want.items()}
        )
        return all(got[expr] == values for expr, (_, values) in want.items())

    with contextlib.suppress(TimeoutError):  # the assertion below shows the difference
        wait_for(reached, PROMETHEUS_TIMEOUT, 1.0, "the recorded gauges to settle")
    assert got == {expr: values for expr, (_, values) in want.items()}


def test_every_dashboard_query_has_data(workload: Stack) -> None:
    """Each panel query returns a result but the SQS-only ones; in sidecar mode nor the in-worker ones."""
    prometheus = workload.prometheus
    exprs = panel_keys(load_generator())
    assert set(exprs) >= WORKER_EXPORTER_ONLY | SQS_ONLY
    allowed = SQS_ONLY | (WORKER_EXPORTER_ONLY if workload.mode == SIDECAR else set())
    empty: set[Any] = set()

    def only_allowed_empty() -> bool:
        nonlocal empty
        empty = empty_queries(prometheus, exprs)
        return empty == allowed

    with contextlib.suppress(TimeoutError):  # the assertion below says what is missing
        wait_for(only_allowed_empty, PROMETHEUS_TIMEOUT, 1.0, "every dashboard query to have data")
    missing = sorted(f"{k.dashboard_uid} / {k.panel_title}: {exprs[k]}" for k in empty)
    assert missing == sorted(f"{k.dashboard_uid} / {k.panel_title}: {exprs[k]}" for k in allowed)


def test_oldest_waiting_message_is_zero_for_an_empty_queue(workload: Stack) -> None:
    """The oldest-waiting panel reads 0 for the empty queue and a positive age for the backlog."""
    prometheus = workload.prometheus
    expr = panel_keys(load_generator())[OLDEST_WAITING]
    got: dict[tuple[str, ...], float] = {}

    def both_queues() -> bool:
        got.clear()
        got.update(values_by(prometheus, expr, "queue_name"))
        return set(got) == {("celery",), (BACKLOG_QUEUE,)}

    with contextlib.suppress(TimeoutError):  # the assertions below show what is there
        wait_for(both_queues, PROMETHEUS_TIMEOUT, 1.0, "both queues on the oldest-waiting panel")
    assert set(got) == {("celery",), (BACKLOG_QUEUE,)}
    assert got[("celery",)] == 0
    assert got[(BACKLOG_QUEUE,)] > 0


def test_rules_evaluate_without_errors(workload: Stack) -> None:
    """Every shipped rule group is loaded and each of its rules evaluates with health ok."""
    prometheus = workload.prometheus
    shipped = {
        group["name"]
        for path in sorted((PROM_DIR / "rules").glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
    }

    def evaluated() -> list[dict[str, Any]]:
        groups = prometheus.rule_groups()
        rules = [rule for group in groups for rule in group["rules"]]
        done = all(rule["health"] != "unknown" for rule in rules)
        return groups if done and rules else []

    groups = wait_for(evaluated, PROMETHEUS_TIMEOUT, 0.5, "every rule to be evaluated")
    assert {group["name"] for group in groups} == shipped
    bad = {
        rule["name"]: (rule["health"], rule.get("lastError", ""))
        for group in groups
        for rule in group["rules"]
        if rule["health"] != "ok" or rule.get("lastError")
    }
    assert bad == {}


def test_killed_worker_fires_worker_down(workload: Stack) -> None:
    """SIGKILLing the worker fires the worker-down alert, which Alertmanager posts to the webhook."""
    prometheus, webhook, worker = workload.prometheus, workload.webhook, workload.worker
    host = worker.nodename

    def worker_down_alerts() -> list[dict[str, Any]]:
        return [a for a in prometheus.alerts() if a["labels"].get("alertname") == WORKER_DOWN]

    assert worker_down_alerts() == []  # healthy until the kill
    assert value(workload.daemon.metrics(), "celery_worker_up", hostname=host) == 1
    assert worker.process is not None
    worker.kill_group()  # SIGKILL to the whole group; returns once none of it is left

    def firing() -> list[dict[str, Any]]:
        return [a for a in worker_down_alerts() if a["state"] == "firing"]

    alerts = wait_for(firing, PROMETHEUS_TIMEOUT, 0.5, f"{WORKER_DOWN} to fire")
    assert [a["labels"] for a in alerts] == [
        {
            "alertname": WORKER_DOWN,
            "hostname": host,
            "job": "celery-exporter",
            "severity": "warning",
        }
    ]
    assert float(alerts[0]["value"]) == 0

    def delivered(delivery: Delivery) -> bool:
        return any(
            a["labels"].get("hostname") == host for a in firing_alerts(delivery, WORKER_DOWN)
        )

    delivery = webhook.wait(delivered, PROMETHEUS_TIMEOUT)
    assert delivery.path == "/default"  # severity warning: the route's default receiver
    assert delivery.body["status"] == "firing"
    (alert,) = [a for a in firing_alerts(delivery, WORKER_DOWN) if a["labels"]["hostname"] == host]
    assert alert["labels"]["alertname"] == WORKER_DOWN
    assert alert["labels"]["job"] == "celery-exporter"
