"""--web.enable-control's start-up check: basic auth and the task view, or exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from celery_exporter.config import load
from tests.tls import bcrypt_hash

NEEDS_AUTH = (
    "celery-exporter: error: --web.enable-control: task control needs basic auth: add "
    "basic_auth_users (user name: bcrypt hash) to the file given with --web.config.file "
    "(see README, Task control)"
)


def error_line(capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str]) -> str:
    """Run load() expecting exit status 2; return the last line of stderr."""
    with pytest.raises(SystemExit) as caught:
        load(argv, env)
    assert caught.value.code == 2
    return capsys.readouterr().err.rstrip("\n").splitlines()[-1]


def test_control_is_off_by_default() -> None:
    """Without the flag control is off and no result backend is given."""
    cfg = load([], {})
    assert (cfg.web_enable_control, cfg.result_backend) == (False, None)


def test_control_without_web_config_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """The flag without --web.config.file exits 2 saying how to add basic auth."""
    assert error_line(capsys, ["--web.enable-control"], {}) == NEEDS_AUTH


def test_control_with_a_web_config_without_users_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A web config without basic_auth_users is not enough, also with the flag's variable."""
    config = tmp_path / "web.yml"
    config.write_text("http_server_config:\n  headers: {X-Frame-Options: deny}\n")
    env = {"CELERY_EXPORTER_WEB_ENABLE_CONTROL": "yes"}
    assert error_line(capsys, ["--web.config.file", str(config)], env) == NEEDS_AUTH


def test_control_with_basic_auth_loads(tmp_path: Path) -> None:
    """With a user in the web config the flags load, the result backend as given."""
    config = tmp_path / "web.yml"
    config.write_text(f"basic_auth_users:\n  ops: {bcrypt_hash('pw')}\n")
    argv = ["--web.enable-control", "--web.config.file", str(config)]
    cfg = load([*argv, "--result-backend", "redis://127.0.0.1:6390/1"], {})
    assert (cfg.web_enable_control, cfg.result_backend) == (True, "redis://127.0.0.1:6390/1")


def test_control_needs_the_task_view(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Control with --no-web.task-api exits 2: it acts on the tasks the view knows."""
    config = tmp_path / "web.yml"
    config.write_text(f"basic_auth_users:\n  ops: {bcrypt_hash('pw')}\n")
    argv = ["--web.enable-control", "--web.config.file", str(config), "--no-web.task-api"]
    assert error_line(capsys, argv, {}) == (
        "celery-exporter: error: --web.enable-control: task control needs the task view: drop "
        "--no-web.task-api"
    )
