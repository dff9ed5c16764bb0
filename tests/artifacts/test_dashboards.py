"""The Grafana dashboards: no drift from the generator, their structure, queries, provisioning."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
README = (ROOT / "README.md").read_text()


def load_generator() -> ModuleType:
    """Import deploy/grafana/generate.py, which is a script and not in a package."""
    spec = importlib.util.spec_from_file_location("grafana_generate", GRAFANA / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gen = load_generator()
BOARDS: dict[str, dict[str, Any]] = {
    path.name: json.loads(path.read_text()) for path in sorted(gen.DASHBOARDS_DIR.glob("*.json"))
}
UIDS = ["celery-overview", "celery-tasks", "celery-workers", "celery-queues", "celery-exporter"]
VARIABLES = ["datasource", "job", "queue_name", "name", "hostname"]

PROMETHEUS_OWN = {"up"}  # written by Prometheus itself for every target


def all_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel of a dashboard, rows and the panels of collapsed rows included."""
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def all_exprs() -> list[str]:
    """Every target expression of every committed dashboard."""
    return [
        target["expr"]
        for board in BOARDS.values()
        for panel in all_panels(board)
        for target in panel.get("targets", [])
    ]


def documented_metrics() -> tuple[set[str], tuple[str, ...]]:
    """Metric names and `prefix_*` wildcards in the README's metric tables (worker side too)."""
    names: set[str] = set()
    for line in README.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([a-z_0-9*]+)`", line.split("|")[1]))
    prefixes = tuple(name[:-1] for name in names if name.endswith("_*"))
    return {name for name in names if not name.endswith("*")}, prefixes


def is_documented(name: str, names: set[str], prefixes: tuple[str, ...]) -> bool:
    """Whether a metric name, or the histogram it is a series of, is documented."""
    known = names | PROMETHEUS_OWN
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    return name in known or base in known or name.startswith(prefixes)


def expr_of(uid: str, title: str, contains: str = "") -> str:
    """The one query of a panel (whose text contains `contains`), with variables as All."""
    found = [
        q.expr
        for q in gen.panel_queries()
        if q.dashboard_uid == uid and q.panel_title == title and contains in q.expr
    ]
    assert len(found) == 1, (uid, title, found)
    return str(gen.substitute(found[0]))


def test_committed_json_matches_the_generator() -> None:
    """The committed dashboards are byte for byte what generate.py writes."""
    assert gen.differences(gen.DASHBOARDS_DIR) == []
    assert sorted(BOARDS) == sorted(f"{uid}.json" for uid in UIDS)


def test_check_mode_passes_on_the_committed_files() -> None:
    """`python deploy/grafana/generate.py --check` exits 0 on the committed files."""
    result = subprocess.run(
        [sys.executable, str(GRAFANA / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")


def test_check_mode_names_changed_missing_and_extra_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--check exits 1 and names a changed, a missing and a foreign file, and no other."""
    for path in gen.DASHBOARDS_DIR.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    changed = tmp_path / "celery-tasks.json"
    changed.write_text(changed.read_text().replace("Celery / Tasks", "Celery / Edited"))
    (tmp_path / "celery-queues.json").unlink()
    (tmp_path / "hand-made.json").write_text("{}\n")
    assert gen.main(["--check", "--output", str(tmp_path)]) == 1
    named = re.findall(r"(\S+\.json) differs", capsys.readouterr().err)
    assert [Path(p).name for p in named] == [
        "celery-queues.json",
        "celery-tasks.json",
        "hand-made.json",
    ]


def test_write_is_deterministic_and_removes_stale_files(tmp_path: Path) -> None:
    """Writing twice gives identical sorted-key JSON with a final newline and no stale file."""
    (tmp_path / "old.json").write_text("{}\n")
    assert gen.main(["--output", str(tmp_path)]) == 0
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert gen.write(tmp_path) == []
    second = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert first == second
    assert sorted(first) == sorted(f"{uid}.json" for uid in UIDS)
    for text in first.values():
        board = json.loads(text)
        assert text == (json.dumps(board, indent=2, sort_keys=True) + "\n").encode()
    assert gen.main(["--check", "--output", str(tmp_path)]) == 0


def test_dashboards_have_stable_uids_tags_and_schema() -> None:
    """Each file holds the dashboard of its uid, tagged celery, schema 39, no database id."""
    for name, board in BOARDS.items():
        assert name == f"{board['uid']}.json"
        assert board["tags"] == ["celery"]
        assert board["schemaVersion"] == 39
        assert board["id"] is None
        assert board["title"].startswith("Celery / ")


def test_dashboards_link_to_each_other() -> None:
    """Every dashboard links to the celery-tagged ones, and every URL names a real uid."""
    for board in BOARDS.values():
        [link] = board["links"]
        assert {k: link[k] for k in ("type", "tags", "includeVars", "keepTime")} == {
            "type": "dashboards",
            "tags": ["celery"],
            "includeVars": True,
            "keepTime": True,
        }
    text = "".join(path.read_text() for path in gen.DASHBOARDS_DIR.glob("*.json"))
    targets = re.findall(r'"url": "/d/([^/"]+)/', text)
    assert set(targets) == {"celery-tasks", "celery-workers", "celery-queues"}
    assert len(targets) >= 10


def test_variables_come_in_order() -> None:
    """Variables are datasource, job, queue_name, name, hostname: label_values, multi, All."""
    for board in BOARDS.values():
        variables = board["templating"]["list"]
        assert [v["name"] for v in variables] == VARIABLES
        datasource = variables[0]
        assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
        assert datasource["current"]["value"] == "celery-prometheus"
        for variable in variables[1:]:
            assert variable["type"] == "query"
            assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert variable["query"].startswith("label_values(")
            assert variable["query"].endswith(f", {variable['name']})")
            assert variable["definition"] == variable["query"]
            assert (variable["multi"], variable["includeAll"]) == (True, True)
            assert variable["current"]["value"] == ["$__all"]
        # `.*` also matches a missing label: task series of the daemon have no hostname.
        assert [v["allValue"] for v in variables[1:]] == [None, ".*", ".*", ".*"]


def test_every_panel_queries_the_datasource_variable() -> None:
    """Every panel and every target uses `${datasource}`; rows have no queries."""
    source = {"type": "prometheus", "uid": "${datasource}"}
    for board in BOARDS.values():
        for panel in all_panels(board):
            if panel["type"] == "row":
                assert "targets" not in panel
                continue
            assert panel["datasource"] == source
            assert panel["targets"]
            for target in panel["targets"]:
                assert target["datasource"] == source
                assert target["expr"].strip()


def test_panels_have_kind_description_unit_and_unique_ids() -> None:
    """Panels are of the four kinds, described, with a unit, ids unique and titles too."""
    for board in BOARDS.values():
        panels = all_panels(board)
        ids = [p["id"] for p in panels]
        assert ids == list(range(1, len(panels) + 1))
        titles = [p["title"] for p in panels if p["type"] != "row"]
        assert len(set(titles)) == len(titles), board["uid"]
        for panel in panels:
            if panel["type"] == "row":
                continue
            assert panel["type"] in {"timeseries", "stat", "table", "bargauge"}
            assert panel["description"].strip()
            assert panel["fieldConfig"]["defaults"]["unit"]


def test_panels_tile_the_grid_without_overlap() -> None:
    """Panels lie within the 24 columns and no two cover the same cell."""
    for board in BOARDS.values():
        cells: set[tuple[int, int]] = set()
        for panel in all_panels(board):
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
            covered = {
                (x, y)
                for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])
            }
            assert not covered & cells, (board["uid"], panel["title"])
            cells |= covered


def test_every_range_is_the_rate_interval() -> None:
    """Each rate/increase reads `[$__rate_interval]`, and no other range is used."""
    exprs = all_exprs()
    calls = sum(len(re.findall(r"\b(?:i?rate|increase)\(", e)) for e in exprs)
    ranges = [r for e in exprs for r in re.findall(r"\[([^\]]*)\]", e)]
    assert set(ranges) == {"$__rate_interval"}
    assert len(ranges) == calls > 50


def test_every_metric_is_documented() -> None:
    """Each metric a query or variable selects is in one of the README's metric tables."""
    names, prefixes = documented_metrics()
    assert {"celery_task_sent_total", "celery_queue_length", "celery_worker_load15"} <= names
    assert set(prefixes) == {"process_", "python_"}
    selectors = [
        v["query"].removeprefix("label_values(").rsplit(", ", 1)[0]
        for b in BOARDS.values()
        for v in b["templating"]["list"][1:]
    ]
    queries = all_exprs() + selectors
    used = {name for expr in queries for name in gen.metric_names(expr)}
    assert len(used) > 50
    assert sorted(n for n in used if not is_documented(n, names, prefixes)) == []


#: Families only the in-worker exporter exports: without it (event daemon alone, or the resource
#: sidecar) a panel reading only these has no series at all.
WORKER_EXPORTER_ONLY = {
    "celery_worker_task_errors_total",
    "celery_exporter_worker_events_dropped_total",
}


def test_panels_empty_by_nature_say_why() -> None:
    """Panels fed only by the in-worker exporter, and the oldest-waiting panel, set noValue."""
    no_value = {
        panel["title"]: panel["fieldConfig"]["defaults"].get("noValue")
        for board in BOARDS.values()
        for panel in all_panels(board)
        if panel.get("targets")
        and set().union(*(gen.metric_names(t["expr"]) for t in panel["targets"]))
        <= WORKER_EXPORTER_ONLY
    }
    assert no_value == {
        "Messages the worker could not run": "no in-worker exporter scraped",
        "Worker events dropped": "no in-worker exporter scraped",
    }
    (oldest,) = [
        panel
        for panel in all_panels(BOARDS["celery-queues.json"])
        if panel["title"] == "Oldest waiting message"
    ]
    assert (
        oldest["fieldConfig"]["defaults"]["noValue"] == "no waiting message with a known send time"
    )
    assert oldest["targets"][0]["expr"].endswith(
        ' or (max by (queue_name) (celery_queue_length{job=~"$job",queue_name=~"$queue_name"}) == 0)'
    )


def test_selectors_filter_by_every_variable_their_metric_has() -> None:
    """Task selectors filter job, queue_name, name, hostname; worker, queue, others fewer."""
    expected = {
        "celery_task": ["job", "queue_name", "name", "hostname"],
        "celery_worker": ["job", "hostname"],
        "celery_queue": ["job", "queue_name"],
    }
    for expr in all_exprs():
        selectors = dict(re.findall(r"([a-zA-Z_:][\w:]*)\{([^}]*)\}", expr))
        assert set(selectors) == gen.metric_names(expr), expr
        for metric, matchers in selectors.items():
            family = "celery_task" if metric.startswith("celery_tasks_") else metric
            labels = next((v for k, v in expected.items() if family.startswith(k)), ["job"])
            wanted = [f'{label}=~"${label}"' for label in labels]
            assert matchers.split(",")[: len(wanted)] == wanted, expr


def test_metric_names_parses_names_out_of_promql() -> None:
    """metric_names finds selected metrics only, not functions, labels, keywords or strings."""
    expr = (
        'histogram_quantile(0.95, sum by (le, name) (rate(a_bucket{x="b{c}"}[5m])))'
        " / on (job) group_left (info) up or vector(0) + count(c_total offset 5m) and bool d"
    )
    assert gen.metric_names(expr) == {"a_bucket", "up", "c_total", "d"}
    assert gen.metric_names('{__name__=~"e|f",job=~"$job"}') == {"e", "f"}


def test_substitute_gives_all_and_a_fixed_window() -> None:
    """Variables become `.*`, the rate window a fixed range, and anything left is an error."""
    expr = 'rate(x{job=~"$job",queue_name=~"${queue_name}",name=~"$name"}[$__rate_interval])'
    assert gen.substitute(expr) == 'rate(x{job=~".*",queue_name=~".*",name=~".*"}[1m])'
    assert gen.substitute('y{hostname=~"$hostname"}[$__rate_interval]', "2m") == (
        'y{hostname=~".*"}[2m]'
    )
    with pytest.raises(ValueError, match="unsubstituted"):
        gen.substitute('z{job=~"$jobs"}')


def test_panel_queries_lists_every_target() -> None:
    """panel_queries gives one (uid, title, expr) per target, in dashboard and panel order."""
    queries = gen.panel_queries()
    assert len(queries) == len(all_exprs())
    assert {q.dashboard_uid for q in queries} == set(UIDS)
    assert tuple(queries[0]) == (
        "celery-overview",
        "Workers up",
        '(count(max by (hostname) (celery_worker_up{job=~"$job",hostname=~"$hostname"}) == 1))'
        " or vector(0)",
    )


def test_provisioned_datasource_is_pinned() -> None:
    """The provisioned Prometheus data source has the dashboards' uid and an env URL."""
    config = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yaml").read_text())
    assert config["apiVersion"] == 1
    [source] = config["datasources"]
    assert (source["type"], source["uid"], source["access"]) == (
        "prometheus",
        gen.DATASOURCE_UID,
        "proxy",
    )
    assert source["url"] == "${PROMETHEUS_URL}"
    assert source["jsonData"]["timeInterval"] == "15s"


def test_dashboard_provider_reads_the_documented_path() -> None:
    """The dashboard provider loads files from the path the README tells to mount."""
    config = yaml.safe_load((GRAFANA / "provisioning/dashboards/celery.yaml").read_text())
    [provider] = config["providers"]
    assert (provider["type"], provider["options"]["path"]) == ("file", gen.MOUNT_PATH)
    docs = (GRAFANA / "README.md").read_text()
    assert gen.MOUNT_PATH in docs
    assert "PROMETHEUS_URL" in docs and "http://prometheus:9090" in docs


def test_every_query_parses_in_promtool(tmp_path: Path) -> None:
    """promtool accepts every panel query, variables substituted, as a recording rule."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": gen.substitute(q.expr)}
        for i, q in enumerate(gen.panel_queries())
    ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    """One promtool input series."""
    text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{text}}}", "values": values}


DAEMON = {"job": "celery-exporter", "instance": "exporter:9808"}
W1 = {"job": "celery-worker", "instance": "w1:9809", "hostname": "celery@w1"}
W2 = {"job": "celery-worker", "instance": "w2:9809", "hostname": "celery@w2"}
ADD = {"name": "app.add", "queue_name": "celery"}
FAIL = {"name": "app.fail", "queue_name": "celery", "exception": "ValueError"}


def test_queries_give_exact_values_for_daemon_and_in_worker_series(tmp_path: Path) -> None:
    """With the daemon and in-worker exporters both scraped, queries count each task once."""
    # Per 15 s step: +45 is 3/s, +15 is 1/s. The daemon has no hostname label and sees
    # 3 app.add/s; the two in-worker exporters see 1/s each, so only max-of-jobs gives 3.
    inputs = [
        series("celery_task_succeeded_total", DAEMON | ADD, "0+45x40"),
        series("celery_task_succeeded_total", W1 | ADD, "0+15x40"),
        series("celery_task_succeeded_total", W2 | ADD, "0+15x40"),
        series("celery_task_failed_total", DAEMON | FAIL, "0+15x40"),
        series("celery_task_failed_total", W1 | FAIL, "0+15x40"),
        series("celery_worker_up", DAEMON | {"hostname": "celery@w1"}, "1x40"),
        series("celery_worker_up", DAEMON | {"hostname": "celery@w2"}, "1x40"),
        series("celery_worker_up", DAEMON | {"hostname": "celery@w3"}, "0x40"),
        series("celery_worker_up", W1, "1x40"),
        series("celery_worker_up", W2, "1x40"),
        series("celery_worker_pool_busy", DAEMON | {"hostname": "celery@w1"}, "1x40"),
        series("celery_worker_pool_busy", W1, "1x40"),
        series("celery_worker_pool_busy", W2, "3x40"),
        series("celery_worker_pool_size", DAEMON | {"hostname": "celery@w1"}, "4x40"),
        series("celery_worker_pool_size", DAEMON | {"hostname": "celery@w2"}, "4x40"),
        series("celery_queue_length", DAEMON | {"queue_name": "celery"}, "5x40"),
        series("celery_queue_length", DAEMON | {"queue_name": "priority"}, "2x40"),
        series("celery_queue_length", DAEMON | {"queue_name": "priority-dead"}, "4x40"),
        series(
            "celery_queue_dead_letter_info",
            DAEMON | {"queue_name": "priority", "dead_letter_queue": "priority-dead"},
            "1x40",
        ),
        series("celery_queue_delayed", DAEMON | {"queue_name": "priority"}, "6x40"),
        series("celery_tasks_active_oldest_start_timestamp_seconds", DAEMON | ADD, "300x40"),
        series("celery_tasks_active_oldest_start_timestamp_seconds", W1 | ADD, "420x40"),
        series("celery_task_runtime_seconds_bucket", DAEMON | ADD | {"le": "1"}, "0+15x40"),
        series("celery_task_runtime_seconds_bucket", DAEMON | ADD | {"le": "10"}, "0+30x40"),
        series("celery_task_runtime_seconds_bucket", DAEMON | ADD | {"le": "+Inf"}, "0+30x40"),
        series("up", DAEMON, "1x40"),
        series("up", W1, "1x40"),
    ]
    cases = [
        (expr_of("celery-overview", "Succeeded"), {}, 3),
        (expr_of("celery-overview", "Failed"), {}, 1),
        (expr_of("celery-tasks", "Succeeded by task"), {"name": "app.add"}, 3),
        (
            expr_of("celery-tasks", "Failures by task and exception"),
            {"name": "app.fail", "exception": "ValueError"},
            1,
        ),
        # (3 + 1 + 1) / (5 + 1 + 1): both sources agree on the ratio.
        (expr_of("celery-overview", "Success ratio"), {}, 5 / 7),
        (expr_of("celery-overview", "Workers up"), {}, 2),
        (expr_of("celery-overview", "Workers down"), {}, 1),
        (expr_of("celery-exporter", "Targets down"), {}, 0),
        # busy: w1 max(1, 1) + w2 3 over size 4 + 4.
        (expr_of("celery-overview", "Pool saturation"), {}, 0.5),
        # celery 5 + priority 2; the dead-letter queue's 4 wait for no worker.
        (expr_of("celery-overview", "Queued"), {}, 7),
        # Only the queue a redrive policy names is a dead-letter queue.
        (expr_of("celery-queues", "Dead-letter queues"), {"queue_name": "priority-dead"}, 4),
        (expr_of("celery-queues", "Delayed"), {"queue_name": "priority"}, 6),
        (
            expr_of("celery-tasks", "Oldest running task by task"),
            {"name": "app.add"},
            300,
        ),
        (expr_of("celery-overview", "Run time quantiles", "(0.5,"), {}, 1),
        (expr_of("celery-overview", "Run time quantiles", "(0.99,"), {}, 9.82),
    ]
    empty = tmp_path / "empty.yml"
    empty.write_text("groups: []\n")
    test = {
        "rule_files": [str(empty)],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": inputs,
                "promql_expr_test": [
                    {
                        "expr": expr,
                        "eval_time": "10m",
                        "exp_samples": [
                            {
                                "labels": "{"
                                + ",".join(f'{k}="{v}"' for k, v in labels.items())
                                + "}",
                                "value": value,
                            }
                        ],
                    }
                    for expr, labels, value in cases
                ],
            }
        ],
    }
    path = tmp_path / "test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    result = subprocess.run(
        ["promtool", "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
