"""The shipped Prometheus rules pass promtool, are fully unit-tested and link to their runbooks."""

from __future__ import annotations

import copy
import functools
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
RECORDING = PROM / "rules" / "celery-recording.yml"
ALERTS = PROM / "rules" / "celery-alerts.yml"
#: Opt-in rules giving danihodovic/celery-exporter's names (docs/migrating.md); not loaded by default.
COMPAT = PROM / "compat" / "celery-danihodovic-compat.yml"
TEST_FILES = sorted((PROM / "tests").glob("*.test.yml"))
RUNBOOKS = ROOT / "docs" / "runbooks.md"
README = ROOT / "README.md"

PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing: `make system-deps` installs Debian's prometheus"
)
needs_amtool = pytest.mark.skipif(
    AMTOOL is None,
    reason="amtool missing: `make system-deps` installs Debian's prometheus-alertmanager",
)

#: Metric families the README's metric tables document (the contract).
FAMILIES = set(re.findall(r"^\| `(celery_\w+)`", README.read_text(), re.M))
#: Labels a recording rule's level may name: the labels its output keeps.
LEVEL_LABELS = {"job", "name", "queue_name", "state", "quantile", "exception", "kind", "hostname"}
#: Operations the recording rules apply, newest first (Prometheus naming conventions).
OPERATIONS = {
    "rate5m",
    "ratio_rate5m",
    "ratio",
    "sum",
    "max",
    "mean5m",
    "histogram_quantile_rate5m",
}
#: The one recorded metric that is no family of its own: succeeded + failed.
DERIVED_METRICS = {"celery_task_finished"}
SEVERITIES = {"critical", "warning", "info"}
RUNBOOK_URL = re.compile(r"^docs/runbooks\.md#([a-z0-9-]+)$")
DURATION = re.compile(r"^(\d+)([smh])$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


@functools.cache
def parsed(path: Path) -> Any:
    """Return the YAML document in ``path``, parsed once per test session."""
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def load(path: Path) -> Any:
    """Return a fresh copy of the YAML document in ``path``."""
    return copy.deepcopy(parsed(path))


def rules(path: Path) -> list[dict[str, Any]]:
    """Return every rule of a rule file, in order."""
    return [rule for group in load(path)["groups"] for rule in group["rules"]]


ALERT_RULES = {rule["alert"]: rule for rule in rules(ALERTS)}
RECORDING_RULES = rules(RECORDING)


def seconds(duration: str) -> int:
    """Return a Prometheus duration such as ``15m`` in seconds (one unit only, as used here)."""
    match = DURATION.match(duration)
    assert match, f"unexpected duration {duration!r}"
    return int(match.group(1)) * UNIT_SECONDS[match.group(2)]


def promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    """Run promtool with ``args`` in ``cwd`` and return the finished process."""
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def alert_cases() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Yield (test file name, test group, alert_rule_test case) for every case of every file."""
    for path in TEST_FILES:
        for group in load(path)["tests"]:
            for case in group.get("alert_rule_test") or []:
                yield path.name, group, case


def github_anchor(heading: str) -> str:
    """Return the anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def runbook_sections() -> dict[str, str]:
    """Return the text of each ``##`` section of the runbooks, by its anchor."""
    sections: dict[str, str] = {}
    current = None
    for line in RUNBOOKS.read_text().splitlines():
        if line.startswith("## "):
            current = github_anchor(line[3:])
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
    return sections


# -- promtool -----------------------------------------------------------------------------------


@needs_promtool
def test_promtool_check_rules_passes_with_every_lint() -> None:
    """`promtool check rules --lint=all --lint-fatal` accepts both files and counts every rule."""
    done = promtool("check", "rules", "--lint=all", "--lint-fatal", str(RECORDING), str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(RECORDING_RULES)} rules found" in done.stdout
    assert f"SUCCESS: {len(ALERT_RULES)} rules found" in done.stdout


@needs_promtool
def test_promtool_check_rules_passes_for_the_compat_rules() -> None:
    """`promtool check rules --lint=all --lint-fatal` accepts the danihodovic compat rules."""
    done = promtool("check", "rules", "--lint=all", "--lint-fatal", str(COMPAT))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules(COMPAT))} rules found" in done.stdout


