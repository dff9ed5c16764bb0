"""Flags and environment variables, validated into a Config."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import pytest

from celery_exporter import config, parsers
from celery_exporter.config import ConfigError, load
from celery_exporter.state import DEFAULT_RUNTIME_BUCKETS, Settings


def load_error(
    capsys: pytest.CaptureFixture[str], argv: list[str], environ: dict[str, str] | None = None
) -> str:
    """Run load() expecting exit status 2 and return the last line of stderr."""
    with pytest.raises(SystemExit) as caught:
        load(argv, environ or {})
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: celery-exporter")
    return err.rstrip("\n").splitlines()[-1]


def test_defaults() -> None:
    """With no flags and no environment every option takes its documented default."""
    cfg = load([], {})
    assert cfg.broker_url == "redis://localhost:6379/0"
    assert cfg.broker_transport_options == {}
    assert cfg.broker_ssl_options == {}
    assert cfg.host == "0.0.0.0"
    assert cfg.port == 9808
    assert cfg.log_level == "info"
    assert cfg.log_format == "auto"
    assert cfg.enable_events is True
    assert cfg.enable_events_interval == 30.0
    assert cfg.settings == Settings()
    assert cfg.settings.runtime_buckets == DEFAULT_RUNTIME_BUCKETS
    assert cfg.settings.worker_timeout is None


def test_every_flag_sets_its_field() -> None:
    """Each flag reaches the Config or Settings field it names."""
    cfg = load(
        [
            "--broker-url", "amqp://guest:guest@rabbit:5672//",
            "--broker-transport-option", "visibility_timeout=3600",
            "--broker-transport-option", "master_name=mymaster",
            "--broker-ssl-option", "ssl_cert_reqs=CERT_REQUIRED",
            "--host", "127.0.0.1", "--port", "9100", "--log-level", "DEBUG",
            "--log-format", "json", "--no-enable-events", "--enable-events-interval", "1m",
            "--worker-label", "--worker-timeout", "500ms", "--worker-purge-after", "1h",
            "--default-queue", "work", "--runtime-buckets", "0.5,1,2",
            "--wait-buckets", "1,10", "--max-tracked-tasks", "10", "--max-task-names", "11",
            "--max-exceptions", "12", "--max-queues", "13", "--max-workers", "14",
        ],
        {},
    )  # fmt: skip
    assert cfg.broker_url == "amqp://guest:guest@rabbit:5672//"
    assert cfg.broker_transport_options == {"visibility_timeout": 3600, "master_name": "mymaster"}
    assert cfg.broker_ssl_options == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert (cfg.host, cfg.port, cfg.log_level, cfg.log_format) == (
        "127.0.0.1",
        9100,
        "debug",
        "json",
    )
    assert cfg.enable_events is False
    assert cfg.enable_events_interval == 60.0
    assert cfg.settings == Settings(
        worker_label=True,
        default_queue="work",
        worker_timeout=0.5,
        worker_purge_after=3600.0,
        max_tracked_tasks=10,
        max_task_names=11,
        max_exceptions=12,
        max_queues=13,
        max_workers=14,
        runtime_buckets=(0.5, 1.0, 2.0),
        wait_buckets=(1.0, 10.0),
    )


def test_environment_sets_options() -> None:
    """CELERY_EXPORTER_<FLAG> variables set options; pair variables split on white space."""
    cfg = load(
        [],
        {
            "CELERY_EXPORTER_PORT": "9200",
            "CELERY_EXPORTER_WORKER_LABEL": "yes",
            "CELERY_EXPORTER_ENABLE_EVENTS": "off",
            "CELERY_EXPORTER_BROKER_TRANSPORT_OPTION": "a=1  b=[1,2]\tc=text",
            "CELERY_EXPORTER_WORKER_TIMEOUT": "5m",
        },
    )
    assert cfg.port == 9200
    assert cfg.settings.worker_label is True
    assert cfg.enable_events is False
    assert cfg.broker_transport_options == {"a": 1, "b": [1, 2], "c": "text"}
    assert cfg.settings.worker_timeout == 300.0


def test_flag_beats_env() -> None:
    """A flag wins over its environment variable."""
    environ = {
        "CELERY_EXPORTER_PORT": "9200",
        "CELERY_EXPORTER_WORKER_LABEL": "true",
        "CELERY_EXPORTER_BROKER_URL": "redis://env:6379/0",
        "CELERY_EXPORTER_BROKER_TRANSPORT_OPTION": "a=1",
    }
    cfg = load(
        [
            "--port", "9300", "--no-worker-label", "--broker-url", "redis://flag:6379/1",
            "--broker-transport-option", "b=2",
        ],
        environ,
    )  # fmt: skip
    assert cfg.port == 9300
    assert cfg.settings.worker_label is False
    assert cfg.broker_url == "redis://flag:6379/1"
    assert cfg.broker_transport_options == {"b": 2}


def test_celery_broker_url_fallback() -> None:
    """CELERY_BROKER_URL is used when CELERY_EXPORTER_BROKER_URL is unset or blank."""
    assert load([], {"CELERY_BROKER_URL": "redis://celery:6379/2"}).broker_url == (
        "redis://celery:6379/2"
    )
    blank = {"CELERY_EXPORTER_BROKER_URL": "  ", "CELERY_BROKER_URL": "redis://celery:6379/2"}
    assert load([], blank).broker_url == "redis://celery:6379/2"
    both = {
        "CELERY_EXPORTER_BROKER_URL": "redis://exporter:6379/0",
        "CELERY_BROKER_URL": "redis://celery:6379/2",
    }
    assert load([], both).broker_url == "redis://exporter:6379/0"


# -- parsers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [("1", 1), ("9808", 9808), ("65535", 65535)])
def test_parse_port_accepts(text: str, expected: int) -> None:
    """Ports 1 to 65535 are accepted."""
    assert parsers.parse_port(text) == expected


@pytest.mark.parametrize("text", ["0", "65536", "-1", "http", "80.5", ""])
def test_parse_port_rejects(text: str) -> None:
    """Anything but a whole number from 1 to 65535 is rejected."""
    with pytest.raises(ValueError, match=r"^expected a port number from 1 to 65535$"):
        parsers.parse_port(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30", 30.0),
        ("30s", 30.0),
        ("500ms", 0.5),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1.5h", 5400.0),
        (" 2 m ", 120.0),
        ("1e3", 1000.0),
    ],
)
def test_parse_duration_accepts(text: str, expected: float) -> None:
    """Durations are seconds or a number with ms, s, m or h."""
    assert parsers.parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("5d", "expected a duration such as 30, 30s, 500ms, 5m or 1h"),
        ("fast", "expected a duration such as 30, 30s, 500ms, 5m or 1h"),
        ("-5s", "expected a duration such as 30, 30s, 500ms, 5m or 1h"),
        ("", "expected a duration such as 30, 30s, 500ms, 5m or 1h"),
        ("0", "expected a duration above zero"),
        ("0ms", "expected a duration above zero"),
    ],
)
def test_parse_duration_rejects(text: str, message: str) -> None:
    """Unknown units, negative and zero durations are rejected."""
    with pytest.raises(ValueError) as caught:
        parsers.parse_duration(text)
    assert str(caught.value) == message


def test_parse_buckets_accepts() -> None:
    """Comma-separated increasing bounds become a tuple of floats."""
    assert parsers.parse_buckets("0.1, 1,10,") == (0.1, 1.0, 10.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,1", "bucket bounds must increase"),
        ("1,5,2", "bucket bounds must increase"),
        ("0,1", "expected finite bucket bounds above zero, e.g. 0.1,1,10"),
        ("-1,1", "expected finite bucket bounds above zero, e.g. 0.1,1,10"),
        ("1,inf", "expected finite bucket bounds above zero, e.g. 0.1,1,10"),
        ("nan", "expected finite bucket bounds above zero, e.g. 0.1,1,10"),
        (",", "expected finite bucket bounds above zero, e.g. 0.1,1,10"),
        ("1,two", "expected comma-separated numbers, e.g. 0.1,1,10"),
    ],
)
def test_parse_buckets_rejects(text: str, message: str) -> None:
    """Bounds that do not increase, are not above zero or finite, or not numbers are rejected."""
    with pytest.raises(ValueError) as caught:
        parsers.parse_buckets(text)
    assert str(caught.value) == message


def test_log_level_choice() -> None:
    """Log levels are case-insensitive; an unknown level is rejected with the choices."""
    parse = parsers.parse_choice(config.LOG_LEVELS)
    assert parse(" WARNING ") == "warning"
    with pytest.raises(ValueError) as caught:
        parse("verbose")
    assert str(caught.value) == "expected one of debug, info, warning, error, critical"


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "rediss://:pw@redis:6380/0",
        "sentinel://s1:26379;sentinel://s2:26379",
        "amqp://guest:guest@rabbit:5672//",
        "amqps://rabbit:5671//",
        "pyamqp://rabbit//",
    ],
)
def test_parse_broker_url_accepts(url: str) -> None:
    """Known kombu transports are accepted, including ';'-separated failover lists."""
    assert parsers.parse_broker_url(f" {url} ") == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("kafkaa://host:9092", "unknown transport 'kafkaa'; supported include redis, rediss, sentinel, amqp, amqps"),
        ("redis://a:6379;foo://b", "unknown transport 'foo'; supported include redis, rediss, sentinel, amqp, amqps"),
        ("localhost:6379", "expected a broker URL such as redis://localhost:6379/0"),
        ("   ", "expected a broker URL such as redis://localhost:6379/0"),
    ],
)  # fmt: skip
def test_parse_broker_url_rejects(url: str, message: str) -> None:
    """Unknown transports and text without scheme:// are rejected."""
    with pytest.raises(ValueError) as caught:
        parsers.parse_broker_url(url)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("visibility_timeout=3600", ("visibility_timeout", 3600)),
        ("master_name=mymaster", ("master_name", "mymaster")),
        ("global_keyprefix=prod:", ("global_keyprefix", "prod:")),
        ("x = 1.5", ("x", 1.5)),
        ("flag=true", ("flag", True)),
        ("none=null", ("none", None)),
        ("list=[1,2]", ("list", [1, 2])),
        ('sentinel_kwargs={"password":"pw"}', ("sentinel_kwargs", {"password": "pw"})),
        ("empty=", ("empty", "")),
        ("url=redis://h:1/0?a=b", ("url", "redis://h:1/0?a=b")),
    ],
)
def test_parse_pair(text: str, expected: tuple[str, Any]) -> None:
    """key=value pairs read the value as JSON when it is JSON, else as text."""
    assert parsers.parse_pair(text) == expected


