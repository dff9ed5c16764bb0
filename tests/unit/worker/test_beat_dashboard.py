"""The overview dashboard's Beat row gives exact values for beat series, in a real promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.dashboards import load_generator

gen = load_generator()
PROMTOOL = shutil.which("promtool")
#: An active beat (a) and a redbeat standby (b) that serves the same entries and never ticks.
ACTIVE = {"job": "celery-beat", "instance": "127.0.0.1:9809"}
STANDBY = {"job": "celery-beat", "instance": "127.0.0.1:9810"}
ENTRY = {"entry": "nightly-report", "task": "reports.nightly"}


def expr_of(title: str, contains: str = "") -> str:
    """The one query of an overview panel (containing ``contains``), with variables as All."""
    found = [
        q.expr
        for q in gen.panel_queries()
        if q.dashboard_uid == "celery-overview" and q.panel_title == title and contains in q.expr
    ]
    assert len(found) == 1, (title, contains, found)
    return str(gen.substitute(found[0]))


def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    """One input series of a promtool test."""
    text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{text}}}", "values": values}


@pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: `make system-deps` installs it")
def test_beat_row_queries_give_exact_values(tmp_path: Path) -> None:
    """Two beats serve, the tick is 5 min old, one entry's runs and next run read once each."""
    # 15 s steps, evaluated at 10 min (600 s): the tick stops at 300 s; the entry's next run
    # keeps 60 s ahead; it is sent once a step (4 a minute) by the active beat only.
    scheduler = {"scheduler": "redbeat.schedulers.RedBeatScheduler"}
    inputs = [
        series("celery_beat_info", ACTIVE | scheduler, "1x40"),
        series("celery_beat_info", STANDBY | scheduler, "1x40"),
        series("celery_beat_last_tick_timestamp_seconds", ACTIVE, "0+15x20 300x20"),
        series("celery_beat_entry_next_run_timestamp_seconds", ACTIVE | ENTRY, "60+15x40"),
        series("celery_beat_entry_next_run_timestamp_seconds", STANDBY | ENTRY, "60+15x40"),
        series("celery_beat_entry_last_run_timestamp_seconds", ACTIVE | ENTRY, "0+15x20 300x20"),
        series("celery_beat_entry_runs_total", ACTIVE | ENTRY, "0+1x40"),
        series("celery_beat_entry_runs_total", STANDBY | ENTRY, "0x40"),
        series("celery_beat_entry_send_errors_total", ACTIVE | ENTRY, "0x40"),
        series("celery_beat_entries_overflow_total", ACTIVE, "5x40"),
    ]
    entry = {"entry": ENTRY["entry"]}
    cases: list[tuple[str, dict[str, str], float]] = [
        (expr_of("Beats serving"), {}, 2),
        (expr_of("Since beat's last tick"), {}, 300),
        (expr_of("Beat send errors"), {}, 0),
        (expr_of("Entries past the cap"), {}, 5),
        (expr_of("Periodic entries", "next_run"), entry, 60),
        (expr_of("Periodic entries", "last_run"), entry, 300),
        (expr_of("Periodic entries", "runs_total"), entry, 4),
        (expr_of("Periodic entries", "send_errors"), entry, 0),
        (expr_of("Periodic tasks sent", "runs_total"), entry, 4 / 60),
    ]
    empty = tmp_path / "empty.yml"
    empty.write_text("groups: []\n")
    test: dict[str, Any] = {
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
                                + ",".join(f'{k}="{v}"' for k, v in lbl.items())
                                + "}",
                                "value": number,
                            }
                        ],
                    }
                    for expr, lbl, number in cases
                ],
            }
        ],
    }
    path = tmp_path / "test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
