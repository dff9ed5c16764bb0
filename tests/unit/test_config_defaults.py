"""Every default is written once, in the option table, and read from there by Settings, --help,
from_values and the README."""

from __future__ import annotations

import re
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import pytest

from celery_exporter import config
from celery_exporter.config import OPTIONS, SIDECAR_OPTIONS, Config, Option, SidecarConfig
from celery_exporter.state import DEFAULT_RUNTIME_BUCKETS, DEFAULT_WAIT_BUCKETS, Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
BUCKETS_TEXT = "0.005,0.01,0.025,0.05,0.1,0.25,0.5,1,2.5,5,10,30,60,120,300,600,1800,3600,7200"
#: Settings fields that no flag sets.
UNFLAGGED: set[str] = set()


def flagged() -> list[Any]:
    """The Settings fields a flag sets."""
    return [f for f in fields(Settings) if "flag" in f.metadata]


@pytest.fixture(autouse=True)
def wide_help(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wide terminal, so argparse does not break the bucket list inside a word."""
    monkeypatch.setenv("COLUMNS", "1000")


def help_text(options: tuple[Option, ...] = OPTIONS) -> str:
    """``--help`` with white space collapsed (argparse wraps lines)."""
    return " ".join(config.build_parser(options=options).format_help().split())


def test_settings_without_arguments_keeps_its_values() -> None:
    """Settings() holds the same values as before the defaults moved to the option table."""
    assert Settings() == Settings(
        worker_label=False,
        default_queue="celery",
        worker_timeout=None,
        worker_purge_after=3600.0,
        max_tracked_tasks=100_000,
        max_finished_tasks=10_000,
        max_task_names=1000,
        max_exceptions=200,
        max_queues=500,
        max_workers=1000,
        runtime_buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                         60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0),
        wait_buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                      60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0),
        web_task_api=True,
        web_show_task_args=False,
    )  # fmt: skip


@pytest.mark.parametrize("name", [f.name for f in flagged()])
def test_settings_default_is_the_options(name: str) -> None:
    """Each Settings field a flag sets has that flag's default from the table, under its name."""
    fld = next(f for f in fields(Settings) if f.name == name)
    opt = config.option(fld.metadata["flag"])
    assert opt.dest == name
    assert fld.default == opt.default
    assert getattr(Settings(), name) == opt.default


def test_every_settings_field_has_a_flag() -> None:
    """Every Settings field is set by a flag (a new field must choose deliberately)."""
    assert {f.name for f in fields(Settings)} - {f.name for f in flagged()} == UNFLAGGED


def test_bucket_constants_are_the_tables() -> None:
    """The exported bucket constants are the --runtime-buckets and --wait-buckets defaults."""
    assert config.default("--runtime-buckets") == DEFAULT_RUNTIME_BUCKETS
    assert config.default("--wait-buckets") == DEFAULT_WAIT_BUCKETS
    assert config.default("--runtime-buckets") is config.DEFAULT_RUNTIME_BUCKETS


def test_ports_stay_exported() -> None:
    """DEFAULT_PORT and SIDECAR_PORT are the daemon's and the sidecar's --port defaults."""
    assert (config.DEFAULT_PORT, config.SIDECAR_PORT) == (9808, 9809)
    assert config.default("--port") == 9808
    assert config.default("--port", SIDECAR_OPTIONS) == 9809


def test_unknown_flag_has_no_default() -> None:
    """Asking for the default of a flag the table lacks is a KeyError naming it."""
    with pytest.raises(KeyError) as caught:
        config.default("--no-such-flag")
    assert caught.value.args == ("--no-such-flag",)


@pytest.mark.parametrize("cls", [Config, SidecarConfig], ids=lambda c: c.__name__)
def test_config_classes_have_no_defaults(cls: type) -> None:
    """Config and SidecarConfig repeat no default: every field must be given."""
    assert [f.name for f in fields(cls) if f.default is not MISSING] == []
    assert [f.name for f in fields(cls) if f.default_factory is not MISSING] == []


@pytest.mark.parametrize(
    ("options", "flag", "shown"),
    [
        (OPTIONS, "--port", "(default: 9808) [env CELERY_EXPORTER_PORT]"),
        (OPTIONS, "--runtime-buckets",
         f"(default: {BUCKETS_TEXT}) [env CELERY_EXPORTER_RUNTIME_BUCKETS]"),
        (OPTIONS, "--max-tracked-tasks", "(default: 100000) [env CELERY_EXPORTER_MAX_TRACKED_TASKS]"),
        (OPTIONS, "--enable-events-interval",
         "(default: 30.0) [env CELERY_EXPORTER_ENABLE_EVENTS_INTERVAL]"),
        (OPTIONS, "--queue-collector", "(default: True) [env CELERY_EXPORTER_QUEUE_COLLECTOR]"),
        (SIDECAR_OPTIONS, "--port", "(default: 9809) [env CELERY_EXPORTER_SIDECAR_PORT]"),
        (SIDECAR_OPTIONS, "--sample-interval",
         "(default: 1.0) [env CELERY_EXPORTER_SIDECAR_SAMPLE_INTERVAL]"),
    ],
)  # fmt: skip
def test_help_shows_defaults(options: tuple[Option, ...], flag: str, shown: str) -> None:
    """--help shows these defaults, as the table has them, before each option's variable."""
    assert config.option(flag, options).help + " " + shown in help_text(options)


@pytest.mark.parametrize("options", [OPTIONS, SIDECAR_OPTIONS], ids=["daemon", "sidecar"])
def test_help_shows_every_default_of_the_table(options: tuple[Option, ...]) -> None:
    """Every option's help ends with its default from the table, or with none when unset."""
    text = help_text(options)
    for opt in options:
        shown = config.default_text(opt)
        tail = f" [env {opt.env}]" if shown is None else f" (default: {shown}) [env {opt.env}]"
        assert f"{opt.help}{tail}" in text, opt.flag
    assert config.default_text(config.option("--worker-timeout")) is None
    assert config.default_text(config.option("--queues")) is None
    assert config.default_text(config.option("--worker-label")) is None


def test_help_reads_the_table() -> None:
    """A default changed in the table is what --help shows: nothing else holds it."""
    options = (Option("--answer", "The answer.", 42, int, metavar="N"),)
    assert "--answer N The answer. (default: 42) [env CELERY_EXPORTER_ANSWER]" in (
        help_text(options)
    )


def resolved_defaults() -> dict[str, Any]:
    """The values resolve() gives with no flags and no environment."""
    return config.resolve(config.build_parser().parse_args([]), {})


@pytest.mark.parametrize("opt", OPTIONS, ids=lambda o: o.flag)
def test_from_values_does_not_invent_a_missing_value(opt: Option) -> None:
    """from_values raises KeyError naming any option value it is not given."""
    values = resolved_defaults()
    del values[opt.dest]
    with pytest.raises(KeyError) as caught:
        config.from_values(values)
    assert caught.value.args == (opt.dest,)


def test_from_values_builds_settings_from_the_values() -> None:
    """Settings come from the values given, field by field, not from defaults."""
    values = resolved_defaults()
    values.update(worker_label=True, max_queues=7, worker_timeout=2.5, wait_buckets=(1.0, 2.0))
    cfg = config.from_values(values)
    assert cfg.settings == Settings(
        worker_label=True, max_queues=7, worker_timeout=2.5, wait_buckets=(1.0, 2.0)
    )
    assert config.from_values(resolved_defaults()) == config.load([], {})


def readme_defaults(section: str) -> dict[str, str]:
    """flag -> the default cell of a README flag table (the text after ``section``)."""
    text = README.split(section, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    rows = re.findall(r"^\| `(--[\w.-]+)`[^|]*\|[^|]*\| ([^|]+) \|", text, re.M)
    return dict(rows)


#: README wording for defaults that are not a value the flag's parser reads.
WORDS: dict[str, Any] = {"on": True, "off": False, "none": None, "3 heartbeats": None}


@pytest.mark.parametrize(
    ("options", "section"),
    [(OPTIONS, "## Configuration"), (SIDECAR_OPTIONS, "### Resource sidecar")],
    ids=["daemon", "sidecar"],
)
def test_readme_defaults_match_the_table(options: tuple[Option, ...], section: str) -> None:
    """The README's default column says what the table's default is, for every flag."""
    cells = readme_defaults(section)
    assert sorted(cells) == sorted(opt.flag for opt in options)
    for opt in options:
        cell = cells[opt.flag]
        if cell.startswith("`"):
            documented = opt.parse(cell.strip("`"))
        elif cell == "same as runtime":
            documented = config.default("--runtime-buckets")
        else:
            documented = WORDS[cell]
        want = None if opt.default == () else opt.default
        assert documented == want, opt.flag
