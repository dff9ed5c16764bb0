"""The one reading of a Redis broker URL and its TLS options."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import redis.connection

from celery_exporter.broker import redis_url
from celery_exporter.broker.redis_url import RedisURL, TlsOptions
from tests.tls import make_pki

CERT_REQS_RULE = (
    "ssl_cert_reqs must be CERT_REQUIRED, CERT_OPTIONAL or CERT_NONE (or required, optional, none)"
)


# -- parse() ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://localhost:6379/0", RedisURL("redis", "localhost", 6379, 0, None, None)),
        ("redis://cache", RedisURL("redis", "cache", 6379, 0, None, None)),
        ("redis://cache:7000/", RedisURL("redis", "cache", 7000, 0, None, None)),
        ("rediss://:secret@cache:6380/15", RedisURL("rediss", "cache", 6380, 15, None, "secret")),
        ("redis://app:pw@[::1]:6379/2", RedisURL("redis", "::1", 6379, 2, "app", "pw")),
    ],
)
def test_parse_reads_address_db_and_credentials(url: str, expected: RedisURL) -> None:
    """Host, port (6379 unless given), database (0 unless given) and credentials are read."""
    assert redis_url.parse(url) == expected


def test_parse_percent_decodes_credentials() -> None:
    """A user name and password with percent-escapes are decoded."""
    where = redis_url.parse("rediss://us%3Aer:p%40ss%2Fw%25rd@cache:6380/3")
    assert (where.username, where.password, where.db) == ("us:er", "p@ss/w%rd", 3)


def test_parse_reads_every_sentinel() -> None:
    """sentinel:// gives each sentinel's address (port 26379 unless given), db and password."""
    where = redis_url.parse("sentinel://:pw@s1:26380/4; sentinel://s2 ;sentinel://[::1]:26381")
    assert where.sentinels == (("s1", 26380), ("s2", 26379), ("::1", 26381))
    assert (where.scheme, where.db, where.username, where.password) == ("sentinel", 4, None, "pw")


@pytest.mark.parametrize(
    ("url", "expected"),
    [("redis://h:6379/0", False), ("rediss://h:6379/0", True), ("sentinel://h", False)],
)
def test_tls_only_for_rediss(url: str, expected: bool) -> None:
    """Only rediss:// connections are wrapped in TLS."""
    assert redis_url.parse(url).tls is expected


@pytest.mark.parametrize(
    ("url", "path"), [("redis://h:6379/zero", "zero"), ("redis://h/1/2", "1/2")]
)
def test_parse_rejects_a_database_that_is_not_a_number(url: str, path: str) -> None:
    """A database path that is not a number is a ValueError quoting it."""
    with pytest.raises(ValueError) as caught:
        redis_url.parse(url)
    assert str(caught.value) == f"database number in the broker URL is not a number: {path!r}"


# -- TlsOptions ---------------------------------------------------------------------------------


def test_tls_defaults_verify_and_check_hostname() -> None:
    """With no options the server's certificate is required and must name the host."""
    assert TlsOptions.from_options({}) == TlsOptions(
        cert_reqs=ssl.CERT_REQUIRED, ca_certs=None, certfile=None, keyfile=None, check_hostname=True
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("required", ssl.CERT_REQUIRED),
        ("optional", ssl.CERT_OPTIONAL),
        ("none", ssl.CERT_NONE),
        ("CERT_REQUIRED", ssl.CERT_REQUIRED),
        ("CERT_OPTIONAL", ssl.CERT_OPTIONAL),
        ("CERT_NONE", ssl.CERT_NONE),
        (" Cert_Optional ", ssl.CERT_OPTIONAL),
        (ssl.CERT_OPTIONAL, ssl.CERT_OPTIONAL),
        (0, ssl.CERT_NONE),
    ],
)
def test_cert_reqs_words_and_constants(value: Any, expected: ssl.VerifyMode) -> None:
    """ssl_cert_reqs takes required/optional/none, the CERT_* names, or the constants."""
    assert TlsOptions.from_options({"ssl_cert_reqs": value}).cert_reqs is expected


@pytest.mark.parametrize("value", ["sometimes", "CERT_MAYBE", "", 7, True, None, [2]])
def test_cert_reqs_unknown_value_is_an_error(value: Any) -> None:
    """Anything else for ssl_cert_reqs is a ValueError listing the allowed values."""
    with pytest.raises(ValueError) as caught:
        TlsOptions.from_options({"ssl_cert_reqs": value})
    assert str(caught.value) == CERT_REQS_RULE


