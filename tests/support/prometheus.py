"""A private Prometheus and Alertmanager for end-to-end tests (their webhook: :mod:`.webhook`).

Both servers run from Debian's binaries on free loopback ports, each in a temporary directory
of its own that holds its configuration, its data and its log. Their configurations are made
from the shipped ``deploy/prometheus`` files by :func:`prometheus_config` and
:func:`alertmanager_config`: the same jobs, rules, routes and inhibitions, with loopback targets
and intervals short enough for a test.
"""

from __future__ import annotations

import copy
import glob
import json
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import yaml

from tests.support.launchers import free_port, terminate
from tests.support.logs import LOGS
from tests.support.scrape import fetch
from tests.support.waiting import wait_for

PROMETHEUS_MISSING = (
    "prometheus is not on PATH: `make system-deps` installs Debian's prometheus "
    "(apt-get install prometheus)"
)
ALERTMANAGER_MISSING = (
    "prometheus-alertmanager is not on PATH: `make system-deps` installs it "
    "(apt-get install prometheus-alertmanager)"
)
START_TIMEOUT = 60.0

Json = dict[str, Any]
S = TypeVar("S", bound="_Server")


def prometheus_binary() -> str | None:
    """The Prometheus server binary on PATH, if any."""
    return shutil.which("prometheus")


def alertmanager_binary() -> str | None:
    """The Alertmanager binary on PATH (Debian's name first), if any."""
    return shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


# -- configuration ------------------------------------------------------------------------------


def prometheus_config(
    shipped: Mapping[str, Any],
    targets: Mapping[str, Sequence[str]],
    alertmanager: str,
    interval: str = "1s",
) -> Json:
    """The shipped Prometheus configuration with loopback targets and short intervals.

    ``targets`` maps every job of the shipped file to its ``host:port`` targets; a job missing
    from either side is an error, so a job added to the shipped file is not silently left out.
    """
    config = copy.deepcopy(dict(shipped))
    config["global"] = {
        **config.get("global", {}),
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "evaluation_interval": interval,
    }
    jobs = [job["job_name"] for job in config.get("scrape_configs", [])]
    if sorted(jobs) != sorted(targets):
        raise ValueError(f"shipped jobs {sorted(jobs)} differ from the targets {sorted(targets)}")
    for job in config["scrape_configs"]:
        for key in ("scrape_interval", "scrape_timeout"):
            job.pop(key, None)
        job["static_configs"] = [{"targets": list(targets[job["job_name"]])}]
    config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    return config


def shorten_for(rules: Mapping[str, Any], durations: Mapping[str, str]) -> Json:
    """A copy of a rule file with the ``for:`` of the named alerts replaced; raises if one is absent."""
    out = copy.deepcopy(dict(rules))
    found = set()
    for group in out.get("groups", []):
        for rule in group.get("rules", []):
            if rule.get("alert") in durations:
                rule["for"] = durations[rule["alert"]]
                found.add(rule["alert"])
    missing = set(durations) - found
    if missing:
        raise ValueError(f"no alerting rule named {sorted(missing)}")
    return out


def copy_rule_files(
    config_path: Path, destination: Path, for_overrides: Mapping[str, str]
) -> list[Path]:
    """Copy the rule files the shipped configuration names into ``destination``, same layout.

    Alerts named in ``for_overrides`` get that ``for:``; every other line of every rule is kept.
    Returns the copies.
    """
    config = yaml.safe_load(config_path.read_text())
    base = config_path.parent
    copies = []
    left = dict(for_overrides)
    for pattern in config.get("rule_files", []):
        matches = sorted(glob.glob(str(base / pattern)))
        if not matches:
            raise ValueError(f"rule_files pattern {pattern!r} matches no file")
        for match in matches:
            source = Path(match)
            rules = yaml.safe_load(source.read_text())
            here = {
                rule["alert"]
                for group in rules.get("groups", [])
                for rule in group.get("rules", [])
                if rule.get("alert") in left
            }
            rules = shorten_for(rules, {name: left.pop(name) for name in here})
            target = destination / source.relative_to(base)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(yaml.safe_dump(rules, sort_keys=False))
            copies.append(target)
    if left:
        raise ValueError(f"no alerting rule named {sorted(left)} in the shipped rule files")
    return copies


def alertmanager_config(
    shipped: Mapping[str, Any],
    webhook: str,
    group_wait: str = "1s",
    group_interval: str = "1s",
    repeat_interval: str = "4h",
) -> Json:
    """The shipped Alertmanager configuration with every receiver replaced by ``webhook``.

    Each receiver posts to ``webhook`` + ``/`` + its own name, so a test can tell which route an
    alert took. Routes, matchers, grouping and inhibitions are kept; every route's timers are
    set to the short waits and the long repeat interval.
    """
    config = copy.deepcopy(dict(shipped))
    config["receivers"] = [
        {"name": r["name"], "webhook_configs": [{"url": f"{webhook}/{r['name']}"}]}
        for r in config.get("receivers", [])
    ]

    def retime(route: dict[str, Any], top: bool) -> None:
        for key, value in (
            ("group_wait", group_wait),
            ("group_interval", group_interval),
            ("repeat_interval", repeat_interval),
        ):
            if top or key in route:
                route[key] = value
        for child in route.get("routes", []):
            retime(child, False)

    retime(config["route"], True)
    return config