def test_compat_rules_record_only_names_this_exporter_does_not_export() -> None:
    """Each compat rule writes a name no documented family has and reads a documented family."""
    exported = FAMILIES | {
        f"{family}{suffix}" for family in FAMILIES for suffix in ("_bucket", "_sum", "_count")
    }
    records = {rule["record"]: rule["expr"] for rule in rules(COMPAT)}
    assert sorted(records) == [
        "celery_active_consumer_count",
        "celery_active_worker_count",
        "celery_task_queue_wait_time_bucket",
        "celery_task_queue_wait_time_count",
        "celery_task_queue_wait_time_sum",
        "celery_task_runtime_bucket",
        "celery_task_runtime_count",
        "celery_task_runtime_sum",
    ]
    assert set(records) & exported == set()
    assert {re.sub(r"\{.*\}$", "", expr) for expr in records.values()} <= exported


def test_compat_rules_are_tested_and_not_loaded_by_default() -> None:
    """A promtool test file loads the compat rules; the example prometheus.yml does not."""
    tested = {
        (path.parent / name).resolve()
        for path in TEST_FILES
        for name in load(path).get("rule_files", [])
    }
    assert COMPAT.resolve() in tested
    assert "compat/celery-danihodovic-compat.yml" not in load(PROM / "prometheus.yml")["rule_files"]


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    """`promtool test rules` passes every test file in deploy/prometheus/tests."""
    assert len(TEST_FILES) >= 6
    done = promtool("test", "rules", *(str(p.relative_to(PROM)) for p in TEST_FILES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(TEST_FILES), done.stdout


@needs_promtool
def test_prometheus_config_is_valid_and_loads_the_rules() -> None:
    """`promtool check config` accepts prometheus.yml, including the rule files it names."""
    done = promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 2 rule files found" in done.stdout


@needs_amtool
def test_alertmanager_config_is_valid() -> None:
    """`amtool check-config` accepts the example alertmanager.yml."""
    assert AMTOOL is not None
    done = subprocess.run(
        [AMTOOL, "check-config", "alertmanager.yml"],
        cwd=PROM,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_prometheus_config_scrapes_both_jobs_and_loads_relative_rules() -> None:
    """prometheus.yml scrapes celery-exporter on 9808, celery-worker on 9809 and celery-beat."""
    config = load(PROM / "prometheus.yml")
    assert config["rule_files"] == ["rules/celery-recording.yml", "rules/celery-alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert sorted(jobs) == ["celery-beat", "celery-exporter", "celery-worker"]
    exporter_targets = jobs["celery-exporter"]["static_configs"][0]["targets"]
    worker_targets = jobs["celery-worker"]["static_configs"][0]["targets"]
    assert all(t.endswith(":9808") for t in exporter_targets)
    assert all(t.endswith(":9809") for t in worker_targets)
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]


def test_alertmanager_inhibitions_name_real_alerts() -> None:
    """Every alert name an inhibit rule of alertmanager.yml matches is a shipped alert."""
    config = load(PROM / "alertmanager.yml")
    named: set[str] = set()
    for inhibit in config["inhibit_rules"]:
        for matcher in inhibit["source_matchers"] + inhibit["target_matchers"]:
            match = re.fullmatch(r'alertname=~?"([^"]+)"', matcher)
            assert match, matcher
            named |= set(match.group(1).split("|"))
    assert named
    assert named <= set(ALERT_RULES)


# -- the alerts ---------------------------------------------------------------------------------


def test_the_alerts_the_issue_asks_for_are_there() -> None:
    """The shipped alerts include one for each condition the exporter promises to alert on."""
    assert {
        "CeleryWorkerDown",
        "CeleryTaskFailureRatioHigh",
        "CeleryTaskFailuresHigh",
        "CeleryTaskTimeouts",
        "CeleryTaskRetriesHigh",
        "CeleryQueueBacklogLarge",
        "CeleryQueueGrowing",
        "CeleryQueueNoConsumers",
        "CeleryTaskQueueWaitHigh",
        "CeleryTaskStuck",
        "CeleryWorkerPoolSaturated",
        "CeleryWorkerMemoryHigh",
        "CeleryWorkerMemoryGrowing",
        "CeleryExporterBrokerDown",
        "CeleryEventStreamStalled",
        "CeleryExporterTargetDown",
    } <= set(ALERT_RULES)


@pytest.mark.parametrize("alert", sorted(ALERT_RULES))
def test_alert_has_severity_annotations_and_a_for(alert: str) -> None:
    """The alert is CamelCase Celery…, has a severity, a `for`, and the three annotations."""
    rule = ALERT_RULES[alert]
    assert re.fullmatch(r"Celery(?:[A-Z][a-z0-9]+)+", alert)
    assert rule["labels"]["severity"] in SEVERITIES
    assert seconds(rule["for"]) > 0
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url"}
    assert "$labels." in annotations["description"]
    assert "$value" in annotations["description"]


@pytest.mark.parametrize("alert", sorted(ALERT_RULES))
def test_alert_runbook_url_points_at_its_runbook_section(alert: str) -> None:
    """The runbook_url ends in docs/runbooks.md#<alert in lower case>, a section that exists."""
    url = ALERT_RULES[alert]["annotations"]["runbook_url"]
    match = RUNBOOK_URL.match(url)
    assert match, url
    assert match.group(1) == alert.lower()
    assert match.group(1) in runbook_sections()


def test_all_runbook_urls_share_one_base() -> None:
    """Every runbook_url starts with the same base, so it can be changed in one place."""
    bases = {r["annotations"]["runbook_url"].split("#")[0] for r in ALERT_RULES.values()}
    assert len(bases) == 1


@pytest.mark.parametrize("alert", sorted(ALERT_RULES))
def test_runbook_section_says_meaning_confirmation_and_action(alert: str) -> None:
    """The alert's runbook section says what it means, how to confirm it and what to do."""
    section = runbook_sections()[alert.lower()]
    for part in ("**What it means.**", "**How to confirm.**", "**What to do.**"):
        assert part in section, f"{alert}: {part} missing"
    assert "```" in section, f"{alert}: no query or command to confirm it"


def test_every_runbook_section_belongs_to_an_alert() -> None:
    """Each ``##`` section of docs/runbooks.md is the runbook of a shipped alert."""
    assert set(runbook_sections()) == {alert.lower() for alert in ALERT_RULES}


# -- the alerts' unit tests ---------------------------------------------------------------------


@pytest.mark.parametrize("alert", sorted(ALERT_RULES))
def test_alert_is_tested_firing_after_its_for_and_not_before(alert: str) -> None:
    """A test group expects the alert at some time and no alert at most its `for` earlier."""
    wait = seconds(ALERT_RULES[alert]["for"])
    found = False
    for _, group, case in alert_cases():
        if case["alertname"] != alert or not case["exp_alerts"]:
            continue
        fired_at = seconds(case["eval_time"])
        for other in group["alert_rule_test"]:
            quiet = other["alertname"] == alert and not other["exp_alerts"]
            if quiet and 0 < fired_at - seconds(other["eval_time"]) <= wait:
                found = True
    assert found, f"{alert}: no firing case preceded by a quiet one within its `for`"


@pytest.mark.parametrize("alert", sorted(ALERT_RULES))
def test_alert_is_tested_quiet_on_healthy_data(alert: str) -> None:
    """A test group of healthy data expects the alert never to fire."""
    groups = [
        group
        for path in TEST_FILES
        for group in load(path)["tests"]
        if any(c["alertname"] == alert for c in group.get("alert_rule_test") or [])
    ]
    healthy = [
        group
        for group in groups
        if all(
            not case["exp_alerts"]
            for case in group["alert_rule_test"]
            if case["alertname"] == alert
        )
    ]
    assert healthy, f"{alert}: no test group of healthy data"


@pytest.mark.parametrize("alert", sorted(ALERT_RULES))
def test_alert_tests_assert_exact_labels_and_every_annotation(alert: str) -> None:
    """Each expected firing of the alert names its severity and all three annotations."""
    rule = ALERT_RULES[alert]
    expected = [
        exp
        for _, _, case in alert_cases()
        if case["alertname"] == alert
        for exp in case["exp_alerts"]
    ]
    assert expected
    for exp in expected:
        assert exp["exp_labels"]["severity"] == rule["labels"]["severity"]
        assert set(exp["exp_annotations"]) == set(rule["annotations"])
        assert exp["exp_annotations"]["runbook_url"] == rule["annotations"]["runbook_url"]
        assert "{{" not in exp["exp_annotations"]["description"]


# -- the tests catch mistakes -------------------------------------------------------------------

#: Guards inside the rules, each with the alert whose test groups must catch its loss.
GUARDS = [
    (
        "CeleryWorkerDown",
        ALERTS,
        "\n          unless max without (instance, pod) (celery_worker_shutdown_timestamp_seconds)",
        "",
    ),
    (
        "CeleryQueueGrowing",
        ALERTS,
        "\n          and max without (instance, pod) (deriv(celery_queue_length[30m])) > 0",
        "",
    ),
    (
        "CeleryTaskFailureRatioHigh",
        ALERTS,
        "\n          and name_queue_name:celery_task_finished:rate5m > 0.01",
        "",
    ),
    (
        "CeleryTaskStuck",
        ALERTS,
        "(celery_tasks_active_oldest_start_timestamp_seconds > 0)",
        "celery_tasks_active_oldest_start_timestamp_seconds",
    ),
    (
        "CeleryTaskTimeouts",
        ALERTS,
        "\n                and on (job, instance) (up offset 10m == 1)",
        "",
    ),
    (
        "CeleryTaskTimeouts",
        ALERTS,
        "increase(celery_task_timeouts_total[10m]) > 0",
        "vector(0) > 1",
    ),
    (
        "CeleryWorkerMemoryGrowing",
        ALERTS,
        "\n          and max without (instance, pod)"
        " (celery_worker_pool_process_max_resident_memory_bytes) <= 1073741824",
        "",
    ),
    (
        "CeleryTaskFailuresHigh",
        RECORDING,
        "sum without (hostname) (max without (instance, pod) (celery_task_failures_per_minute))",
        "sum without (hostname, instance, pod) (celery_task_failures_per_minute)",
    ),
    (
        "CeleryEventStreamStalled",
        ALERTS,
        "\n          and on (job, instance) (celery_exporter_broker_up == 1)",
        "",
    ),
    ("CeleryEventStreamStalled", ALERTS, "time() - process_start_time_seconds", "vector(0)"),
    (
        "CeleryDeadLetterQueueGrowing",
        ALERTS,
        "\n          and on (job, queue_name)\n            label_replace(celery_queue_dead_letter_info,"
        ' "queue_name", "$1", "dead_letter_queue", "(.+)")',
        "",
    ),
]


def write_suite(target: Path, alert: str, recording_text: str, alerts_text: str) -> Path:
    """Write both rule files and one test file of the groups that test ``alert``; return it."""
    (target / "rules").mkdir(parents=True)
    (target / "tests").mkdir()
    (target / "rules" / RECORDING.name).write_text(recording_text)
    (target / "rules" / ALERTS.name).write_text(alerts_text)
    suites = [load(path) for path in TEST_FILES]
    headers = [
        {k: v for k, v in suite.items() if k != "tests"}
        for suite in suites
        if any(group.get("alert_rule_test") for group in suite["tests"])
    ]
    header = headers[0]
    assert all(h == header for h in headers), "alert test files differ in their header"
    groups = [
        group
        for suite in suites
        for group in suite["tests"]
        if any(c["alertname"] == alert for c in group.get("alert_rule_test") or [])
    ]
    path = target / "tests" / "suite.test.yml"
    path.write_text(yaml.safe_dump({**header, "tests": groups}, sort_keys=False))
    return path


def doubled_for(alert: str) -> str:
    """Return the alert rule file with ``alert``'s `for` twice as long."""
    document = load(ALERTS)
    for group in document["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["for"] = f"{2 * seconds(rule['for'])}s"
    return str(yaml.safe_dump(document, sort_keys=False))


def without_guard(path: Path, old: str, new: str) -> tuple[str, str]:
    """Return the (recording, alerting) rule texts with ``old`` replaced once in ``path``."""
    texts = {RECORDING: RECORDING.read_text(), ALERTS: ALERTS.read_text()}
    assert texts[path].count(old) == 1, f"guard text not found once in {path.name}: {old!r}"
    texts[path] = texts[path].replace(old, new)
    return texts[RECORDING], texts[ALERTS]


def run_suites(paths: list[Path]) -> dict[Path, str]:
    """Run promtool once over ``paths``; return each file's report, which says SUCCESS or not."""
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "test", "rules", *map(str, paths)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
        check=False,
    )
    reports: dict[Path, str] = {}
    for chunk in done.stdout.split("Unit Testing:")[1:]:
        name, _, report = chunk.partition("\n")
        reports[Path(name.strip())] = report
    assert set(reports) == set(paths), done.stdout
    return reports


@pytest.fixture(scope="module")
def mutants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Run every alert's own test groups against the shipped rules and against each mutant."""
    root = tmp_path_factory.mktemp("mutants")
    recording, alerts = RECORDING.read_text(), ALERTS.read_text()
    suites: dict[str, Path] = {}
    for n, alert in enumerate(sorted(ALERT_RULES)):
        suites[f"shipped {alert}"] = write_suite(root / f"s{n}", alert, recording, alerts)
        suites[f"for {alert}"] = write_suite(root / f"f{n}", alert, recording, doubled_for(alert))
    for n, (alert, path, old, new) in enumerate(GUARDS):
        guarded = without_guard(path, old, new)
        suites[f"guard {n}"] = write_suite(root / f"g{n}", alert, *guarded)
    reports = run_suites(list(suites.values()))
    return {key: reports[path] for key, path in suites.items()}


def failed_an_expectation(report: str) -> bool:
    """Return whether a promtool report is a failed expectation (not a success, not a load error)."""
    return "FAILED" in report and "got:" in report


@needs_promtool
@pytest.mark.parametrize("alert", sorted(ALERT_RULES))
def test_alert_tests_pass_on_their_own(mutants: dict[str, str], alert: str) -> None:
    """The alert's test groups, run alone against the shipped rules, pass."""
    assert mutants[f"shipped {alert}"].strip() == "SUCCESS", mutants[f"shipped {alert}"]


@needs_promtool
@pytest.mark.parametrize("alert", sorted(ALERT_RULES))
def test_alert_tests_fail_when_its_for_doubles(mutants: dict[str, str], alert: str) -> None:
    """The alert's test groups fail once its `for` is twice as long (they pin the firing time)."""
    assert failed_an_expectation(mutants[f"for {alert}"]), mutants[f"for {alert}"]


@needs_promtool
@pytest.mark.parametrize("n", range(len(GUARDS)), ids=[f"{g[0]}-{i}" for i, g in enumerate(GUARDS)])
def test_alert_tests_catch_a_lost_guard(mutants: dict[str, str], n: int) -> None:
    """Dropping or breaking one condition of a rule makes the alert's test groups fail."""
    assert failed_an_expectation(mutants[f"guard {n}"]), mutants[f"guard {n}"]


# -- the recording rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rule", RECORDING_RULES, ids=lambda r: f"{r['record']}{r.get('labels', '')}"
)
def test_recording_rule_name_follows_level_metric_operations(rule: dict[str, Any]) -> None:
    """The record name is level:metric:operations over known labels, families and operations."""
    level, metric, operation = rule["record"].split(":")
    kept = set(re.findall(r"[a-z]+(?:_name)?", level))
    assert kept <= LEVEL_LABELS, level
    ratio = metric not in FAMILIES and "_per_" in metric
    parts = metric.split("_per_") if ratio else [metric]
    prefix = re.match(r"celery_[a-z]+_", parts[0])
    assert prefix, metric
    for part in parts:
        full = part if part.startswith("celery_") else prefix.group(0) + part
        known = full in FAMILIES or f"{full}_total" in FAMILIES or full in DERIVED_METRICS
        assert known, f"{metric}: {full} is no metric family"
    assert operation in OPERATIONS
    assert ratio == operation.startswith("ratio")


@pytest.mark.parametrize(
    "rule", RECORDING_RULES, ids=lambda r: f"{r['record']}{r.get('labels', '')}"
)
def test_recording_rule_aggregates_without_instance_labels(rule: dict[str, Any]) -> None:
    """Each rule over raw series drops instance and pod with `without`, never keeps by `by`."""
    expr = rule["expr"]
    assert " by (" not in expr and " by(" not in expr
    reads_raw = re.search(r"\bcelery_\w+", expr.replace(":celery_", ":"))
    if reads_raw:
        assert "max without (instance, pod)" in expr