@pytest.mark.parametrize("check", [True, "true", "yes"])
def test_cert_none_turns_hostname_checking_off(check: Any) -> None:
    """CERT_NONE checks no host name, even when ssl_check_hostname asks for it."""
    options = TlsOptions.from_options({"ssl_cert_reqs": "none", "ssl_check_hostname": check})
    assert (options.cert_reqs, options.check_hostname) == (ssl.CERT_NONE, False)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(False, False), ("false", False), ("off", False), (0, False), ("1", True), (True, True)],
)
def test_check_hostname_setting(value: Any, expected: bool) -> None:
    """ssl_check_hostname=false keeps verifying the certificate but not the name in it."""
    options = TlsOptions.from_options({"ssl_check_hostname": value})
    assert (options.cert_reqs, options.check_hostname) == (ssl.CERT_REQUIRED, expected)


def test_check_hostname_unknown_value_is_an_error() -> None:
    """A word for ssl_check_hostname that is not true or false is a ValueError."""
    with pytest.raises(ValueError) as caught:
        TlsOptions.from_options({"ssl_check_hostname": "maybe"})
    assert str(caught.value) == "ssl_check_hostname must be true or false"


OPTION_SETS = [
    {},
    {"ssl_cert_reqs": "optional"},
    {"ssl_cert_reqs": ssl.CERT_NONE},
    {"ssl_cert_reqs": "none", "ssl_check_hostname": True},
    {"ssl_check_hostname": False},
    {"ssl_cert_reqs": "CERT_REQUIRED", "ssl_check_hostname": "no"},
]


@pytest.mark.parametrize("options", OPTION_SETS)
def test_redis_kwargs_and_context_agree(options: dict[str, Any], tmp_path: Path) -> None:
    """The pub/sub reader's SSL context and redis-py's arguments verify the same way."""
    pki = make_pki(tmp_path)
    tls = TlsOptions.from_options(
        {**options, "ssl_ca_certs": str(pki.ca), "ssl_certfile": str(pki.client_cert),
         "ssl_keyfile": str(pki.client_key)}
    )  # fmt: skip
    context = tls.context()
    kwargs = tls.redis_kwargs()
    assert kwargs == {
        "ssl": True,
        "ssl_cert_reqs": context.verify_mode,
        "ssl_ca_certs": str(pki.ca),
        "ssl_certfile": str(pki.client_cert),
        "ssl_keyfile": str(pki.client_key),
        "ssl_check_hostname": context.check_hostname,
    }
    assert [cert["subject"] for cert in context.get_ca_certs()] == [((("commonName", "test CA"),),)]
    # redis-py reads the arguments to the same requirement and hostname check.
    kwargs.pop("ssl")
    connection = redis.connection.SSLConnection(**kwargs)
    assert (connection.cert_reqs, connection.check_hostname) == (
        context.verify_mode,
        context.check_hostname,
    )
    assert (connection.ca_certs, connection.certfile, connection.keyfile) == (
        str(pki.ca),
        str(pki.client_cert),
        str(pki.client_key),
    )


def test_client_gets_tls_arguments_only_for_rediss() -> None:
    """client() hands redis-py the TLS arguments for rediss:// and none for redis://."""
    plain = redis_url.client("redis://:pw@127.0.0.1:1/3", {}, {"ssl_cert_reqs": "none"}, "t")
    secure = redis_url.client(
        "rediss://127.0.0.1:1/3", {"socket_timeout": 2}, {"ssl_check_hostname": False}, "t"
    )
    plain_kwargs = plain.connection_pool.connection_kwargs
    secure_kwargs = secure.connection_pool.connection_kwargs
    assert "ssl_cert_reqs" not in plain_kwargs
    assert (plain_kwargs["db"], plain_kwargs["password"], plain_kwargs["socket_timeout"]) == (
        3,
        "pw",
        5.0,
    )
    assert secure.connection_pool.connection_class is redis.connection.SSLConnection
    assert (secure_kwargs["ssl_cert_reqs"], secure_kwargs["ssl_check_hostname"]) == (
        ssl.CERT_REQUIRED,
        False,
    )
    assert secure_kwargs["socket_timeout"] == 2.0
