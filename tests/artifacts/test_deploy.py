"""The container image, the compose stack and the Kubernetes manifests, checked without Docker.

Images cannot be built or pulled here, so these tests read the Dockerfile, ``.dockerignore``,
``deploy/compose.yaml`` and ``deploy/kubernetes/`` as data, run the parts that can run outside a
container (the image's health check, the sample app's worker, producer and exporter commands),
and hand the files to ``docker compose config``, ``kubectl kustomize`` and
``kubernetes-validate`` when those are installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import pytest
import tomllib
import yaml

from tests.support import RedisServer, fetch, free_port, scrape, total, value, wait_for

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
KUBERNETES = DEPLOY / "kubernetes"
SAMPLE_APP = DEPLOY / "compose"
#: The image's user; the Kubernetes manifests run the exporter and the sidecar as this UID.
IMAGE_UID = 10001
#: An image tag naming an exact release, e.g. redis:7.4.1 or prom/prometheus:v2.55.1.
EXACT_TAG = re.compile(r"^[\w./-]+:v?\d+\.\d+\.\d+(-[\w.-]+)?$")
#: Resources whose schema is a CRD that kubernetes-validate does not ship.
CRD_KINDS = {"ServiceMonitor", "PodMonitor"}


# --- Dockerfile --------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments), continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def instruction_args(keyword: str) -> list[str]:
    """The arguments of every instruction ``keyword``, in order."""
    return [arguments for kw, arguments in dockerfile() if kw == keyword]


def build_args() -> dict[str, str]:
    """Default values of the ARGs declared before the first FROM."""
    defaults: dict[str, str] = {}
    for keyword, arguments in dockerfile():
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in arguments:
            name, _, default = arguments.partition("=")
            defaults[name] = default
    return defaults


def stages() -> list[tuple[str, str]]:
    """Each stage as (base image with ARGs resolved, stage name)."""
    args = build_args()
    found = []
    for arguments in instruction_args("FROM"):
        parts = arguments.split()
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
        found.append((image, parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else ""))
    return found


def exec_form(arguments: str) -> list[str]:
    """Parse an exec-form (JSON array) argument list; fail on the shell form."""
    parsed = json.loads(arguments)
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed), arguments
    return parsed


def healthcheck_command() -> list[str]:
    """The HEALTHCHECK's command, with ``python`` replaced by this interpreter."""
    (arguments,) = instruction_args("HEALTHCHECK")
    _, _, command = arguments.partition(" CMD ")
    argv = exec_form(command)
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


def test_dockerfile_is_multi_stage_on_a_pinned_slim_python() -> None:
    """The image is built in a build stage and a runtime stage on one pinned slim Python."""
    found = stages()
    assert [name for _, name in found] == ["build", "runtime"]
    images = {image for image, _ in found}
    assert len(images) == 1
    (image,) = images
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", image), image
    assert instruction_args("COPY").count("--from=build /opt/venv /opt/venv") == 1


def test_dockerfile_installs_dependencies_before_the_code() -> None:
    """pyproject.toml is copied and the dependencies installed before the package's code is."""
    steps = [(kw, a) for kw, a in dockerfile() if kw in ("COPY", "RUN")]
    copy_pyproject = steps.index(("COPY", "pyproject.toml ./"))
    install_deps = next(i for i, (kw, a) in enumerate(steps) if kw == "RUN" and "-r " in a)
    copy_code = steps.index(("COPY", "celery_exporter ./celery_exporter"))
    install_code = next(i for i, (kw, a) in enumerate(steps) if "--no-deps ." in a)
    assert copy_pyproject < install_deps < copy_code < install_code


def test_dockerfile_requirements_step_lists_the_package_dependencies(tmp_path: Path) -> None:
    """The shell step that writes requirements.txt writes pyproject's dependencies and the sqs extra."""
    (step,) = [a for kw, a in dockerfile() if kw == "RUN" and "requirements.txt" in a and "-r" in a]
    write_requirements = step.split(" && ")[0]
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["sh", "-c", write_requirements], cwd=tmp_path, env=env, check=True)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["sqs"]
    assert (tmp_path / "requirements.txt").read_text().splitlines() == wanted


def test_dockerfile_runs_as_a_numeric_non_root_user() -> None:
    """The last USER is the numeric, non-zero UID and GID that the image creates."""
    user = instruction_args("USER")[-1]
    assert user == f"{IMAGE_UID}:{IMAGE_UID}"
    (create_user,) = [a for a in instruction_args("RUN") if "useradd" in a]
    assert f"--uid {IMAGE_UID}" in create_user and f"--gid {IMAGE_UID}" in create_user


