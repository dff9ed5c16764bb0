"""The README documents every flag and every metric family the exporter serves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from celery_exporter.config import OPTIONS, SIDECAR_OPTIONS

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
GOLDEN = (ROOT / "tests" / "golden" / "metrics.txt").read_text()
FAMILIES = sorted(set(re.findall(r"^# TYPE (celery_\w+) ", GOLDEN, re.M)))


@pytest.mark.parametrize("flag", [opt.flag for opt in OPTIONS])
def test_readme_documents_every_flag(flag: str) -> None:
    """Each flag and its environment variable appear in the README's configuration table."""
    opt = next(o for o in OPTIONS if o.flag == flag)
    assert f"`{opt.flag}`" in README
    assert f"`{opt.env}`" in README


@pytest.mark.parametrize("family", FAMILIES)
def test_readme_documents_every_metric(family: str) -> None:
    """Each metric family of the golden /metrics output is named in the README."""
    assert f"`{family}`" in README


def test_golden_file_covers_the_families() -> None:
    """The golden output holds the task, worker and exporter families (guards the test above)."""
    assert len(FAMILIES) >= 35


@pytest.mark.parametrize("flag", [opt.flag for opt in SIDECAR_OPTIONS])
def test_readme_documents_every_sidecar_flag(flag: str) -> None:
    """Each sidecar flag and its own environment variable appear in the sidecar's table."""
    opt = next(o for o in SIDECAR_OPTIONS if o.flag == flag)
    section = README.split("### Resource sidecar", 1)[1].split("\n### ", 1)[0]
    assert f"| `{opt.flag}` | `{opt.env}` |" in section


def worker_side_families() -> list[str]:
    """Families the in-worker exporter and the resource collector serve for a live process tree."""
    from celery import signals

    from celery_exporter.worker import install
    from tests.support import SignalWorker, free_port

    app = object()
    exporter = install(app, port=free_port(), host="127.0.0.1", sample_interval=60)
    signals.worker_init.send(sender=SignalWorker(app, "w@h"))
    try:
        text = generate_latest(exporter.registry).decode()
    finally:
        exporter.stop()
        exporter.disconnect()
    return sorted(set(re.findall(r"^# TYPE (celery_\w+) ", text, re.M)))


WORKER_FAMILIES = worker_side_families()


@pytest.mark.parametrize("family", WORKER_FAMILIES)
def test_readme_documents_worker_side_families(family: str) -> None:
    """Each family the in-worker exporter and resource collector serve is named in the README."""
    assert f"`{family}`" in README


def test_worker_side_families_include_the_contract() -> None:
    """The worker side serves the families the issue names (guards the test above)."""
    contract = {
        "celery_worker_process_cpu_seconds_total", "celery_worker_process_resident_memory_bytes",
        "celery_worker_process_io_read_bytes_total", "celery_worker_process_io_write_bytes_total",
        "celery_worker_process_open_fds", "celery_worker_process_threads",
        "celery_worker_pool_processes", "celery_worker_pool_process_max_resident_memory_bytes",
        "celery_worker_pool_process_restarts_total", "celery_worker_pool_busy",
        "celery_worker_pool_size", "celery_task_runtime_seconds", "celery_task_timeouts_total",
        "celery_task_failed_total",
    }  # fmt: skip
    assert contract <= set(WORKER_FAMILIES)


def package_map() -> dict[str, str]:
    """The README's package map: module path to its one-line description."""
    section = README.split("### Package map", 1)[1].split("```", 2)[1]
    rows = [line.split(None, 1) for line in section.strip().splitlines()]
    return {path: about for path, about in rows}


def test_package_map_matches_the_tree() -> None:
    """The README's package map names every module of the package, and only modules that exist."""
    listed = package_map()
    modules = {
        str(path.relative_to(ROOT))
        for path in (ROOT / "celery_exporter").rglob("*.py")
        if path.name != "__init__.py"
    }
    assert modules - set(listed) == set()
    assert {path for path in listed if not (ROOT / path).is_file()} == set()
    assert all(about.strip() for about in listed.values())