# -- HTTP ---------------------------------------------------------------------------------------


def get_json(url: str, timeout: float = 10.0) -> Any:
    """GET ``url`` and decode its JSON body; raise on a status other than 200."""
    status, body = fetch(url, timeout=timeout)
    if status != 200:
        raise RuntimeError(f"GET {url} answered {status}: {body[:500]!r}")
    return json.loads(body)


class _Server:
    """A server binary run in a temporary directory, with its output in ``<dir>/server.log``."""

    name = "server"

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.host = "127.0.0.1"
        self.port = free_port()
        self.address = f"{self.host}:{self.port}"
        self.base = f"http://{self.address}"
        self.dir = Path(tempfile.mkdtemp(prefix=f"celery-exporter-{self.name}-"))
        self.log_path = self.dir / "server.log"
        self.log = LOGS.register(self.log_path, f"{self.name} on port {self.port}")
        self.process: subprocess.Popen[bytes] | None = None

    def args(self) -> list[str]:
        """The command line."""
        raise NotImplementedError

    def start(self: S) -> S:
        """Start the server and wait until ``/-/ready`` answers 200."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.args(),
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self.ready, START_TIMEOUT, 0.1, f"{self.name} on {self.address} to be ready")
        return self

    def ready(self) -> bool:
        """Whether ``/-/ready`` answers 200 (raises if the process has exited)."""
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
            )
        try:
            return fetch(self.base + "/-/ready", timeout=2)[0] == 200
        except OSError:
            return False

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's output, for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the server (SIGKILL if it lingers) and wait for it."""
        if self.process is not None:
            terminate(self.process)

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self: S) -> S:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class PrometheusServer(_Server):
    """Prometheus with a configuration made from the shipped one, and its HTTP API."""

    name = "prometheus"

    def __init__(
        self,
        shipped_config: Path,
        targets: Mapping[str, Sequence[str]],
        alertmanager: str,
        for_overrides: Mapping[str, str] | None = None,
        binary: str | None = None,
    ) -> None:
        found = binary or prometheus_binary()
        if found is None:
            raise RuntimeError(PROMETHEUS_MISSING)
        super().__init__(found)
        self.config_path = self.dir / "prometheus.yml"
        try:
            shipped = yaml.safe_load(shipped_config.read_text())
            config = prometheus_config(shipped, targets, alertmanager)
            self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
            self.rule_files = copy_rule_files(shipped_config, self.dir, for_overrides or {})
        except BaseException:
            self.close()
            raise

    def args(self) -> list[str]:
        """The command line: loopback only, data in the temporary directory."""
        return [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address={self.address}",
            "--log.level=warn",
        ]

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of a successful ``/api/v1/<path>`` answer."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        answer = get_json(f"{self.base}/api/v1/{path}{query}")
        if answer.get("status") != "success":
            raise RuntimeError(f"/api/v1/{path} answered {answer}")
        return answer["data"]

    def query(self, expr: str) -> list[Json]:
        """The result of an instant query at the current time; a scalar becomes one sample."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[Json] = data["result"]
        return result

    def rule_groups(self) -> list[Json]:
        """Every loaded rule group with its rules' health and last errors."""
        groups: list[Json] = self.api("rules")["groups"]
        return groups

    def alerts(self) -> list[Json]:
        """The pending and firing alerts."""
        alerts: list[Json] = self.api("alerts")["alerts"]
        return alerts

    def targets(self) -> list[Json]:
        """The active scrape targets with their health."""
        active: list[Json] = self.api("targets")["activeTargets"]
        return active


class AlertmanagerServer(_Server):
    """Alertmanager without clustering, configured from the shipped file, and its HTTP API."""

    name = "alertmanager"

    def __init__(self, shipped_config: Path, webhook: str, binary: str | None = None) -> None:
        found = binary or alertmanager_binary()
        if found is None:
            raise RuntimeError(ALERTMANAGER_MISSING)
        super().__init__(found)
        self.config_path = self.dir / "alertmanager.yml"
        try:
            config = alertmanager_config(yaml.safe_load(shipped_config.read_text()), webhook)
            self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        except BaseException:
            self.close()
            raise

    def args(self) -> list[str]:
        """The command line: loopback only, no cluster listener, data in the temporary directory."""
        return [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.path={self.dir / 'data'}",
            f"--web.listen-address={self.address}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ]

    def alerts(self) -> list[Json]:
        """The alerts Alertmanager holds (API v2)."""
        alerts: list[Json] = get_json(f"{self.base}/api/v2/alerts")
        return alerts