def test_dockerfile_entrypoint_exposes_and_healthcheck() -> None:
    """Exec-form ENTRYPOINT of the exporter, port 9808 exposed, and a health check on /healthz."""
    assert [exec_form(a) for a in instruction_args("ENTRYPOINT")] == [["celery-exporter"]]
    assert instruction_args("EXPOSE") == ["9808"]
    (arguments,) = instruction_args("HEALTHCHECK")
    assert "--interval=30s" in arguments and "--timeout=5s" in arguments
    assert "/healthz" in healthcheck_command()[-1]


@contextlib.contextmanager
def running(argv: Sequence[str], env: Mapping[str, str], cwd: Path = ROOT) -> Iterator[Any]:
    """Run a child in its own process group; kill the whole group on the way out."""
    proc = subprocess.Popen(
        list(argv), env=dict(env), cwd=cwd, start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.stderr is not None:
            proc.stderr.close()


def status(url: str) -> int:
    """The HTTP status of a GET, or 0 when nothing answers."""
    try:
        return fetch(url)[0]
    except OSError:
        return 0


def test_image_healthcheck_passes_on_a_live_exporter_and_fails_without_one() -> None:
    """The HEALTHCHECK command exits 0 against a running exporter and non-zero once it is gone."""
    port, dead_broker = free_port(), free_port()
    env = {**os.environ, "CELERY_EXPORTER_PORT": str(port)}
    exporter = [
        sys.executable, "-m", "celery_exporter", "--host=127.0.0.1",
        f"--broker-url=redis://127.0.0.1:{dead_broker}/0", "--no-enable-events",
        "--no-queue-collector", "--no-inspect-collector",
    ]  # fmt: skip
    check = healthcheck_command()
    with running(exporter, env):
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: status(f"{base}/healthz") == 200, timeout=30, what="/healthz")
        assert subprocess.run(check, env=env, timeout=30).returncode == 0
        # What the Kubernetes readiness probe sees with the broker unreachable.
        assert status(f"{base}/readyz") == 503
    failed = subprocess.run(check, env=env, timeout=30, capture_output=True)
    assert failed.returncode == 1
    assert b"Connection refused" in failed.stderr


# --- .dockerignore -----------------------------------------------------------------------------


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (excludes, pattern) pairs; the last pattern that matches a path wins."""
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        for part in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
            regex += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                part, re.escape(part)
            )
        rules.append((not negated, re.compile(regex)))
    return rules


def in_build_context(path: str) -> bool:
    """Whether Docker sends ``path`` (relative to the repository) to the build."""
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for excludes, regex in dockerignore_rules():
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = excludes
    return not excluded


def test_dockerignore_sends_what_the_build_copies_and_nothing_else() -> None:
    """Every file the Dockerfile copies and pyproject.toml names is sent; .venv, .git, tests are not."""
    copies = [a.split() for a in instruction_args("COPY") if not a.startswith("--from")]
    copied = [source for words in copies for source in words[:-1]]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = ["pyproject.toml", project["readme"], *project["license-files"]]
    needed += [p.relative_to(ROOT).as_posix() for p in (ROOT / "celery_exporter").glob("*.py")]
    for path in {*copied, *needed}:
        assert (ROOT / path).exists(), path
        assert in_build_context(path), path
    for path in [".venv/bin/python", ".git/HEAD", "tests/artifacts/test_deploy.py", "Makefile",
                 "celery_exporter/__pycache__/cli.cpython-311.pyc", "deploy/compose.yaml"]:  # fmt: skip
        assert not in_build_context(path), path


# --- compose -----------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    """deploy/compose.yaml, parsed."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    """The compose services by name."""
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def published(service: Mapping[str, Any]) -> set[str]:
    """The service's published ports as HOST_IP:HOST_PORT:CONTAINER_PORT strings."""
    return {str(port) for port in service.get("ports", [])}


