"""Values of flags and environment variables: each parser checks text into a value.

A parser raises ``ValueError`` whose message says what is allowed; :mod:`celery_exporter.config`
adds the flag or variable and the value, and the command line exits 2 with it.
"""

from __future__ import annotations

import itertools
import json
import re
import ssl
from collections.abc import Callable, Sequence
from typing import Any

from .broker.redis_url import CERT_REQS_KEYS, cert_reqs, check_hostname

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|m|h)?\s*$")
_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_port(text: str) -> int:
    """A TCP port from 1 to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise ValueError("expected a port number from 1 to 65535") from None
    if not 1 <= port <= 65535:
        raise ValueError("expected a port number from 1 to 65535")
    return port


def positive_int(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError("expected a whole number of at least 1") from None
    if value < 1:
        raise ValueError("expected a whole number of at least 1")
    return value


def parse_duration(text: str) -> float:
    """A duration above zero: seconds, or a number with ms, s, m or h."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError("expected a duration such as 30, 30s, 500ms, 5m or 1h")
    value = float(match.group(1)) * _SCALE[match.group(2)]
    if value <= 0:
        raise ValueError("expected a duration above zero")
    return value


def parse_buckets(text: str) -> tuple[float, ...]:
    """Comma-separated histogram bucket bounds, increasing and above zero."""
    try:
        bounds = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError("expected comma-separated numbers, e.g. 0.1,1,10") from None
    if not bounds or any(b <= 0 or b != b or b == float("inf") for b in bounds):
        raise ValueError("expected finite bucket bounds above zero, e.g. 0.1,1,10")
    if any(a >= b for a, b in itertools.pairwise(bounds)):
        raise ValueError("bucket bounds must increase")
    return bounds


def parse_choice(choices: Sequence[str]) -> Callable[[str], str]:
    """One of a fixed set of words."""

    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value

    parse.__doc__ = f"One of {', '.join(choices)}."
    return parse


def parse_bool(text: str) -> bool:
    """true/false, 1/0, yes/no or on/off."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("expected true or false")


def non_empty(text: str) -> str:
    """Any text that is not empty."""
    if not text.strip():
        raise ValueError("expected a value that is not empty")
    return text.strip()


def parse_broker_url(text: str) -> str:
    """A kombu broker URL (several separated by ';' for failover)."""
    from kombu.transport import TRANSPORT_ALIASES

    url = text.strip()
    if not url:
        raise ValueError("expected a broker URL such as redis://localhost:6379/0")
    for part in url.split(";"):
        scheme, sep, _ = part.strip().partition("://")
        if not sep:
            raise ValueError("expected a broker URL such as redis://localhost:6379/0")
        if scheme.split("+")[-1] not in TRANSPORT_ALIASES and scheme not in TRANSPORT_ALIASES:
            known = "redis, rediss, sentinel, amqp, amqps"
            raise ValueError(f"unknown transport {scheme!r}; supported include {known}")
    return url


def parse_result_backend(text: str) -> str:
    """A Celery result backend URL that stores results by task id (redis://, db+..., not rpc://)."""
    from celery.app.backends import BACKEND_ALIASES

    url = text.strip()
    scheme, sep, _ = url.partition("://")
    name = scheme.split("+", 1)[0].lower()
    if not sep or name not in BACKEND_ALIASES or name in ("rpc", "disabled"):
        raise ValueError(
            "expected a result backend URL that stores results by task id, such as "
            "redis://localhost:6379/1 (rpc:// keeps none)"
        )
    return url


def _option_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_pair(text: str) -> tuple[str, Any]:
    """key=value; the value is read as JSON when it is JSON (numbers, lists), else as text."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError("expected key=value")
    return key.strip(), _option_value(value.strip())


def parse_ssl_pair(text: str) -> tuple[str, Any]:
    """key=value, where CERT_NONE, CERT_OPTIONAL and CERT_REQUIRED name the ssl constants.

    ``ssl_cert_reqs`` (and AMQP's ``cert_reqs``) must name one of them (or be required,
    optional or none), and ``ssl_check_hostname`` must be true or false.
    """
    key, value = parse_pair(text)
    if key in CERT_REQS_KEYS:
        return key, cert_reqs(value, key)
    if key == "ssl_check_hostname":
        return key, check_hostname(value)
    if isinstance(value, str) and value.upper() in ("CERT_NONE", "CERT_OPTIONAL", "CERT_REQUIRED"):
        value = getattr(ssl, value.upper())
    return key, value


def parse_web_config_file(text: str) -> str:
    """A web configuration file in the exporter toolkit format (TLS and basic auth)."""
    from .web.webconfig import parse_file

    return parse_file(text)


def parse_queues(text: str) -> tuple[str, ...]:
    """Comma-separated queue names."""
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not names:
        raise ValueError("expected comma-separated queue names, e.g. celery,priority")
    return names


def parse_http_url(text: str) -> str:
    """An http:// or https:// URL, optionally with user:password@."""
    from urllib.parse import urlsplit

    url = text.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise ValueError("expected a URL such as http://user:password@localhost:15672") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected a URL such as http://user:password@localhost:15672")
    return url


def parse_regex(text: str) -> re.Pattern[str]:
    """A regular expression (Python syntax)."""
    try:
        return re.compile(text)
    except re.error as exc:
        raise ValueError(f"expected a regular expression: {exc}") from None
