"""Password masking in URLs, log values and exceptions."""

from __future__ import annotations

from typing import Any

import pytest

from celery_exporter.redact import Redactor, mask_url, url_secrets


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        ("rediss://default:s3cret@redis:6380/1", "rediss://default:***@redis:6380/1"),
        ("amqp://guest:guest@rabbit:5672//", "amqp://guest:***@rabbit:5672//"),
        ("amqps://user:p%40ss@rabbit:5671/vhost", "amqps://user:***@rabbit:5671/vhost"),
        (
            "sentinel://:pw1@s1:26379;sentinel://:pw2@s2:26379;sentinel://s3:26379",
            "sentinel://:***@s1:26379;sentinel://:***@s2:26379;sentinel://s3:26379",
        ),
        ("redis://redis:6379/0?password=s3cret&db=1", "redis://redis:6379/0?password=***&db=1"),
        ("sentinel://s1:26379?sentinel_kwargs=x&PASSWORD=abc", "sentinel://s1:26379?sentinel_kwargs=x&PASSWORD=***"),
        ("redis://user@redis:6379/0", "redis://user@redis:6379/0"),
        ("redis://user:@redis:6379/0", "redis://user:@redis:6379/0"),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
        (
            "cannot connect to redis://:s3cret@redis:6379/0: refused",
            "cannot connect to redis://:***@redis:6379/0: refused",
        ),
    ],
)  # fmt: skip
def test_mask_url(url: str, masked: str) -> None:
    """Every password in a URL, its user info or its password= query, becomes ***."""
    assert mask_url(url) == masked


def test_url_secrets() -> None:
    """url_secrets returns every password of a URL, raw and percent-decoded, of 3+ characters."""
    url = "sentinel://:p%40ss@s1:26379;sentinel://u:xy@s2:26379/0?password=qwerty"
    assert url_secrets(url) == {"p%40ss", "p@ss", "qwerty"}


def test_url_secrets_without_password() -> None:
    """A URL without a password has no secrets."""
    assert url_secrets("redis://redis:6379/0") == set()


def test_redactor_masks_strings() -> None:
    """The processor masks known secrets and URL passwords in string values only."""
    redactor = Redactor(["hunter22"])
    event: dict[str, Any] = {
        "event": "broker_unavailable",
        "broker": "redis://:hunter22@redis:6379/0",
        "error": "AUTH hunter22 failed",
        "other": "amqp://guest:guest@rabbit//",
        "count": 3,
    }
    out = redactor(None, "warning", event)
    assert out == {
        "event": "broker_unavailable",
        "broker": "redis://:***@redis:6379/0",
        "error": "AUTH *** failed",
        "other": "amqp://guest:***@rabbit//",
        "count": 3,
    }


def test_redactor_masks_exceptions() -> None:
    """An exception value is rendered as 'Class: message' with its secrets masked."""
    redactor = Redactor(["hunter22"])
    exc = ConnectionError("redis://:hunter22@redis:6379/0 refused (password hunter22)")
    out = redactor(None, "error", {"event": "x", "error": exc})
    assert out["error"] == "ConnectionError: redis://:***@redis:6379/0 refused (password ***)"


def test_redactor_masks_longest_secret_first() -> None:
    """A secret containing another secret is masked whole, not partly."""
    redactor = Redactor(["abc", "abcdef"])
    assert redactor.scrub("token abcdef and abc") == "token *** and ***"


def test_redactor_from_url_secrets_masks_decoded_password() -> None:
    """A percent-decoded password that appears in a message is masked."""
    redactor = Redactor(url_secrets("redis://:p%40ssw0rd@redis:6379/0"))
    assert redactor.scrub("auth failed for p@ssw0rd") == "auth failed for ***"


def test_mask_url_masks_a_mistyped_url() -> None:
    """A URL missing its '//' still has its user:password@ masked."""
    assert mask_url("redis:/:pw123@host:6379/0") == "redis:/:***@host:6379/0"
    assert mask_url("guest:s3cret@rabbit:5672") == "guest:***@rabbit:5672"
