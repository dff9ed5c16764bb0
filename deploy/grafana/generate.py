"""Generate the Celery Grafana dashboards as JSON; `--check` reports files that differ."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

Json = dict[str, Any]

HERE = Path(__file__).resolve().parent
DASHBOARDS_DIR = HERE / "dashboards"
# Where the dashboard provider (provisioning/dashboards/celery.yaml) reads the JSON files.
MOUNT_PATH = "/var/lib/grafana/dashboards/celery"
DATASOURCE_UID = "celery-prometheus"
SCHEMA_VERSION = 39
TAG = "celery"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE_INTERVAL = "$__rate_interval"
# Query variables, in the order the dashboards show them (after `datasource`).
VARIABLES = ("job", "queue_name", "name", "hostname")
GRID_WIDTH = 24

TASK_FILTERS = ("job", "queue_name", "name", "hostname")
WORKER_FILTERS = ("job", "hostname")
QUEUE_FILTERS = ("job", "queue_name")
JOB_FILTERS = ("job",)


# --- PromQL -----------------------------------------------------------------------------


def filters_for(metric: str) -> tuple[str, ...]:
    """Variables whose label the metric carries (task metrics may lack `hostname`)."""
    if metric.startswith(("celery_task_", "celery_tasks_")):
        return TASK_FILTERS
    if metric.startswith("celery_worker_"):
        return WORKER_FILTERS
    if metric.startswith("celery_queue_"):
        return QUEUE_FILTERS
    return JOB_FILTERS


def sel(metric: str) -> str:
    """A selector of the metric filtered by every dashboard variable it has a label for."""
    return metric + "{" + ",".join(f'{label}=~"${label}"' for label in filters_for(metric)) + "}"


def rate(metric: str) -> str:
    """Per-second rate of a counter over `$__rate_interval`."""
    return f"rate({sel(metric)}[{RATE_INTERVAL}])"


def increase(metric: str) -> str:
    """Increase of a counter over `$__rate_interval`."""
    return f"increase({sel(metric)}[{RATE_INTERVAL}])"


def by(labels: Sequence[str]) -> str:
    """A `by (...)` clause, or nothing for no labels."""
    return f" by ({', '.join(labels)})" if labels else ""


def across_sources(inner: str, *labels: str) -> str:
    """One figure of replicas, summed within each job, then the largest job's figure."""
    # Replicas of one exporter (high availability) report the same series but for `instance`
    # and `pod`: keep one. The event daemon and the in-worker exporters both count the whole
    # cluster: adding their jobs together would count every task twice.
    deduplicated = f"max without (instance, pod) ({inner})"
    return f"max{by(labels)} (sum{by(['job', *labels])} ({deduplicated}))"


def gauge(metric: str, *labels: str) -> str:
    """A gauge reported alike by several sources (daemon, in-worker exporter, sidecar)."""
    return f"max{by(labels)} ({sel(metric)})"


def rate_of(metric: str, *labels: str) -> str:
    """Rate of a per-worker counter that several sources may report alike."""
    return f"max{by(labels)} ({rate(metric)})"


def quantile(q: float, histogram: str, *labels: str) -> str:
    """A quantile of a histogram's buckets over `$__rate_interval`."""
    buckets = rate(f"{histogram}_bucket")
    return f"histogram_quantile({q}, sum{by([*labels, 'le'])} ({buckets}))"


def age(timestamp: str, *labels: str) -> str:
    """Seconds since the oldest of a timestamp gauge's values."""
    return f"time() - min{by(labels)} ({sel(timestamp)})"


def or_zero(expr: str) -> str:
    """The expression, or 0 when it has no series (for stat panels)."""
    return f"({expr}) or vector(0)"


_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    }
)


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (label names, functions and keywords left out)."""
    names = {
        name
        for value in re.findall(r'__name__=~?"([^"]*)"', expr)
        for name in value.split("|")
        if name
    }
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    bare = re.sub(r"\{[^}]*\}", " ", bare)  # label matchers
    bare = re.sub(r"\[[^\]]*\]", " ", bare)  # ranges
    bare = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    for match in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", bare):
        if match.group(1).lower() not in _KEYWORDS:
            names.add(match.group(1))
    return names


def substitute(expr: str, rate_interval: str = "1m") -> str:
    """The expression with the variables set to All and a fixed rate window, for the HTTP API."""
    out = expr.replace(RATE_INTERVAL, rate_interval)
    out = re.sub(r"\$\{?(" + "|".join(VARIABLES) + r")\}?(?!\w)", ".*", out)
    if "$" in out:
        raise ValueError(f"unsubstituted variable in {out!r}")
    return out


# --- Panels -------------------------------------------------------------------------------


class Target(NamedTuple):
    """One query of a panel."""

    expr: str
    legend: str = ""


def _targets(targets: Sequence[Target], *, instant: bool, table: bool = False) -> list[Json]:
    """The JSON of a panel's targets, refIds A, B, ..."""
    out = []
    for index, target in enumerate(targets):
        item: Json = {
            "datasource": DATASOURCE,
            "editorMode": "code",
            "expr": target.expr,
            "instant": instant,
            "legendFormat": target.legend or "__auto",
            "range": not instant,
            "refId": chr(ord("A") + index),
        }
        if table:
            item["format"] = "table"
        out.append(item)
    return out


def _panel(
    kind: str, title: str, description: str, width: int, height: int, links: Sequence[Json]
) -> Json:
    """The fields every panel has; `layout` adds the id and the position."""
    return {
        "datasource": DATASOURCE,
        "description": description,
        "gridPos": {"h": height, "w": width},
        "links": list(links),
        "title": title,
        "type": kind,
    }


def dashboard_link(title: str, uid: str, **variables: str) -> Json:
    """A panel link to another dashboard, keeping the time range and the variables."""
    params = ["${__url_time_range}", "${datasource:queryparam}"]
    params += [f"var-{name}={value}" for name, value in variables.items()]
    params += [f"${{{name}:queryparam}}" for name in VARIABLES if name not in variables]
    return {"targetBlank": False, "title": title, "url": f"/d/{uid}/{uid}?{'&'.join(params)}"}