def bind_mounts(service: Mapping[str, Any]) -> list[tuple[Path, str]]:
    """The service's host-path volumes as (path on the host, path in the container)."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append(((COMPOSE_FILE.parent / source).resolve(), target))
    return mounts


def test_compose_has_the_whole_stack_with_pinned_images() -> None:
    """Redis, worker, sidecar, producer, beat, exporter, Prometheus, Alertmanager, Grafana."""
    found = services()
    assert set(found) == {
        "redis", "worker", "sidecar", "producer", "beat", "exporter", "prometheus",
        "alertmanager", "grafana",
    }  # fmt: skip
    for name, service in found.items():
        if "build" in service:
            assert service["build"] == {"context": "..", "dockerfile": "Dockerfile"}, name
            assert (COMPOSE_FILE.parent / service["build"]["context"] / "Dockerfile").is_file()
        else:
            assert EXACT_TAG.match(service["image"]), (name, service["image"])
    assert found["redis"]["image"].startswith("redis:7.")


def test_compose_bind_mounts_exist_in_the_repository() -> None:
    """Every host path a service mounts exists in the repository, read-only."""
    mounted = 0
    for name, service in services().items():
        for volume in service.get("volumes", []):
            if volume.startswith((".", "/")):
                assert volume.endswith(":ro"), (name, volume)
        for source, _ in bind_mounts(service):
            assert source.exists(), (name, source)
            assert ROOT in source.parents, (name, source)
            mounted += 1
    assert mounted == 8  # worker, producer, beat: the app; Prometheus 2, Alertmanager 1, Grafana 2


def test_compose_monitoring_mounts_where_the_images_read() -> None:
    """Prometheus, Alertmanager and Grafana get the shipped config, rules and dashboards."""
    found = services()

    def targets(name: str) -> dict[str, Path]:
        return {target: source for source, target in bind_mounts(found[name])}

    assert targets("prometheus") == {
        "/etc/prometheus/prometheus.yml": DEPLOY / "compose" / "prometheus.yml",
        "/etc/prometheus/rules": DEPLOY / "prometheus" / "rules",
    }
    assert targets("alertmanager") == {
        "/etc/alertmanager/alertmanager.yml": DEPLOY / "prometheus" / "alertmanager.yml"
    }
    assert targets("grafana") == {
        "/etc/grafana/provisioning": DEPLOY / "grafana" / "provisioning",
        "/var/lib/grafana/dashboards/celery": DEPLOY / "grafana" / "dashboards",
    }
    assert "--config.file=/etc/prometheus/prometheus.yml" in found["prometheus"]["command"]
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in found["alertmanager"]["command"]


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from a file."""
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