@pytest.mark.parametrize("text", ["novalue", "=1", " =1", ""])
def test_parse_pair_rejects(text: str) -> None:
    """A pair without '=' or without a key is rejected."""
    with pytest.raises(ValueError, match=r"^expected key=value$"):
        parsers.parse_pair(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ssl_cert_reqs=CERT_REQUIRED", ssl.CERT_REQUIRED),
        ("ssl_cert_reqs=cert_optional", ssl.CERT_OPTIONAL),
        ("ssl_cert_reqs=CERT_NONE", ssl.CERT_NONE),
        ("ssl_cert_reqs=required", ssl.CERT_REQUIRED),
        ("ssl_cert_reqs= Optional", ssl.CERT_OPTIONAL),
        ("ssl_cert_reqs=none", ssl.CERT_NONE),
        ("ssl_cert_reqs=2", ssl.CERT_REQUIRED),
        ("cert_reqs=none", ssl.CERT_NONE),
        ("ssl_check_hostname=false", False),
        ("ssl_check_hostname=no", False),
        ("ssl_check_hostname=on", True),
        ("ssl_ca_certs=/etc/ca.pem", "/etc/ca.pem"),
    ],
)
def test_parse_ssl_pair(text: str, expected: Any) -> None:
    """Certificate requirements become ssl constants, ssl_check_hostname a bool, the rest stays."""
    key, value = parsers.parse_ssl_pair(text)
    assert (key, value) == (text.split("=")[0], expected)
    assert type(value) is type(expected)


