"""Every flag and its variable reject a bad value at start: exit 2 naming flag, value and rule."""

from __future__ import annotations

import pytest

from celery_exporter.config import OPTIONS, SIDECAR_OPTIONS, Option, load, load_sidecar

DURATION = "expected a duration such as 30, 30s, 500ms, 5m or 1h"
COUNT = "expected a whole number of at least 1"
BOOL = "expected true or false"
MISSING = "/nonexistent/web.yml"

#: flag -> (a bad value, the rule the message states). Bool flags are only wrong via their
#: variable, since on the command line they take no value.
BAD: dict[str, tuple[str, str]] = {
    "--broker-url": ("kafka9://k:9092", "unknown transport 'kafka9'; supported include redis, "
                     "rediss, sentinel, amqp, amqps"),
    "--broker-transport-option": ("oops", "expected key=value"),
    "--broker-ssl-option": ("=CERT_NONE", "expected key=value"),
    "--host": (" ", "expected a value that is not empty"),
    "--port": ("65536", "expected a port number from 1 to 65535"),
    "--log-level": ("loud", "expected one of debug, info, warning, error, critical"),
    "--log-format": ("xml", "expected one of auto, json, console"),
    "--enable-events": ("sometimes", BOOL),
    "--enable-events-interval": ("0", "expected a duration above zero"),
    "--worker-label": ("maybe", BOOL),
    "--worker-timeout": ("-1s", DURATION),
    "--worker-purge-after": ("soon", DURATION),
    "--default-queue": ("", "expected a value that is not empty"),
    "--runtime-buckets": ("a,b", "expected comma-separated numbers, e.g. 0.1,1,10"),
    "--wait-buckets": ("0,1", "expected finite bucket bounds above zero, e.g. 0.1,1,10"),
    "--max-tracked-tasks": ("0", COUNT),
    "--max-task-names": ("-5", COUNT),
    "--max-exceptions": ("1.5", COUNT),
    "--max-queues": ("many", COUNT),
    "--max-workers": ("0", COUNT),
    "--web.config.file": (MISSING, f"cannot read {MISSING}: [Errno 2] No such file or "
                          f"directory: '{MISSING}'"),
    "--web.healthz-unauthenticated": ("maybe", BOOL),
    "--queues": (" , ", "expected comma-separated queue names, e.g. celery,priority"),
    "--queue-collector": ("maybe", BOOL),
    "--queue-interval": ("0s", "expected a duration above zero"),
    "--queue-purge-after": ("1d", DURATION),
    "--rabbitmq-management-url": ("ftp://host", "expected a URL such as "
                                  "http://user:password@localhost:15672"),
    "--inspect-collector": ("maybe", BOOL),
    "--inspect-interval": ("never", DURATION),
    "--event-queue": (" ", "expected a value that is not empty"),
    "--event-queue-expires": ("0", "expected a duration above zero"),
    "--event-queue-max-length": ("0", COUNT),
    "--web.task-api": ("perhaps", BOOL),
    "--web.show-task-args": ("2", BOOL),
    "--max-finished-tasks": ("-5", COUNT),
    "--web.stuck-after": ("soon", DURATION),
    "--web.enable-control": ("sometimes", BOOL),
    "--result-backend": ("rpc://", "expected a result backend URL that stores results by task "
                         "id, such as redis://localhost:6379/1 (rpc:// keeps none)"),
}  # fmt: skip


def error_line(capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str]) -> str:
    """Run load() expecting exit status 2; return the last line of stderr."""
    with pytest.raises(SystemExit) as caught:
        load(argv, env)
    assert caught.value.code == 2
    return capsys.readouterr().err.rstrip("\n").splitlines()[-1]


def test_every_flag_has_a_bad_value() -> None:
    """The table below covers every flag the exporter has (add a row with each new flag)."""
    assert sorted(opt.flag for opt in OPTIONS if opt.flag in BAD) == sorted(
        opt.flag for opt in OPTIONS
    )


@pytest.mark.parametrize("opt", [o for o in OPTIONS if o.flag in BAD], ids=lambda o: o.flag)
def test_flag_rejects_bad_value(opt: Option, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad value on the command line (or, for on/off flags, in the variable) exits 2 with the rule."""
    bad, rule = BAD[opt.flag]
    if opt.kind == "bool":
        line = error_line(capsys, [], {opt.env: bad})
        assert line == f"celery-exporter: error: {opt.env}: invalid value {bad!r}: {rule}"
        return
    line = error_line(capsys, [f"{opt.flag}={bad}"], {})
    assert line == f"celery-exporter: error: {opt.flag}: invalid value {bad!r}: {rule}"


@pytest.mark.parametrize(
    "opt",
    # An empty variable means "unset", so blank bad values are only tested as flags.
    [o for o in OPTIONS if o.flag in BAD and o.kind != "bool" and BAD[o.flag][0].strip()],
    ids=lambda o: o.flag,
)
def test_variable_rejects_bad_value(opt: Option, capsys: pytest.CaptureFixture[str]) -> None:
    """The same bad value in the flag's environment variable exits 2 naming the variable."""
    bad, rule = BAD[opt.flag]
    line = error_line(capsys, [], {opt.env: bad})
    assert line == f"celery-exporter: error: {opt.env}: invalid value {bad!r}: {rule}"


SIDECAR_BAD: dict[str, tuple[str, str]] = {
    **{flag: BAD[flag] for flag in ("--host", "--port", "--log-level", "--log-format")},
    **{flag: BAD[flag] for flag in ("--web.config.file", "--web.healthz-unauthenticated")},
    "--match": ("(", "expected a regular expression: missing ), unterminated subpattern at "
               "position 0"),
    "--sample-interval": ("-1", DURATION),
}  # fmt: skip


def test_every_sidecar_flag_has_a_bad_value() -> None:
    """The sidecar table covers every flag the sidecar has."""
    assert sorted(SIDECAR_BAD) == sorted(opt.flag for opt in SIDECAR_OPTIONS)


@pytest.mark.parametrize("opt", SIDECAR_OPTIONS, ids=lambda o: o.flag)
def test_sidecar_rejects_bad_value(opt: Option, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad sidecar flag or CELERY_EXPORTER_SIDECAR_ variable exits 2 naming it and the rule."""
    bad, rule = SIDECAR_BAD[opt.flag]
    argv, env, source = ([], {opt.env: bad}, opt.env)
    if opt.kind != "bool":
        argv, env, source = [f"{opt.flag}={bad}"], {}, opt.flag
    with pytest.raises(SystemExit) as caught:
        load_sidecar(argv, env)
    assert caught.value.code == 2
    line = capsys.readouterr().err.rstrip("\n").splitlines()[-1]
    assert line == f"celery-exporter sidecar: error: {source}: invalid value {bad!r}: {rule}"


def test_sidecar_defaults_and_variables() -> None:
    """The sidecar listens on 9809 by default and reads its own CELERY_EXPORTER_SIDECAR_ names."""
    cfg = load_sidecar([], {"CELERY_EXPORTER_PORT": "1234"})
    assert (cfg.host, cfg.port, cfg.match, cfg.sample_interval) == ("0.0.0.0", 9809, None, 1.0)
    cfg = load_sidecar(["--match", "-A proj"], {"CELERY_EXPORTER_SIDECAR_PORT": "9999"})
    assert cfg.port == 9999
    assert cfg.match is not None and cfg.match.pattern == "-A proj"