def container_tree(service: str, root: Path) -> Path:
    """Copy a service's bind mounts under ``root`` at their container paths; return ``root``."""
    for source, target in bind_mounts(services()[service]):
        destination = root / target.lstrip("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, destination)
        else:
            shutil.copy(source, destination)
    return root


def listening(service: Mapping[str, Any]) -> set[int]:
    """Ports a compose service's process listens on inside its container."""
    ports = {int(str(p).rsplit(":", 1)[-1]) for p in service.get("ports", [])}
    for arg in service.get("command", []):
        if str(arg).startswith("--port="):
            ports.add(int(str(arg).split("=", 1)[1]))
    return ports


def test_compose_prometheus_scrapes_the_services_that_exist() -> None:
    """The scrape jobs celery-exporter, celery-worker, celery-beat name services on their ports."""
    found = services()
    config = read_yaml(SAMPLE_APP / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    expected = {
        "celery-exporter": ("exporter", 9808),
        "celery-worker": ("sidecar", 9809),
        "celery-beat": ("beat", 9810),
    }
    assert set(jobs) == set(expected)
    for job_name, (service, port) in expected.items():
        targets = [t for sc in jobs[job_name]["static_configs"] for t in sc["targets"]]
        assert targets == [f"{service}:{port}"], (job_name, targets)
        assert port in listening(found[service])
    managers = [
        t
        for alerting in config["alerting"]["alertmanagers"]
        for sc in alerting["static_configs"]
        for t in sc["targets"]
    ]
    assert managers == ["alertmanager:9093"]
    assert 9093 in listening(found["alertmanager"])


def test_compose_prometheus_config_matches_the_shipped_one() -> None:
    """The compose config has the shipped config's jobs, intervals and rule files, not others."""
    compose_config = read_yaml(SAMPLE_APP / "prometheus.yml")
    shipped = read_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    assert compose_config["global"] == shipped["global"]
    jobs = [job["job_name"] for job in compose_config["scrape_configs"]]
    assert jobs == [job["job_name"] for job in shipped["scrape_configs"]]
    rule_files = {
        path.relative_to(DEPLOY / "prometheus").as_posix()
        for pattern in compose_config["rule_files"]
        for path in (DEPLOY / "prometheus").glob(pattern)
    }
    assert rule_files == set(shipped["rule_files"])


def test_compose_prometheus_config_loads_with_its_rules_as_mounted(tmp_path: Path) -> None:
    """promtool accepts the config as the container sees it, with every shipped rule file."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (make test installs Debian's prometheus)")
    root = container_tree("prometheus", tmp_path)
    result = subprocess.run(
        [promtool, "check", "config", str(root / "etc/prometheus/prometheus.yml")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    rule_files = len(list((DEPLOY / "prometheus" / "rules").glob("*.yml")))
    assert rule_files > 0
    assert f"SUCCESS: {rule_files} rule files found" in result.stdout


def test_compose_grafana_datasource_points_at_the_prometheus_service() -> None:
    """Grafana's provisioned data source, with compose's environment, is prometheus:9090."""
    grafana = services()["grafana"]
    environment = {k: str(v) for k, v in grafana["environment"].items()}
    urls = []
    for path in (DEPLOY / "grafana" / "provisioning" / "datasources").glob("*.y*ml"):
        for source in read_yaml(path).get("datasources", []):
            urls.append(re.sub(r"\$\{(\w+)\}", lambda m: environment[m.group(1)], source["url"]))
    assert urls == ["http://prometheus:9090"]
    assert 9090 in listening(services()["prometheus"])


def test_compose_grafana_finds_the_dashboards_where_they_are_mounted(tmp_path: Path) -> None:
    """The provisioned dashboard provider's path holds every shipped dashboard in the container."""
    root = container_tree("grafana", tmp_path)
    providers = [
        provider
        for path in (root / "etc/grafana/provisioning/dashboards").glob("*.y*ml")
        for provider in read_yaml(path)["providers"]
    ]
    (provider,) = providers
    in_container = {p.name for p in (root / provider["options"]["path"].lstrip("/")).glob("*.json")}
    shipped = {p.name for p in (DEPLOY / "grafana" / "dashboards").glob("*.json")}
    assert shipped and in_container == shipped


def test_compose_ports_are_published_on_loopback_only() -> None:
    """Each web UI and metrics port is published on 127.0.0.1 with the same port inside."""
    expected = {
        "exporter": {"127.0.0.1:9808:9808"},
        "sidecar": {"127.0.0.1:9809:9809"},
        "beat": {"127.0.0.1:9810:9810"},
        "prometheus": {"127.0.0.1:9090:9090"},
        "alertmanager": {"127.0.0.1:9093:9093"},
        "grafana": {"127.0.0.1:3000:3000"},
    }
    assert {name: published(s) for name, s in services().items() if "ports" in s} == expected


def test_compose_healthchecks() -> None:
    """Every long-running service has an exec-form health check; the exporter uses the image's."""
    found = services()
    for name, service in found.items():
        check = service.get("healthcheck")
        if name == "exporter":
            assert check is None  # the Dockerfile's HEALTHCHECK on /healthz
        elif name == "producer":
            assert check == {"disable": True}  # it serves nothing to ask
        else:
            assert check is not None, name
            assert check["test"][0] == "CMD", name
            assert {"interval", "timeout", "retries"} <= set(check), name
    sidecar_check = found["sidecar"]["healthcheck"]["test"]
    assert sidecar_check[:2] == ["CMD", "python"] and "127.0.0.1:9809/healthz" in sidecar_check[-1]
    assert found["worker"]["healthcheck"]["test"][1:5] == [
        "celery", "--app=sampleapp", "inspect", "ping"
    ]  # fmt: skip
    for name in ("exporter", "producer", "worker"):
        assert found[name]["depends_on"]["redis"] == {"condition": "service_healthy"}, name
    assert found["grafana"]["depends_on"]["prometheus"] == {"condition": "service_healthy"}


def test_compose_sidecar_shares_the_worker_pid_namespace() -> None:
    """The sidecar sees the worker's processes, runs as the image's UID and names no %h host."""
    found = services()
    sidecar, worker = found["sidecar"], found["worker"]
    assert sidecar["pid"] == "service:worker"
    assert sidecar["command"][0] == "sidecar"
    assert "user" not in sidecar and "user" not in worker  # both the image's 10001
    assert worker["entrypoint"] == ["celery"]
    assert "--events" in worker["command"]
    # A literal node name: the sidecar's own hostname is not the worker container's.
    assert "--hostname=celery@worker" in worker["command"]


def compose_command() -> list[str] | None:
    """The argv prefix of an installed compose (v2 plugin first, then docker-compose)."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone is not None else None


def test_compose_config_validates() -> None:
    """``docker compose config`` accepts the file and resolves it to the same services."""
    command = compose_command()
    if command is None:
        pytest.skip("neither 'docker compose' nor docker-compose is installed")
    result = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "config"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == set(services())
    assert resolved["services"]["sidecar"]["pid"] == "service:worker"
    # docker compose resolves the build context to the repository itself.
    assert Path(resolved["services"]["exporter"]["build"]["context"]) == ROOT


def test_compose_config_rejects_a_broken_file() -> None:
    """The same validator refuses the file once a service refers to one that does not exist."""
    command = compose_command()
    if command is None:
        pytest.skip("neither 'docker compose' nor docker-compose is installed")
    broken = DEPLOY / f".compose-broken-{os.getpid()}.yaml"  # beside it: same relative paths
    broken.write_text(COMPOSE_FILE.read_text().replace('"service:worker"', '"service:nosuch"'))
    try:
        result = subprocess.run(
            [*command, "-f", str(broken), "config"], capture_output=True, text=True, timeout=120
        )
    finally:
        broken.unlink()
    assert result.returncode != 0
    assert "nosuch" in result.stdout + result.stderr


# --- the sample app ----------------------------------------------------------------------------


def sample_app() -> ModuleType:
    """Import deploy/compose/sampleapp, the app the compose worker runs."""
    if "sampleapp" in sys.modules:
        return sys.modules["sampleapp"]
    spec = importlib.util.spec_from_file_location(
        "sampleapp", SAMPLE_APP / "sampleapp" / "__init__.py",
        submodule_search_locations=[str(SAMPLE_APP / "sampleapp")],
    )  # fmt: skip
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sampleapp"] = module
    spec.loader.exec_module(module)
    return module


def flag(argv: Sequence[str], name: str) -> str:
    """The value of ``--name=value`` in ``argv``."""
    (found,) = [a.split("=", 1)[1] for a in argv if a.startswith(f"{name}=")]
    return found


def test_sample_app_sends_events_and_routes_into_the_queues_the_worker_consumes() -> None:
    """The app sends task-sent events, and every routed queue is one the worker and exporter use."""
    app = sample_app().app
    assert app.conf.task_send_sent_event is True
    names = {name for name in app.tasks if name.startswith("sample.")}
    assert names == {
        "sample.resize_image", "sample.charge_card", "sample.sync_inventory", "sample.build_report"
    }  # fmt: skip
    found = services()
    consumed = flag(found["worker"]["command"], "--queues").split(",")
    routed = {route["queue"] for route in app.conf.task_routes.values()}
    assert routed | {"celery"} == set(consumed)
    assert found["exporter"]["environment"]["CELERY_EXPORTER_QUEUES"].split(",") == consumed


def compose_env(service: Mapping[str, Any], broker_url: str) -> dict[str, str]:
    """This machine's environment plus the service's, with the broker and app paths local."""
    env = {**os.environ, **{k: str(v) for k, v in service.get("environment", {}).items()}}
    env["CELERY_BROKER_URL"] = broker_url
    env["PYTHONPATH"] = str(SAMPLE_APP)
    return env


def local(argv: Sequence[str]) -> list[str]:
    """``argv`` with the image's commands replaced by this virtualenv's."""
    programs = {"python": sys.executable, "celery": str(Path(sys.executable).parent / "celery")}
    programs["celery-exporter"] = str(Path(sys.executable).parent / "celery-exporter")
    return [programs.get(argv[0], argv[0]), *argv[1:]]


def queue_names(samples: Mapping[Any, float]) -> set[str]:
    """The queues ``celery_queue_length`` reports."""
    return {dict(labels)["queue_name"] for n, labels in samples if n == "celery_queue_length"}


@pytest.mark.integration
def test_compose_commands_run_the_sample_cluster(tmp_path: Path) -> None:
    """The worker, sidecar, producer and exporter commands of compose.yaml, run here, all work."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make test installs it)")
    found = services()
    worker, sidecar, exporter, producer = (
        found[n] for n in ("worker", "sidecar", "exporter", "producer")
    )
    sent = 12
    port, sidecar_port = free_port(), free_port()
    # Two pool processes instead of four, and a pid file that tells this worker from any other
    # on the machine (in compose the sidecar sees only the worker's PID namespace).
    pidfile = tmp_path / "worker.pid"
    worker_argv = local([*worker["entrypoint"], *worker["command"], f"--pidfile={pidfile}"])
    worker_argv[worker_argv.index("--concurrency=4")] = "--concurrency=2"
    sidecar_argv = local(["celery-exporter", *sidecar["command"]])
    sidecar_argv[sidecar_argv.index("--port=9809")] = f"--port={sidecar_port}"
    sidecar_argv += ["--host=127.0.0.1", f"--match={re.escape(str(pidfile))}"]
    sidecar_check = local(sidecar["healthcheck"]["test"][1:])
    sidecar_check[-1] = sidecar_check[-1].replace(":9809/", f":{sidecar_port}/")
    exporter_argv = local(["celery-exporter", "--host=127.0.0.1", f"--port={port}"])
    producer_argv = local([*producer["entrypoint"], *producer["command"]])
    producer_argv += [f"--count={sent}", "--rate=50"]
    redis = RedisServer()
    with (
        redis,
        running(worker_argv, compose_env(worker, redis.url()), cwd=SAMPLE_APP),
        running(exporter_argv, compose_env(exporter, redis.url())),
        running(sidecar_argv, dict(os.environ)),
    ):
        url = f"http://127.0.0.1:{port}/metrics"

        def worker_seen() -> bool:
            with contextlib.suppress(OSError, RuntimeError):
                return value(scrape(url), "celery_worker_up", hostname="celery@worker") == 1
            return False

        wait_for(worker_seen, timeout=60, interval=0.5, what="celery@worker in /metrics")
        ping = local(worker["healthcheck"]["test"][1:])
        pings: list[subprocess.CompletedProcess[bytes]] = []

        def ping_answered() -> bool:
            # Compose retries a health check: the first broadcast can come before the
            # worker's control consumer is up.
            pings.append(
                subprocess.run(
                    ping, env=compose_env(worker, redis.url()), capture_output=True, timeout=60
                )
            )
            return pings[-1].returncode == 0

        wait_for(ping_answered, timeout=60, interval=1, what="the worker's health check")
        assert subprocess.run(sidecar_check, timeout=30).returncode == 0
        sidecar_url = f"http://127.0.0.1:{sidecar_port}/metrics"

        def pool_processes() -> float:
            return value(
                scrape(sidecar_url), "celery_worker_pool_processes", hostname="celery@worker"
            )

        wait_for(lambda: pool_processes() == 2, timeout=30, what="the sidecar to find the pool")

        done = subprocess.run(
            producer_argv, env=compose_env(producer, redis.url()), cwd=SAMPLE_APP,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"producer: sent {sent} tasks"

        def finished() -> dict[Any, float] | None:
            samples = scrape(url)
            ended = total(samples, "celery_task_succeeded_total") + total(
                samples, "celery_task_failed_total"
            )
            polled = {"celery", "reports"} <= queue_names(samples)
            return samples if ended >= sent and polled else None

        samples = wait_for(finished, timeout=120, interval=0.5, what=f"{sent} tasks ended")
        assert samples is not None
    ended = total(samples, "celery_task_succeeded_total") + total(
        samples, "celery_task_failed_total"
    )
    assert ended == sent
    # Every retry is published again, with its own task-sent event.
    retried = total(samples, "celery_task_retried_total")
    assert total(samples, "celery_task_sent_total") == sent + retried
    reports = total(samples, "celery_task_sent_total", name="sample.build_report")
    assert total(samples, "celery_task_sent_total", queue_name="reports") == reports
    assert queue_names(samples) == {"celery", "reports"}


# --- Kubernetes --------------------------------------------------------------------------------


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object in deploy/kubernetes/*.yaml (but the kustomization), by (kind, name)."""
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, key
            objects[key] = doc
    return objects


def pod_spec(kind_name: tuple[str, str]) -> dict[str, Any]:
    """The pod template spec of a Deployment."""
    spec: dict[str, Any] = manifests()[kind_name]["spec"]["template"]["spec"]
    return spec


def container(spec: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A container or init container of a pod spec, by name."""
    everything: list[dict[str, Any]] = [*spec.get("initContainers", []), *spec["containers"]]
    (found,) = [c for c in everything if c["name"] == name]
    return found


def port_number(c: Mapping[str, Any], name: str) -> int:
    """The containerPort of the container's port called ``name``."""
    (number,) = [p["containerPort"] for p in c["ports"] if p["name"] == name]
    return int(number)


EXPORTER = ("Deployment", "celery-exporter")
WORKER = ("Deployment", "celery-worker")
BEAT = ("Deployment", "celery-beat")


def test_kubernetes_files_hold_the_expected_objects() -> None:
    """The exporter Deployment and Service, worker and beat examples, a ServiceMonitor, PodMonitors."""
    assert set(manifests()) == {
        EXPORTER, ("Service", "celery-exporter"), WORKER, BEAT,
        ("ServiceMonitor", "celery-exporter"), ("PodMonitor", "celery-worker"),
        ("PodMonitor", "celery-beat"),
    }  # fmt: skip
    for (kind, _), doc in manifests().items():
        if kind in CRD_KINDS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"


def test_kubernetes_exporter_is_one_replica_recreated() -> None:
    """One exporter replica, replaced with Recreate, and the comment saying why."""
    spec = manifests()[EXPORTER]["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    text = (KUBERNETES / "exporter.yaml").read_text()
    assert "doubles every rate" in text
    assert "double" in (KUBERNETES / "README.md").read_text()


def test_kubernetes_exporter_probes_and_service_ports() -> None:
    """Liveness on /healthz, readiness on /readyz, and the Service reaches the container's 9808."""
    spec = pod_spec(EXPORTER)
    exporter = container(spec, "exporter")
    assert exporter["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert exporter["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    assert port_number(exporter, "http-metrics") == 9808
    service = manifests()[("Service", "celery-exporter")]["spec"]
    assert service["ports"] == [
        {"name": "http-metrics", "port": 9808, "targetPort": "http-metrics", "protocol": "TCP"}
    ]
    labels = manifests()[EXPORTER]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    assert manifests()[EXPORTER]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["publishNotReadyAddresses"] is True


def test_kubernetes_servicemonitor_scrapes_the_exporter_as_job_celery_exporter() -> None:
    """The ServiceMonitor selects the Service, scrapes its port and takes job=celery-exporter."""
    monitor = manifests()[("ServiceMonitor", "celery-exporter")]["spec"]
    service = manifests()[("Service", "celery-exporter")]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["endpoints"]] == ["http-metrics"]
    assert {p["name"] for p in service["spec"]["ports"]} == {"http-metrics"}
    assert service["metadata"]["labels"][monitor["jobLabel"]] == "celery-exporter"


def test_kubernetes_podmonitor_scrapes_the_sidecars_as_job_celery_worker() -> None:
    """The PodMonitor selects the worker pods, scrapes the sidecar's 9809 and sets job=celery-worker."""
    monitor = manifests()[("PodMonitor", "celery-worker")]["spec"]
    labels = manifests()[WORKER]["spec"]["template"]["metadata"]["labels"]
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert port_number(container(pod_spec(WORKER), "resource-sidecar"), endpoint["port"]) == 9809
    assert endpoint["relabelings"] == [
        {"action": "replace", "targetLabel": "job", "replacement": "celery-worker"}
    ]


def test_kubernetes_beat_podmonitor_scrapes_beat_as_job_celery_beat() -> None:
    """The beat PodMonitor selects the one beat pod, scrapes its 9809 and sets job=celery-beat."""
    monitor = manifests()[("PodMonitor", "celery-beat")]["spec"]
    deployment = manifests()[BEAT]["spec"]
    assert (deployment["replicas"], deployment["strategy"]) == (1, {"type": "Recreate"})
    labels = deployment["template"]["metadata"]["labels"]
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    assert not monitor["selector"]["matchLabels"].items() <= pod_labels(WORKER).items()
    (endpoint,) = monitor["podMetricsEndpoints"]
    beat = container(pod_spec(BEAT), "beat")
    assert port_number(beat, endpoint["port"]) == 9809
    assert "beat" in beat["command"]
    assert beat["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "beat-metrics"}
    assert endpoint["relabelings"] == [
        {"action": "replace", "targetLabel": "job", "replacement": "celery-beat"}
    ]


def pod_labels(kind_name: tuple[str, str]) -> dict[str, str]:
    """The pod template labels of a Deployment."""
    labels: dict[str, str] = manifests()[kind_name]["spec"]["template"]["metadata"]["labels"]
    return labels


def test_kubernetes_sidecar_is_native_and_shares_the_process_namespace() -> None:
    """The sidecar is an init container with restartPolicy Always in a shared process namespace."""
    spec = pod_spec(WORKER)
    assert spec["shareProcessNamespace"] is True
    (sidecar,) = spec["initContainers"]
    assert sidecar["name"] == "resource-sidecar"
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["args"] == ["sidecar", "--port=9809"]
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "worker-metrics"}
    worker = container(spec, "worker")
    assert "--events" in worker["command"]


def effective(spec: Mapping[str, Any], c: Mapping[str, Any], key: str) -> Any:
    """A security setting of a container: its own, else the pod's."""
    return c.get("securityContext", {}).get(key, spec.get("securityContext", {}).get(key))


def test_kubernetes_containers_run_unprivileged() -> None:
    """Every container runs as the image's non-root UID with no privilege escalation or capabilities."""
    for name in (EXPORTER, WORKER, BEAT):
        spec = pod_spec(name)
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            assert effective(spec, c, "runAsNonRoot") is True, c["name"]
            assert effective(spec, c, "runAsUser") == IMAGE_UID, c["name"]
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]
            assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}, c["name"]
            if c["image"].startswith("celery-exporter:"):
                assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]


def test_kubernetes_sidecar_and_worker_share_one_uid() -> None:
    """The sidecar runs as the worker's UID, so it can read the worker's /proc/<pid>/io and fds."""
    spec = pod_spec(WORKER)
    sidecar, worker = container(spec, "resource-sidecar"), container(spec, "worker")
    assert effective(spec, sidecar, "runAsUser") == effective(spec, worker, "runAsUser")


def test_kubernetes_kustomize_builds_with_the_image_set() -> None:
    """``kubectl kustomize`` builds the exporter, Service and monitors with the configured image."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    result = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(result.stdout))
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == [
        ("Deployment", "celery-exporter"), ("PodMonitor", "celery-beat"),
        ("PodMonitor", "celery-worker"), ("Service", "celery-exporter"),
        ("ServiceMonitor", "celery-exporter"),
    ]  # fmt: skip
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    images = [c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]]
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    (image,) = kustomization["images"]
    assert images == [f"{image['newName']}:{image['newTag']}"]


def test_kubernetes_manifests_match_the_api_schema() -> None:
    """Every built-in object validates strictly against the Kubernetes 1.29 API schema."""
    validator = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate missing")
    checked = 0
    for (kind, _), doc in manifests().items():
        if kind in CRD_KINDS:
            continue
        validator.validate(doc, "1.29.0", strict=True)
        checked += 1
    assert checked == 4


def test_kubernetes_readme_explains_the_deployment() -> None:
    """The README names every file and the sidecar's requirements."""
    text = (KUBERNETES / "README.md").read_text()
    for path in KUBERNETES.glob("*.yaml"):
        assert path.name in text, path.name
    for needed in ("shareProcessNamespace", "restartPolicy: Always", "1.29", "celery-worker"):
        assert needed in text, needed
    assert "kubectl apply -k deploy/kubernetes" in text


# --- Kubernetes: the high-availability component -----------------------------------------------

HIGH_AVAILABILITY = "high-availability"
PDB = ("PodDisruptionBudget", "celery-exporter")


def kustomize_high_availability(tmp_path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """What ``kubectl kustomize`` builds from deploy/kubernetes with the HA component enabled."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    tree = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, tree)
    kustomization = yaml.safe_load((tree / "kustomization.yaml").read_text())
    kustomization["components"] = [HIGH_AVAILABILITY]
    (tree / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    result = subprocess.run(
        [kubectl, "kustomize", str(tree)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(result.stdout)}


def test_kubernetes_high_availability_runs_two_replicas_one_rolled_at_a_time(
    tmp_path: Path,
) -> None:
    """The HA component: 2 replicas, maxSurge 0, spread over nodes, a PDB; else the base Deployment."""
    built = kustomize_high_availability(tmp_path)
    assert sorted(built) == sorted([*[k for k in manifests() if k not in (WORKER, BEAT)], PDB])
    deployment = built[EXPORTER]
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }
    pods = spec["selector"]["matchLabels"]
    (spread,) = spec["template"]["spec"].pop("topologySpreadConstraints")
    assert spread == {
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": pods},
    }
    assert built[PDB]["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": pods}}
    base = manifests()[EXPORTER]
    for c, original in zip(
        spec["template"]["spec"]["containers"],
        base["spec"]["template"]["spec"]["containers"],
        strict=True,
    ):
        c["image"] = original["image"]
    for key in ("replicas", "strategy"):
        del spec[key], base["spec"][key]
    assert deployment == base


def test_kubernetes_high_availability_matches_the_api_schema(tmp_path: Path) -> None:
    """Every built-in object the HA component builds validates against the Kubernetes 1.29 API."""
    validator = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate missing")
    built = kustomize_high_availability(tmp_path)
    checked = []
    for (kind, name), doc in built.items():
        if kind not in CRD_KINDS:
            validator.validate(doc, "1.29.0", strict=True)
            checked.append((kind, name))
    assert sorted(checked) == [EXPORTER, PDB, ("Service", "celery-exporter")]


def test_kubernetes_readme_explains_high_availability() -> None:
    """The README names the HA component, how to enable it and the rules that de-duplicate."""
    text = (KUBERNETES / "README.md").read_text()
    for needed in (f"`{HIGH_AVAILABILITY}/`", "- high-availability", "max without (instance, pod)"):
        assert needed in text, needed