CERT_REQS_RULE = "must be CERT_REQUIRED, CERT_OPTIONAL or CERT_NONE (or required, optional, none)"


@pytest.mark.parametrize(
    ("argv", "environ", "line"),
    [
        (["--broker-ssl-option", "ssl_cert_reqs=CERT_MAYBE"], {},
         f"--broker-ssl-option: invalid value 'ssl_cert_reqs=CERT_MAYBE': ssl_cert_reqs {CERT_REQS_RULE}"),
        (["--broker-ssl-option", "ssl_ca_certs=/ca.pem", "--broker-ssl-option", "ssl_cert_reqs=7"], {},
         f"--broker-ssl-option: invalid value 'ssl_cert_reqs=7': ssl_cert_reqs {CERT_REQS_RULE}"),
        ([], {"CELERY_EXPORTER_BROKER_SSL_OPTION": "ssl_ca_certs=/ca.pem ssl_cert_reqs=strict"},
         "CELERY_EXPORTER_BROKER_SSL_OPTION: invalid value 'ssl_cert_reqs=strict': "
         f"ssl_cert_reqs {CERT_REQS_RULE}"),
        (["--broker-ssl-option", "cert_reqs=yes"], {},
         f"--broker-ssl-option: invalid value 'cert_reqs=yes': cert_reqs {CERT_REQS_RULE}"),
        (["--broker-ssl-option", "ssl_check_hostname=maybe"], {},
         "--broker-ssl-option: invalid value 'ssl_check_hostname=maybe': "
         "ssl_check_hostname must be true or false"),
    ],
)  # fmt: skip
def test_load_rejects_bad_tls_option(
    capsys: pytest.CaptureFixture[str], argv: list[str], environ: dict[str, str], line: str
) -> None:
    """An unreadable certificate requirement or hostname check exits 2 naming source and choices."""
    assert load_error(capsys, argv, environ) == f"celery-exporter: error: {line}"


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (parsers.parse_bool, "maybe", "expected true or false"),
        (parsers.positive_int, "0", "expected a whole number of at least 1"),
        (parsers.positive_int, "many", "expected a whole number of at least 1"),
        (parsers.non_empty, "  ", "expected a value that is not empty"),
    ],
)
def test_other_parsers_reject(parse: Callable[[str], Any], text: str, message: str) -> None:
    """Booleans, counts and required text reject what does not fit."""
    with pytest.raises(ValueError) as caught:
        parse(text)
    assert str(caught.value) == message