def timeseries(
    title: str,
    description: str,
    targets: Sequence[Target],
    unit: str,
    *,
    width: int = 12,
    height: int = 8,
    stack: bool = False,
    step: bool = False,
    links: Sequence[Json] = (),
    no_value: str = "",
) -> Json:
    """A time series panel; `step` draws gauges that jump (up/down) as steps.

    `no_value` is what the panel says instead of "No data" when that is normal.
    """
    panel = _panel("timeseries", title, description, width, height, links)
    panel["fieldConfig"] = {
        "defaults": {
            "color": {"mode": "palette-classic"},
            "custom": {
                "drawStyle": "line",
                "fillOpacity": 20 if stack else 10,
                "lineInterpolation": "stepAfter" if step else "linear",
                "lineWidth": 1,
                "showPoints": "never",
                "spanNulls": False,
                "stacking": {"group": "A", "mode": "normal" if stack else "none"},
            },
            "min": 0,
            "unit": unit,
        },
        "overrides": [],
    }
    if no_value:
        panel["fieldConfig"]["defaults"]["noValue"] = no_value
    panel["options"] = {
        "legend": {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    panel["targets"] = _targets(targets, instant=False)
    return panel


def _thresholds(steps: Sequence[tuple[float | None, str]]) -> Json:
    """Absolute thresholds from (lower bound, colour) pairs; the first bound is None."""
    return {
        "mode": "absolute",
        "steps": [{"color": color, "value": value} for value, color in steps],
    }


OK_WHEN_ZERO = ((None, "green"), (1, "red"))
#: What a panel fed only by the in-worker exporter says when none runs (event daemon, sidecar).
NEEDS_WORKER_EXPORTER = "no in-worker exporter scraped"

OK_WHEN_POSITIVE = ((None, "red"), (1, "green"))
NEUTRAL = ((None, "blue"),)


def stat(
    title: str,
    description: str,
    expr: str,
    unit: str,
    *,
    thresholds: Sequence[tuple[float | None, str]] = NEUTRAL,
    width: int = 3,
    height: int = 4,
    links: Sequence[Json] = (),
) -> Json:
    """A single-number panel showing the last value, coloured by thresholds."""
    panel = _panel("stat", title, description, width, height, links)
    panel["fieldConfig"] = {
        "defaults": {
            "color": {"mode": "thresholds"},
            "thresholds": _thresholds(thresholds),
            "unit": unit,
        },
        "overrides": [],
    }
    panel["options"] = {
        "colorMode": "value",
        "graphMode": "area",
        "justifyMode": "auto",
        "orientation": "auto",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "textMode": "auto",
    }
    panel["targets"] = _targets([Target(expr)], instant=False)
    return panel


def bargauge(
    title: str,
    description: str,
    target: Target,
    unit: str,
    *,
    width: int = 12,
    height: int = 8,
    links: Sequence[Json] = (),
) -> Json:
    """Horizontal bars of the current value of each series."""
    panel = _panel("bargauge", title, description, width, height, links)
    panel["fieldConfig"] = {
        "defaults": {
            "color": {"mode": "continuous-GrYlRd"},
            "min": 0,
            "thresholds": _thresholds(NEUTRAL),
            "unit": unit,
        },
        "overrides": [],
    }
    panel["options"] = {
        "displayMode": "gradient",
        "minVizHeight": 10,
        "minVizWidth": 0,
        "orientation": "horizontal",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "showUnfilled": True,
        "valueMode": "color",
    }
    panel["targets"] = _targets([target], instant=True)
    return panel


class Column(NamedTuple):
    """One value column of a table: its header, query and unit."""

    header: str
    expr: str
    unit: str


def table(
    title: str,
    description: str,
    key: str,
    columns: Sequence[Column],
    *,
    key_link: Json | None = None,
    width: int = 24,
    height: int = 8,
) -> Json:
    """A table of instant queries joined on the `key` label, one column per query."""
    panel = _panel("table", title, description, width, height, ())
    overrides: list[Json] = [
        {
            "matcher": {"id": "byName", "options": column.header},
            "properties": [{"id": "unit", "value": column.unit}],
        }
        for column in columns
    ]
    if key_link is not None:
        overrides.append(
            {
                "matcher": {"id": "byName", "options": key},
                "properties": [{"id": "links", "value": [key_link]}],
            }
        )
    panel["fieldConfig"] = {"defaults": {"unit": "short"}, "overrides": overrides}
    panel["options"] = {
        "cellHeight": "sm",
        "footer": {"show": False},
        "showHeader": True,
        "sortBy": [{"desc": True, "displayName": columns[0].header}],
    }
    refs = [chr(ord("A") + index) for index in range(len(columns))]
    panel["transformations"] = [
        {"id": "merge", "options": {}},
        {
            "id": "organize",
            "options": {
                "excludeByName": {"Time": True},
                "indexByName": {key: 0} | {f"Value #{r}": i + 1 for i, r in enumerate(refs)},
                "renameByName": {
                    f"Value #{r}": c.header for r, c in zip(refs, columns, strict=True)
                },
            },
        },
    ]
    panel["targets"] = _targets(
        [Target(column.expr) for column in columns], instant=True, table=True
    )
    return panel


def info_table(title: str, description: str, metric: str, *, width: int = 24) -> Json:
    """A table of an info metric's labels (one row per series)."""
    panel = _panel("table", title, description, width, 5, ())
    panel["fieldConfig"] = {"defaults": {"unit": "short"}, "overrides": []}
    panel["options"] = {"cellHeight": "sm", "footer": {"show": False}, "showHeader": True}
    panel["transformations"] = [
        {
            "id": "organize",
            "options": {"excludeByName": {"Time": True, "Value": True, "__name__": True}},
        }
    ]
    panel["targets"] = _targets([Target(sel(metric))], instant=True, table=True)
    return panel


def row(title: str) -> Json:
    """A (not collapsed) row header across the dashboard."""
    return {
        "collapsed": False,
        "gridPos": {"h": 1, "w": GRID_WIDTH},
        "panels": [],
        "title": title,
        "type": "row",
    }


def layout(panels: Iterable[Json]) -> list[Json]:
    """Number the panels 1, 2, ... and place them left to right, wrapping at 24 columns."""
    out: list[Json] = []
    x = y = line_height = 0
    for number, source in enumerate(panels, start=1):
        panel = dict(source)
        width, height = panel["gridPos"]["w"], panel["gridPos"]["h"]
        is_row = panel["type"] == "row"
        if x + width > GRID_WIDTH or is_row:
            x, y, line_height = 0, y + line_height, 0
        panel["gridPos"] = {"h": height, "w": width, "x": x, "y": y}
        panel["id"] = number
        if is_row:
            y += height
        else:
            x += width
            line_height = max(line_height, height)
        out.append(panel)
    return out


# --- Dashboards -------------------------------------------------------------------------


def variables() -> list[Json]:
    """`datasource`, then the query variables job, queue_name, name and hostname."""
    datasource = {
        "current": {"selected": False, "text": "Prometheus", "value": DATASOURCE_UID},
        "hide": 0,
        "includeAll": False,
        "label": "Data source",
        "multi": False,
        "name": "datasource",
        "options": [],
        "query": "prometheus",
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
        "type": "datasource",
    }
    queries = {
        # Every source serves one of these: daemon, in-worker exporter, sidecar.
        "job": (
            "Job",
            'label_values({__name__=~"celery_worker_up|celery_worker_pool_processes'
            '|celery_exporter_build_info"}, job)',
            None,
        ),
        "queue_name": (
            "Queue",
            'label_values({__name__=~"celery_queue_length|celery_task_sent_total'
            '|celery_task_received_total",job=~"$job"}, queue_name)',
            ".*",
        ),
        "name": (
            "Task",
            'label_values({__name__=~"celery_task_sent_total|celery_task_received_total"'
            ',job=~"$job",queue_name=~"$queue_name"}, name)',
            ".*",
        ),
        "hostname": (
            "Worker",
            'label_values({__name__=~"celery_worker_up|celery_worker_pool_processes"'
            ',job=~"$job"}, hostname)',
            ".*",
        ),
    }
    out = [datasource]
    for name in VARIABLES:
        label, query, all_value = queries[name]
        out.append(
            {
                "allValue": all_value,
                "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                "datasource": DATASOURCE,
                "definition": query,
                "hide": 0,
                "includeAll": True,
                "label": label,
                "multi": True,
                "name": name,
                "options": [],
                "query": query,
                "refresh": 2,
                "regex": "",
                "skipUrlSync": False,
                "sort": 1,
                "type": "query",
            }
        )
    return out


def dashboard(uid: str, title: str, description: str, panels: Iterable[Json]) -> Json:
    """A complete dashboard with the shared variables, links and defaults."""
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [
            {
                "asDropdown": False,
                "icon": "external link",
                "includeVars": True,
                "keepTime": True,
                "tags": [TAG],
                "targetBlank": False,
                "title": "Celery dashboards",
                "type": "dashboards",
            }
        ],
        "panels": layout(panels),
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": [TAG],
        "templating": {"list": variables()},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


def workers_up() -> str:
    """One series per worker, 1 while up, deduplicated over sources."""
    return gauge("celery_worker_up", "hostname")


def overview() -> Json:
    """Workers, throughput, success ratio, failures, queue depth, waits and run times."""

    def ratio_part(metric: str) -> str:
        """Rate summed over every series, or 0."""
        return f"(sum({rate(metric)}) or vector(0))"

    ok = ratio_part("celery_task_succeeded_total")
    succeeded = across_sources(rate("celery_task_succeeded_total"))
    failed = across_sources(rate("celery_task_failed_total"))
    to_tasks = dashboard_link("Tasks", "celery-tasks")
    to_workers = dashboard_link("Workers", "celery-workers")
    to_queues = dashboard_link("Queues", "celery-queues")
    panels = [
        stat(
            "Workers up",
            "Workers that heartbeat (daemon) or answer scrapes (in-worker exporter).",
            or_zero(f"count({workers_up()} == 1)"),
            "none",
            thresholds=OK_WHEN_POSITIVE,
            links=[to_workers],
        ),
        stat(
            "Workers down",
            "Workers the daemon saw go offline or stop heartbeating; they read 0 for "
            "--worker-purge-after (1 h) before their series go.",
            or_zero(f"count({workers_up()} == 0)"),
            "none",
            thresholds=OK_WHEN_ZERO,
            links=[to_workers],
        ),
        stat(
            "Succeeded",
            "Tasks that succeeded, per second.",
            or_zero(succeeded),
            "ops",
            links=[to_tasks],
        ),
        stat(
            "Failed",
            "Tasks that failed, per second (time limits and Reject(requeue=False) included).",
            or_zero(failed),
            "ops",
            thresholds=((None, "green"), (0.001, "red")),
            links=[to_tasks],
        ),
        stat(
            "Success ratio",
            "Succeeded / (succeeded + failed) over the rate window; NaN while no task finishes.",
            f"{ok} / ({ok} + {ratio_part('celery_task_failed_total')})",
            "percentunit",
            thresholds=((None, "red"), (0.95, "orange"), (0.99, "green")),
            links=[to_tasks],
        ),
        stat(
            "Running",
            "Tasks started and not yet finished.",
            or_zero(across_sources(sel("celery_tasks_active"))),
            "none",
            links=[to_tasks],
        ),
        stat(
            "Queued",
            "Messages waiting in the broker's queues (queue collector, every 10 s); messages in "
            "dead-letter queues (SQS) wait for no worker and are left out.",
            or_zero(
                f"sum({gauge('celery_queue_length', 'queue_name')} unless on (queue_name) "
                f"label_join({gauge('celery_queue_dead_letter_info', 'dead_letter_queue')}"
                ', "queue_name", "", "dead_letter_queue"))'
            ),
            "none",
            links=[to_queues],
        ),
        stat(
            "Pool saturation",
            "Busy pool slots / pool size over all workers (pool size from inspect, every 30 s).",
            f"sum({gauge('celery_worker_pool_busy', 'hostname')})"
            f" / sum({gauge('celery_worker_pool_size', 'hostname')})",
            "percentunit",
            thresholds=((None, "green"), (0.8, "orange"), (0.95, "red")),
            links=[to_workers],
        ),
        timeseries(
            "Task throughput by state",
            "Task events per second: received by a worker, started, succeeded, failed, retried.",
            [
                Target(across_sources(rate(f"celery_task_{state}_total")), state)
                for state in ("received", "started", "succeeded", "failed", "retried")
            ],
            "ops",
            links=[to_tasks],
        ),
        timeseries(
            "Failures by exception",
            "Failed tasks per second by exception class (TimeLimitExceeded, Reject, ...).",
            [
                Target(
                    across_sources(rate("celery_task_failed_total"), "exception"),
                    "{{exception}}",
                )
            ],
            "ops",
            stack=True,
            links=[to_tasks],
        ),
        timeseries(
            "Queue depth",
            "Messages waiting in each queue (on Redis summed over priorities).",
            [Target(gauge("celery_queue_length", "queue_name"), "{{queue_name}}")],
            "none",
            links=[to_queues],
        ),
        timeseries(
            "Workers busy vs pool size",
            "Tasks executing in all pools against the total pool size.",
            [
                Target(f"sum({gauge('celery_worker_pool_busy', 'hostname')})", "busy"),
                Target(f"sum({gauge('celery_worker_pool_size', 'hostname')})", "pool size"),
            ],
            "none",
            links=[to_workers],
        ),
        *(
            timeseries(
                title,
                description,
                [Target(quantile(q, histogram), f"p{round(q * 100)}") for q in (0.5, 0.95, 0.99)],
                "s",
                width=8,
            )
            for title, description, histogram in (
                (
                    "Run time quantiles",
                    "From task-started to task-succeeded or task-failed.",
                    "celery_task_runtime_seconds",
                ),
                (
                    "Queue wait quantiles",
                    "From task-sent (or the ETA) to task-started; needs task_send_sent_event "
                    "in producers.",
                    "celery_task_queue_wait_seconds",
                ),
                (
                    "Prefetch wait quantiles",
                    "From task-received by the worker (or the ETA) to task-started.",
                    "celery_task_prefetch_wait_seconds",
                ),
            )
        ),
    ]
    return dashboard(
        "celery-overview",
        "Celery / Overview",
        "Health of the Celery cluster at a glance: workers, throughput, failures, queues, "
        "waits, beat.",
        [*panels, *beat_row()],
    )


def beat_row() -> list[Json]:
    """Celery beat: serving, ticking, sends and send errors, and each entry's runs."""

    def by_entry(metric: str) -> str:
        """The metric's largest value per entry (one of a redbeat standby pair)."""
        return f"max by (entry) ({sel(metric)})"

    def per_entry(how: Callable[[str], str], metric: str) -> str:
        """A counter's rate or increase summed per entry."""
        return f"sum by (entry) ({how(metric)})"

    runs, errors = "celery_beat_entry_runs_total", "celery_beat_entry_send_errors_total"
    return [
        row("Beat"),
        stat(
            "Beats serving",
            "Celery beat processes that answer scrapes (celery_beat_info, job celery-beat).",
            or_zero(f"count({sel('celery_beat_info')})"),
            "none",
            thresholds=OK_WHEN_POSITIVE,
        ),
        stat(
            "Since beat's last tick",
            "Seconds since beat's scheduler last ticked; it ticks at least every "
            "beat_max_loop_interval (300 s by default). CeleryBeatStuck fires past 10 minutes.",
            f"time() - max({sel('celery_beat_last_tick_timestamp_seconds')})",
            "s",
        ),
        stat(
            "Beat send errors",
            "Sends of periodic tasks that raised (broker unreachable, a bad option), over the "
            "panel's interval.",
            or_zero(f"sum({increase(errors)})"),
            "none",
            thresholds=OK_WHEN_ZERO,
        ),
        stat(
            "Entries past the cap",
            "Sends of entries past install(beat_max_entries=...), counted without series.",
            or_zero(f"sum({sel('celery_beat_entries_overflow_total')})"),
            "none",
            thresholds=OK_WHEN_ZERO,
        ),
        timeseries(
            "Periodic tasks sent",
            "Tasks beat sent per second, by entry, and sends that raised.",
            [
                Target(per_entry(rate, runs), "{{entry}}"),
                Target(per_entry(rate, errors), "{{entry}} errors"),
            ],
            "ops",
            width=12,
        ),
        table(
            "Periodic entries",
            "Each beat entry: when it ran and runs next (negative: overdue; CeleryBeatEntryLate "
            "fires 5 minutes past), and what beat sent over the panel's interval.",
            "entry",
            [
                Column(
                    "Next run in",
                    f"{by_entry('celery_beat_entry_next_run_timestamp_seconds')} - time()",
                    "s",
                ),
                Column(
                    "Since last run",
                    f"time() - {by_entry('celery_beat_entry_last_run_timestamp_seconds')}",
                    "s",
                ),
                Column("Sent", per_entry(increase, runs), "none"),
                Column("Send errors", per_entry(increase, errors), "none"),
            ],
            width=12,
        ),
    ]


def tasks() -> Json:
    """Per-task drill-down: rates, failures, run and wait times, running and stuck tasks."""

    def per_task(metric: str, *labels: str) -> str:
        """A counter's rate by task name (and labels), counted once over sources."""
        return across_sources(rate(metric), "name", *labels)

    self_link = {
        "targetBlank": False,
        "title": "Show only this task",
        "url": "/d/celery-tasks/celery-tasks?${__url_time_range}&${datasource:queryparam}"
        "&${job:queryparam}&${queue_name:queryparam}&${hostname:queryparam}"
        "&var-name=${__value.raw}",
    }
    panels = [
        table(
            "Tasks",
            "Every task name now: rates over the rate window, p95 run time, running tasks. "
            "Click a name to show only that task.",
            "name",
            [
                Column("Received /s", per_task("celery_task_received_total"), "ops"),
                Column("Succeeded /s", per_task("celery_task_succeeded_total"), "ops"),
                Column("Failed /s", per_task("celery_task_failed_total"), "ops"),
                Column("Retried /s", per_task("celery_task_retried_total"), "ops"),
                Column("p95 run time", quantile(0.95, "celery_task_runtime_seconds", "name"), "s"),
                Column("Running", across_sources(sel("celery_tasks_active"), "name"), "none"),
            ],
            key_link=self_link,
        ),
        timeseries(
            "Succeeded by task",
            "Tasks that succeeded per second, by task name.",
            [Target(per_task("celery_task_succeeded_total"), "{{name}}")],
            "ops",
        ),
        timeseries(
            "Failed by task",
            "Tasks that failed per second, by task name.",
            [Target(per_task("celery_task_failed_total"), "{{name}}")],
            "ops",
        ),
        timeseries(
            "Failures by task and exception",
            "Failed tasks per second by task name and exception class.",
            [Target(per_task("celery_task_failed_total", "exception"), "{{name}} {{exception}}")],
            "ops",
        ),
        timeseries(
            "Retries by task and exception",
            "Retries per second by task name and the exception that caused them.",
            [Target(per_task("celery_task_retried_total", "exception"), "{{name}} {{exception}}")],
            "ops",
        ),
        timeseries(
            "Run time p95 by task",
            "95th percentile of the run time (task-started to final event), by task name.",
            [Target(quantile(0.95, "celery_task_runtime_seconds", "name"), "{{name}}")],
            "s",
        ),
        timeseries(
            "Mean run time by task",
            "Mean run time over the rate window, by task name and final state.",
            [
                Target(
                    f"sum by (name, state) ({rate('celery_task_runtime_seconds_sum')})"
                    f" / sum by (name, state) ({rate('celery_task_runtime_seconds_count')})",
                    "{{name}} {{state}}",
                )
            ],
            "s",
        ),
        timeseries(
            "Queue wait p95 by task",
            "95th percentile from task-sent (or the ETA) to task-started; needs "
            "task_send_sent_event in producers.",
            [Target(quantile(0.95, "celery_task_queue_wait_seconds", "name"), "{{name}}")],
            "s",
        ),
        timeseries(
            "Prefetch wait p95 by task",
            "95th percentile from task-received by a worker (or the ETA) to task-started.",
            [Target(quantile(0.95, "celery_task_prefetch_wait_seconds", "name"), "{{name}}")],
            "s",
        ),
        timeseries(
            "Running by task",
            "Tasks started and not yet finished, by task name.",
            [Target(across_sources(sel("celery_tasks_active"), "name"), "{{name}}")],
            "none",
            stack=True,
        ),
        timeseries(
            "Oldest running task by task",
            "How long the oldest running task of each name has run: a stuck task keeps growing.",
            [Target(age("celery_tasks_active_oldest_start_timestamp_seconds", "name"), "{{name}}")],
            "s",
        ),
        timeseries(
            "Time limits by task",
            "Tasks stopped by their soft or hard time limit per second, by task name and kind.",
            [Target(per_task("celery_task_timeouts_total", "kind"), "{{name}} {{kind}}")],
            "ops",
        ),
        timeseries(
            "Revoked and rejected by task",
            "Tasks revoked, and tasks a worker rejected, per second, by task name.",
            [
                Target(per_task("celery_task_revoked_total"), "{{name}} revoked"),
                Target(per_task("celery_task_rejected_total"), "{{name}} rejected"),
            ],
            "ops",
        ),
    ]
    return dashboard(
        "celery-tasks",
        "Celery / Tasks",
        "Per-task drill-down; pick task names with the Task variable.",
        panels,
    )


def workers() -> Json:
    """Worker liveness, pools, prefetch and the sidecar's CPU, memory and I/O."""

    def worker(metric: str, legend: str = "{{hostname}}") -> Target:
        """A per-worker gauge, one series per hostname."""
        return Target(gauge(metric, "hostname"), legend)

    def process(metric: str) -> Target:
        """A sidecar gauge, one series per hostname and role."""
        return Target(gauge(metric, "hostname", "role"), "{{hostname}} {{role}}")

    self_link = {
        "targetBlank": False,
        "title": "Show only this worker",
        "url": "/d/celery-workers/celery-workers?${__url_time_range}&${datasource:queryparam}"
        "&${job:queryparam}&${queue_name:queryparam}&${name:queryparam}"
        "&var-hostname=${__value.raw}",
    }
    panels = [
        stat(
            "Workers up",
            "Workers that heartbeat (daemon) or answer scrapes (in-worker exporter).",
            or_zero(f"count({workers_up()} == 1)"),
            "none",
            thresholds=OK_WHEN_POSITIVE,
            width=6,
        ),
        stat(
            "Workers down",
            "Workers the daemon saw go offline or stop heartbeating (kept at 0 for 1 h).",
            or_zero(f"count({workers_up()} == 0)"),
            "none",
            thresholds=OK_WHEN_ZERO,
            width=6,
        ),
        stat(
            "Pool busy",
            "Tasks executing in all pools now.",
            or_zero(f"sum({gauge('celery_worker_pool_busy', 'hostname')})"),
            "none",
            width=6,
        ),
        stat(
            "Pool size",
            "Total pool processes (max concurrency) over all workers, from inspect stats.",
            or_zero(f"sum({gauge('celery_worker_pool_size', 'hostname')})"),
            "none",
            width=6,
        ),
        table(
            "Workers",
            "Every worker now. Click a name to show only that worker.",
            "hostname",
            [
                Column("Up", gauge("celery_worker_up", "hostname"), "none"),
                Column("Pool busy", gauge("celery_worker_pool_busy", "hostname"), "none"),
                Column("Pool size", gauge("celery_worker_pool_size", "hostname"), "none"),
                Column("Prefetch", gauge("celery_worker_prefetch_count", "hostname"), "none"),
                Column("Reserved", gauge("celery_worker_tasks_reserved", "hostname"), "none"),
                Column(
                    "Since heartbeat",
                    age("celery_worker_last_heartbeat_timestamp_seconds", "hostname"),
                    "s",
                ),
            ],
            key_link=self_link,
        ),
        timeseries(
            "Up",
            "1 while the worker heartbeats (or answers scrapes), 0 once it went down.",
            [worker("celery_worker_up")],
            "none",
            step=True,
        ),
        timeseries(
            "Pool busy vs size",
            "Tasks executing in each worker's pool against its pool size.",
            [
                worker("celery_worker_pool_busy", "{{hostname}} busy"),
                worker("celery_worker_pool_size", "{{hostname}} size"),
            ],
            "none",
        ),
        timeseries(
            "Pool saturation",
            "Busy slots / pool size per worker; at 100 % new tasks wait for a free slot.",
            [
                Target(
                    f"{gauge('celery_worker_pool_busy', 'hostname')}"
                    f" / {gauge('celery_worker_pool_size', 'hostname')}",
                    "{{hostname}}",
                )
            ],
            "percentunit",
        ),
        timeseries(
            "Prefetch count",
            "The worker's current prefetch count (grows by one per ETA task held), from inspect.",
            [worker("celery_worker_prefetch_count")],
            "none",
        ),
        timeseries(
            "Reserved and scheduled",
            "Tasks received and not started (prefetched), and ETA/countdown tasks held.",
            [
                worker("celery_worker_tasks_reserved", "{{hostname}} reserved"),
                worker("celery_worker_tasks_scheduled", "{{hostname}} scheduled"),
            ],
            "none",
        ),
        timeseries(
            "Processed by worker",
            "Tasks each worker processed per second (from its heartbeats).",
            [
                Target(
                    rate_of("celery_worker_tasks_processed_total", "hostname"),
                    "{{hostname}}",
                )
            ],
            "ops",
        ),
        timeseries(
            "Load average",
            "The worker host's 1-minute load average, from heartbeats.",
            [worker("celery_worker_load1")],
            "short",
        ),
        timeseries(
            "Since last heartbeat",
            "Seconds since the daemon last received each worker's heartbeat (every 2 s).",
            [Target(age("celery_worker_last_heartbeat_timestamp_seconds", "hostname"))],
            "s",
        ),
        row("Processes (resource sidecar or in-worker exporter)"),
        timeseries(
            "CPU",
            "CPU time per second of the main process and of the pool children (1 = one core).",
            [
                Target(
                    rate_of("celery_worker_process_cpu_seconds_total", "hostname", "role"),
                    "{{hostname}} {{role}}",
                )
            ],
            "percentunit",
        ),
        timeseries(
            "Resident memory",
            "Resident memory of the main process and of all pool children together.",
            [process("celery_worker_process_resident_memory_bytes")],
            "bytes",
        ),
        timeseries(
            "Largest pool process",
            "Resident memory of the largest pool child: steady growth means a memory leak.",
            [worker("celery_worker_pool_process_max_resident_memory_bytes")],
            "bytes",
        ),
        timeseries(
            "Pool processes and restarts",
            "Pool children alive, and children replaced (max-tasks-per-child, crashes, "
            "memory limits) in each rate window.",
            [
                worker("celery_worker_pool_processes", "{{hostname}} processes"),
                Target(
                    f"max by (hostname) ({increase('celery_worker_pool_process_restarts_total')})",
                    "{{hostname}} restarts",
                ),
            ],
            "none",
        ),
        timeseries(
            "Lost and shut-down workers",
            "Workers down that never announced a shutdown (what CeleryWorkerDown pages on), and "
            "workers that shut down warm (deploys, scale-downs); down workers stay listed for "
            "--worker-purge-after.",
            [
                Target(
                    or_zero(
                        f"count({gauge('celery_worker_up', 'hostname')} == 0 unless "
                        f"{gauge('celery_worker_shutdown_timestamp_seconds', 'hostname')})"
                    ),
                    "lost",
                ),
                Target(
                    or_zero(
                        f"count({gauge('celery_worker_shutdown_timestamp_seconds', 'hostname')})"
                    ),
                    "shut down",
                ),
            ],
            "none",
        ),
        timeseries(
            "Messages the worker could not run",
            "In-worker exporter: messages naming an unregistered task, messages that are not "
            "tasks, and Celery's internal errors, in each rate window.",
            [
                Target(
                    f"max by (hostname, kind) ({increase('celery_worker_task_errors_total')})",
                    "{{hostname}} {{kind}}",
                )
            ],
            "none",
            no_value=NEEDS_WORKER_EXPORTER,
        ),
        timeseries(
            "Disk I/O",
            "Bytes read and written per second by the main process and the pool children.",
            [
                Target(
                    rate_of(f"celery_worker_process_io_{way}_bytes_total", "hostname", "role"),
                    f"{{{{hostname}}}} {{{{role}}}} {way}",
                )
                for way in ("read", "write")
            ],
            "Bps",
        ),
        timeseries(
            "Open files and threads",
            "Open file descriptors and threads of the main process and the pool children.",
            [
                Target(
                    gauge("celery_worker_process_open_fds", "hostname", "role"),
                    "{{hostname}} {{role}} fds",
                ),
                Target(
                    gauge("celery_worker_process_threads", "hostname", "role"),
                    "{{hostname}} {{role}} threads",
                ),
            ],
            "none",
        ),
    ]
    return dashboard(
        "celery-workers",
        "Celery / Workers",
        "Worker liveness, pool use and prefetch; process CPU, memory and I/O come from the "
        "resource sidecar or the in-worker exporter.",
        panels,
    )


def queues() -> Json:
    """Queue depth, unacknowledged messages, consumers, age and flow per queue."""

    def per_queue(metric: str) -> str:
        """A counter's rate by queue, counted once over sources."""
        return across_sources(rate(metric), "queue_name")

    self_link = {
        "targetBlank": False,
        "title": "Show only this queue",
        "url": "/d/celery-queues/celery-queues?${__url_time_range}&${datasource:queryparam}"
        "&${job:queryparam}&${name:queryparam}&${hostname:queryparam}"
        "&var-queue_name=${__value.raw}",
    }
    panels = [
        bargauge(
            "Messages waiting",
            "Messages ready in each queue now.",
            Target(gauge("celery_queue_length", "queue_name"), "{{queue_name}}"),
            "none",
        ),
        table(
            "Queues",
            "Every queue now. Click a name to show only that queue.",
            "queue_name",
            [
                Column("Waiting", gauge("celery_queue_length", "queue_name"), "none"),
                Column("Unacked", gauge("celery_queue_unacked", "queue_name"), "none"),
                Column("Consumers", gauge("celery_queue_consumers", "queue_name"), "none"),
                Column("Sent /s", per_queue("celery_task_sent_total"), "ops"),
                Column("Received /s", per_queue("celery_task_received_total"), "ops"),
            ],
            key_link=self_link,
            width=12,
        ),
        timeseries(
            "Queue length",
            "Messages ready in each queue (on Redis summed over priorities).",
            [Target(gauge("celery_queue_length", "queue_name"), "{{queue_name}}")],
            "none",
        ),
        timeseries(
            "Unacknowledged",
            "Messages delivered to workers and not yet acknowledged (Redis; RabbitMQ with "
            "--rabbitmq-management-url).",
            [Target(gauge("celery_queue_unacked", "queue_name"), "{{queue_name}}")],
            "none",
        ),
        timeseries(
            "Consumers",
            "Workers consuming each queue: 0 with messages waiting means nobody will run them.",
            [Target(gauge("celery_queue_consumers", "queue_name"), "{{queue_name}}")],
            "none",
            step=True,
        ),
        timeseries(
            "Oldest waiting message",
            "Age of the oldest message still waiting (Redis, with task_send_sent_event); 0 for "
            "an empty queue.",
            [
                Target(
                    f"({age('celery_queue_oldest_message_sent_timestamp_seconds', 'queue_name')}) "
                    f"or ({gauge('celery_queue_length', 'queue_name')} == 0)",
                    "{{queue_name}}",
                )
            ],
            "s",
            no_value="no waiting message with a known send time",
        ),
        timeseries(
            "Delayed",
            "Messages SQS holds back until their countdown or ETA ends "
            "(ApproximateNumberOfMessagesDelayed); they are not counted as waiting.",
            [Target(gauge("celery_queue_delayed", "queue_name"), "{{queue_name}}")],
            "none",
            no_value="SQS brokers only",
        ),
        timeseries(
            "Dead-letter queues",
            "Messages in each queue that some queue's redrive policy names as its dead-letter "
            "queue (SQS): tasks SQS handed out too often without a delete. Rising is the "
            "CeleryDeadLetterQueueGrowing alert; filtered by Queue, pick the source queue too.",
            [
                Target(
                    f"{gauge('celery_queue_length', 'queue_name')} and on (queue_name) "
                    f"label_join({gauge('celery_queue_dead_letter_info', 'dead_letter_queue')}"
                    ', "queue_name", "", "dead_letter_queue")',
                    "{{queue_name}}",
                )
            ],
            "none",
            no_value="no dead-letter queue (SQS redrive policies)",
        ),
        timeseries(
            "Sent vs received",
            "Tasks published to each queue (needs task_send_sent_event) and received by workers, "
            "per second: sent above received means the queue grows.",
            [
                Target(per_queue("celery_task_sent_total"), "{{queue_name}} sent"),
                Target(per_queue("celery_task_received_total"), "{{queue_name}} received"),
            ],
            "ops",
        ),
        timeseries(
            "Queue wait p95",
            "95th percentile from task-sent (or the ETA) to task-started, by queue.",
            [
                Target(
                    quantile(0.95, "celery_task_queue_wait_seconds", "queue_name"),
                    "{{queue_name}}",
                )
            ],
            "s",
        ),
    ]
    return dashboard(
        "celery-queues",
        "Celery / Queues",
        "Broker queues: depth, unacknowledged and delayed messages, consumers, age, flow and "
        "dead-letter queues.",
        panels,
    )


def exporter() -> Json:
    """The exporters' own health: broker link, event stream, caps, collectors, process."""

    def per_instance(expr: str) -> str:
        """The expression summed per scrape target."""
        return f"sum by (job, instance) ({expr})"

    panels = [
        stat(
            "Broker connected",
            "The lowest celery_exporter_broker_up: 1 while every daemon consumes events.",
            f"min({sel('celery_exporter_broker_up')})",
            "none",
            thresholds=OK_WHEN_POSITIVE,
            width=4,
        ),
        stat(
            "Since last event",
            "Seconds since the last event; heartbeats arrive every 2 s, so this stays small "
            "while the event stream works.",
            f"time() - max({sel('celery_exporter_last_event_timestamp_seconds')})",
            "s",
            thresholds=((None, "green"), (30, "orange"), (120, "red")),
            width=4,
        ),
        stat(
            "Events",
            "Events received per second.",
            or_zero(f"sum({rate('celery_exporter_events_total')})"),
            "ops",
            width=4,
        ),
        stat(
            "Tracked tasks",
            "Tasks in the in-flight table (capped by --max-tracked-tasks).",
            or_zero(f"sum({sel('celery_exporter_tracked_tasks')})"),
            "none",
            width=4,
        ),
        stat(
            "Targets down",
            "Scrape targets of the selected jobs that Prometheus cannot scrape.",
            or_zero(f"count({sel('up')} == 0)"),
            "none",
            thresholds=OK_WHEN_ZERO,
            width=4,
        ),
        stat(
            "Collectors failing",
            "Background collectors (queues, inspect) whose last poll failed.",
            or_zero(f"count({sel('celery_exporter_collector_success')} == 0)"),
            "none",
            thresholds=OK_WHEN_ZERO,
            width=4,
        ),
        timeseries(
            "Events by type",
            "Events received per second by type; unknown types count as other.",
            [Target(f"sum by (type) ({rate('celery_exporter_events_total')})", "{{type}}")],
            "ops",
            stack=True,
        ),
        timeseries(
            "Bad and repeated events",
            "Messages that could not be decoded (by reason) and repeated final events, per second.",
            [
                Target(
                    f"sum by (reason) ({rate('celery_exporter_events_malformed_total')})",
                    "malformed {{reason}}",
                ),
                Target(f"sum({rate('celery_exporter_events_duplicate_total')})", "duplicate"),
            ],
            "ops",
        ),
        timeseries(
            "Reconnects and stream gaps",
            "Broker reconnects and cut event subscriptions (events lost) in each rate window.",
            [
                Target(
                    per_instance(increase("celery_exporter_reconnects_total")),
                    "{{instance}} reconnects",
                ),
                Target(
                    per_instance(increase("celery_exporter_event_stream_gaps_total")),
                    "{{instance}} gaps",
                ),
            ],
            "none",
        ),
        timeseries(
            "Broker connection",
            "1 while the exporter is connected to the broker and consuming events.",
            [Target(per_instance(sel("celery_exporter_broker_up")), "{{instance}}")],
            "none",
            step=True,
        ),
        timeseries(
            "In-flight table",
            "Tasks in the in-flight table, between task-received (or task-sent) and their final "
            "event; capped by --max-tracked-tasks.",
            [
                Target(per_instance(sel("celery_exporter_tracked_tasks")), "{{instance}} tracked"),
            ],
            "none",
        ),
        timeseries(
            "Evictions and label overflow",
            "Tasks evicted from the full in-flight table and events whose label became other, "
            "per second; raise the --max-* caps when these are not 0.",
            [
                Target(f"sum({rate('celery_exporter_tracked_tasks_evicted_total')})", "evicted"),
                Target(
                    f"sum by (label) ({rate('celery_exporter_label_overflow_total')})",
                    "overflow {{label}}",
                ),
            ],
            "ops",
        ),
        timeseries(
            "Collector success",
            "1 when the background collector's last poll succeeded, else 0.",
            [
                Target(
                    f"min by (collector) ({sel('celery_exporter_collector_success')})",
                    "{{collector}}",
                )
            ],
            "none",
            step=True,
            width=8,
        ),
        timeseries(
            "Collector poll duration",
            "How long each collector's last poll took.",
            [
                Target(
                    f"max by (collector) ({sel('celery_exporter_collector_duration_seconds')})",
                    "{{collector}}",
                )
            ],
            "s",
            width=8,
        ),
        timeseries(
            "Since collector success",
            "Seconds since each collector's last successful poll.",
            [
                Target(
                    age("celery_exporter_collector_last_success_timestamp_seconds", "collector"),
                    "{{collector}}",
                )
            ],
            "s",
            width=8,
        ),
        timeseries(
            "Worker events dropped",
            "In-worker exporter: signals a pool process could not hand to the main process "
            "(not counted anywhere else), in each rate window.",
            [
                Target(
                    per_instance(increase("celery_exporter_worker_events_dropped_total")),
                    "{{job}} {{instance}}",
                )
            ],
            "none",
            width=8,
            no_value=NEEDS_WORKER_EXPORTER,
        ),
        timeseries(
            "Targets up",
            "1 while Prometheus scrapes the target.",
            [Target(sel("up"), "{{job}} {{instance}}")],
            "none",
            step=True,
            width=8,
        ),
        timeseries(
            "Process CPU",
            "CPU time per second of each exporter process (1 = one core).",
            [Target(rate("process_cpu_seconds_total"), "{{job}} {{instance}}")],
            "percentunit",
            width=8,
        ),
        timeseries(
            "Process memory",
            "Resident memory of each exporter process.",
            [Target(sel("process_resident_memory_bytes"), "{{job}} {{instance}}")],
            "bytes",
            width=8,
        ),
        info_table(
            "Build",
            "Versions of each exporter and of the libraries it runs.",
            "celery_exporter_build_info",
        ),
    ]
    return dashboard(
        "celery-exporter",
        "Celery / Exporter health",
        "The exporters themselves: broker connection, event stream, caps, collectors, process.",
        panels,
    )


BUILDERS: tuple[Callable[[], Json], ...] = (overview, tasks, workers, queues, exporter)


# --- Files --------------------------------------------------------------------------------


def build() -> dict[str, Json]:
    """Every dashboard by file name (`<uid>.json`)."""
    out: dict[str, Json] = {}
    for builder in BUILDERS:
        board = builder()
        out[f"{board['uid']}.json"] = board
    return out


def render(board: Json) -> str:
    """The dashboard as the committed text: sorted keys, two-space indent, final newline."""
    return json.dumps(board, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


class PanelQuery(NamedTuple):
    """One query of one panel."""

    dashboard_uid: str
    panel_title: str
    expr: str


def panels(board: Json) -> list[Json]:
    """Every panel of a dashboard, those inside collapsed rows included."""
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def panel_queries(boards: Iterable[Json] | None = None) -> list[PanelQuery]:
    """Every (dashboard uid, panel title, expr), in dashboard and panel order."""
    return [
        PanelQuery(board["uid"], panel["title"], target["expr"])
        for board in (build().values() if boards is None else boards)
        for panel in panels(board)
        for target in panel.get("targets", [])
    ]


def write(directory: Path) -> list[str]:
    """Write every dashboard into `directory`, remove stale `*.json`; return changed names."""
    directory.mkdir(parents=True, exist_ok=True)
    wanted = {name: render(board) for name, board in build().items()}
    changed = differences(directory)
    for name, text in wanted.items():
        (directory / name).write_text(text, encoding="utf-8")
    for stale in directory.glob("*.json"):
        if stale.name not in wanted:
            stale.unlink()
    return changed


def differences(directory: Path) -> list[str]:
    """Names of files in `directory` that differ from, lack or are not generated output."""
    wanted = {name: render(board) for name, board in build().items()}
    out = []
    for name, text in wanted.items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            out.append(name)
    out += [p.name for p in directory.glob("*.json") if p.name not in wanted]
    return sorted(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write the dashboards, or with --check exit 1 naming stale files."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only compare, exit 1 on drift")
    parser.add_argument("--output", type=Path, default=DASHBOARDS_DIR, help="dashboards folder")
    args = parser.parse_args(argv)
    if args.check:
        stale = differences(args.output) if args.output.is_dir() else sorted(build())
        for name in stale:
            print(f"{args.output / name} differs from generate.py's output", file=sys.stderr)
        if stale:
            print("run: python deploy/grafana/generate.py", file=sys.stderr)
        return 1 if stale else 0
    for name in write(args.output):
        print(f"wrote {args.output / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
