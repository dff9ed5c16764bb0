"""The shipped Grafana dashboards' queries, for end-to-end tests against a real Prometheus.

:func:`panel_keys` names each query of ``deploy/grafana/generate.py`` by its dashboard, panel and
metric, with the variables set to All; :func:`empty_queries` asks Prometheus which have no result.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any, NamedTuple

from tests.support.processes import ROOT
from tests.support.prometheus import PrometheusServer


class PanelKey(NamedTuple):
    """A dashboard query named by its dashboard, its panel and the metric it reads."""

    dashboard_uid: str
    panel_title: str
    metric: str


def load_generator() -> ModuleType:
    """Import deploy/grafana/generate.py, which is a script and not in a package."""
    path = ROOT / "deploy" / "grafana" / "generate.py"
    spec = importlib.util.spec_from_file_location("grafana_generate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def panel_keys(generator: ModuleType) -> dict[PanelKey, str]:
    """Every dashboard query, with the variables filled in, by the metrics it reads."""
    out: dict[PanelKey, str] = {}
    for query in generator.panel_queries():
        expr = generator.substitute(query.expr)
        for metric in sorted(generator.metric_names(query.expr)):
            out[PanelKey(query.dashboard_uid, query.panel_title, metric)] = expr
    return out


def empty_queries(prometheus: PrometheusServer, exprs: dict[Any, str]) -> set[Any]:
    """The keys whose expression has no result in Prometheus now."""
    results: dict[str, bool] = {}
    for expr in set(exprs.values()):
        results[expr] = bool(prometheus.query(expr))
    return {key for key, expr in exprs.items() if not results[expr]}