# -- load() errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "environ", "line"),
    [
        (["--port", "0"], {}, "--port: invalid value '0': expected a port number from 1 to 65535"),
        ([], {"CELERY_EXPORTER_PORT": "http"},
         "CELERY_EXPORTER_PORT: invalid value 'http': expected a port number from 1 to 65535"),
        (["--worker-timeout", "5d"], {},
         "--worker-timeout: invalid value '5d': expected a duration such as 30, 30s, 500ms, 5m or 1h"),
        ([], {"CELERY_EXPORTER_RUNTIME_BUCKETS": "1,1"},
         "CELERY_EXPORTER_RUNTIME_BUCKETS: invalid value '1,1': bucket bounds must increase"),
        (["--log-level", "verbose"], {},
         "--log-level: invalid value 'verbose': expected one of debug, info, warning, error, critical"),
        (["--broker-transport-option", "a=1", "--broker-transport-option", "oops"], {},
         "--broker-transport-option: invalid value 'oops': expected key=value"),
        ([], {"CELERY_EXPORTER_ENABLE_EVENTS": "sometimes"},
         "CELERY_EXPORTER_ENABLE_EVENTS: invalid value 'sometimes': expected true or false"),
        ([], {"CELERY_BROKER_URL": "kafka9://k:9092"},
         "CELERY_BROKER_URL: invalid value 'kafka9://k:9092': unknown transport 'kafka9'; "
         "supported include redis, rediss, sentinel, amqp, amqps"),
    ],
)  # fmt: skip
def test_load_exits_2_naming_flag_or_variable(
    capsys: pytest.CaptureFixture[str], argv: list[str], environ: dict[str, str], line: str
) -> None:
    """A bad value exits with status 2 and a message naming the flag or variable and the value."""
    assert load_error(capsys, argv, environ) == f"celery-exporter: error: {line}"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("foo://user:s3cretpw@host:1/0", "foo://user:***@host:1/0"),
        ("redis://:p4ss@a:1;foo://:s3cretpw@b:2", "redis://:***@a:1;foo://:***@b:2"),
        ("redis:/:s3cretpw@host:6379/0", "redis:/:***@host:6379/0"),
        ("user:s3cretpw@host:6379", "user:***@host:6379"),
    ],
)
def test_load_masks_password_of_bad_broker_url(
    capsys: pytest.CaptureFixture[str], url: str, shown: str
) -> None:
    """The exit message for a bad broker URL shows it with its password masked."""
    line = load_error(capsys, ["--broker-url", url])
    assert f"--broker-url: invalid value '{shown}'" in line
    assert "s3cretpw" not in line
    assert "p4ss" not in line


def test_unknown_flag_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown flag is a usage error with exit status 2."""
    line = load_error(capsys, ["--prot", "9808"])
    assert line == "celery-exporter: error: unrecognized arguments: --prot 9808"


def test_config_error_is_value_error() -> None:
    """resolve() raises ConfigError, a ValueError, naming the source of a bad value."""
    namespace = config.build_parser().parse_args(["--max-workers", "0"])
    with pytest.raises(ConfigError) as caught:
        config.resolve(namespace, {})
    assert isinstance(caught.value, ValueError)
    assert str(caught.value) == (
        "--max-workers: invalid value '0': expected a whole number of at least 1"
    )
