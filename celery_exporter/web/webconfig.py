"""``--web.config.file``: TLS and basic auth for the HTTP server, in the exporter toolkit's YAML.

The file has the format the Prometheus exporter toolkit reads for Go exporters::

    tls_server_config:
      cert_file: server.crt          # relative paths are relative to this file
      key_file: server.key
      client_ca_file: ca.crt         # optional: verify client certificates against it
      client_auth_type: RequireAndVerifyClientCert
      min_version: TLS12             # TLS12 (default) or TLS13
      max_version: TLS13
    http_server_config:
      headers: {X-Frame-Options: deny}
    basic_auth_users:
      prometheus: $2b$12$...          # bcrypt hash (htpasswd -nBC 12 "" | tr -d ':\\n')

A bad file at start is a :class:`WebConfigError` (exit status 2). :class:`WebConfigWatcher`
checks the file and the files it names at most once a second and reloads them when their
contents change; a reload that fails keeps the last good configuration and is logged.

Python's :mod:`ssl` always verifies a client certificate it receives, so ``RequestClientCert``
and ``RequireAnyClientCert`` behave like ``VerifyClientCertIfGiven`` and
``RequireAndVerifyClientCert``, and every type but ``NoClientCert`` needs ``client_ca_file``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from ..log import get_logger

log = get_logger(__name__)

#: How often, at most, the watcher looks at the files again.
RELOAD_INTERVAL = 1.0

CLIENT_AUTH_TYPES: Mapping[str, ssl.VerifyMode] = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS: Mapping[str, ssl.TLSVersion] = {
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users")
_TLS_KEYS = ("cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version",
             "max_version")  # fmt: skip
_HTTP_KEYS = ("http2", "headers")
_BCRYPT = re.compile(r"^\$2[abxy]?\$(\d\d)\$[./A-Za-z0-9]{53}$")


class WebConfigError(ValueError):
    """A web configuration file that cannot be used."""


@dataclass(frozen=True)
class WebConfig:
    """What one reading of the file gives: TLS context, users and extra response headers."""

    ssl_context: ssl.SSLContext | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    #: A hash of a random password with the users' cost, checked for unknown users.
    dummy_hash: bytes = b""

    @property
    def auth_required(self) -> bool:
        """Whether requests need basic auth credentials."""
        return bool(self.users)

    def check(self, user: str, password: str) -> bool:
        """Whether ``user`` and ``password`` match; unknown users take as long as known ones."""
        known = self.users.get(user)
        hashed = known if known is not None else self.dummy_hash
        try:
            ok = bcrypt.checkpw(password.encode("utf-8", "surrogateescape"), hashed)
        except ValueError:
            ok = False
        return ok and known is not None

    def check_header(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries valid basic auth credentials."""
        return not self.users or self.user_of(header) is not None

    def user_of(self, header: str | None) -> str | None:
        """The user an ``Authorization`` header authenticates; None unless its password matches."""
        scheme, _, token = (header or "").strip().partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            text = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return None
        user, sep, password = text.partition(":")
        return user if sep and self.check(user, password) else None


def load(path: str | Path) -> WebConfig:
    """Read, check and build the configuration in ``path``; raise WebConfigError if unusable."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WebConfigError(f"cannot read {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WebConfigError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise WebConfigError(f"{path}: expected a mapping with keys {', '.join(_TOP_KEYS)}")
    _only_keys(data, _TOP_KEYS, "")
    base = path.parent
    context = _tls(data.get("tls_server_config"), base)
    users = _users(data.get("basic_auth_users"))
    headers = _headers(data.get("http_server_config"))
    dummy = b""
    if users:
        cost = max(int(h[4:6]) for h in users.values())
        dummy = bcrypt.hashpw(b"no such user", bcrypt.gensalt(rounds=cost))
    return WebConfig(context, users, headers, dummy)


def files_of(path: str | Path) -> list[Path]:
    """The file and the certificate files it names (best effort), for change detection."""
    path = Path(path)
    found = [path]
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        tls = data.get("tls_server_config") if isinstance(data, dict) else None
        if isinstance(tls, dict):
            for key in ("cert_file", "key_file", "client_ca_file"):
                if isinstance(tls.get(key), str):
                    found.append(path.parent / tls[key])
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        pass
    return found


def _only_keys(data: Mapping[Any, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in allowed:
            raise WebConfigError(
                f"unknown field {where}{key!s:.64} (allowed: {', '.join(allowed)})"
            )


def _text(tls: Mapping[str, Any], key: str) -> str | None:
    value = tls.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise WebConfigError(f"tls_server_config.{key} must be a string")
    return value


def _tls(tls: Any, base: Path) -> ssl.SSLContext | None:
    if tls is None:
        return None
    if not isinstance(tls, dict):
        raise WebConfigError("tls_server_config must be a mapping")
    _only_keys(tls, _TLS_KEYS, "tls_server_config.")
    cert, key = _text(tls, "cert_file"), _text(tls, "key_file")
    if cert is None or key is None:
        raise WebConfigError("tls_server_config needs both cert_file and key_file")
    versions = {}
    for name, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        wanted = _text(tls, name) or default
        if wanted not in TLS_VERSIONS:
            raise WebConfigError(
                f"tls_server_config.{name}: {wanted!r:.64} is not supported; "
                f"expected one of {', '.join(TLS_VERSIONS)}"
            )
        versions[name] = TLS_VERSIONS[wanted]
    if versions["min_version"] > versions["max_version"]:
        raise WebConfigError("tls_server_config: min_version is above max_version")
    auth = _text(tls, "client_auth_type") or "NoClientCert"
    if auth not in CLIENT_AUTH_TYPES:
        raise WebConfigError(
            f"tls_server_config.client_auth_type: {auth!r:.64} is not one of "
            f"{', '.join(CLIENT_AUTH_TYPES)}"
        )
    ca = _text(tls, "client_ca_file")
    mode = CLIENT_AUTH_TYPES[auth]
    if mode != ssl.CERT_NONE and ca is None:
        raise WebConfigError(f"tls_server_config.client_auth_type {auth} needs client_ca_file")
    if mode == ssl.CERT_NONE and ca is not None:
        raise WebConfigError(
            "tls_server_config.client_ca_file is set but client_auth_type is NoClientCert"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = versions["min_version"]
    context.maximum_version = versions["max_version"]
    try:
        context.load_cert_chain(base / cert, base / key)
    except (OSError, ssl.SSLError) as exc:
        raise WebConfigError(f"cannot load cert_file {cert} with key_file {key}: {exc}") from None
    if ca is not None:
        try:
            context.load_verify_locations(cafile=str(base / ca))
        except (OSError, ssl.SSLError) as exc:
            raise WebConfigError(f"cannot load client_ca_file {ca}: {exc}") from None
    context.verify_mode = mode
    return context


def _users(users: Any) -> dict[str, bytes]:
    if users is None:
        return {}
    if not isinstance(users, dict):
        raise WebConfigError("basic_auth_users must be a mapping of user name to bcrypt hash")
    out: dict[str, bytes] = {}
    for user, hashed in users.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise WebConfigError(f"basic_auth_users: invalid user name {user!r:.64}")
        match = _BCRYPT.match(hashed) if isinstance(hashed, str) else None
        if match is None or not 4 <= int(match.group(1)) <= 31:
            raise WebConfigError(f"basic_auth_users.{user:.64}: expected a bcrypt hash")
        out[user] = hashed.encode("ascii")
    return out


def _headers(http: Any) -> dict[str, str]:
    if http is None:
        return {}
    if not isinstance(http, dict):
        raise WebConfigError("http_server_config must be a mapping")
    _only_keys(http, _HTTP_KEYS, "http_server_config.")
    headers = http.get("headers") or {}
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and "\n" not in k + v and "\r" not in k + v
        for k, v in headers.items()
    ):
        raise WebConfigError("http_server_config.headers must map header names to strings")
    return dict(headers)


class WebConfigWatcher:
    """The current :class:`WebConfig` of a file, reloaded when the file or its certificates change."""

    def __init__(
        self,
        path: str | Path,
        interval: float = RELOAD_INTERVAL,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.interval = interval
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._digest = self._fingerprint()
        self._config = load(self.path)
        self._checked = monotonic()
        self.reloads = 0
        self.reload_failures = 0

    def _fingerprint(self) -> bytes:
        digest = hashlib.sha256()
        for path in files_of(self.path):
            digest.update(str(path).encode())
            try:
                digest.update(path.read_bytes())
            except OSError as exc:
                digest.update(repr(exc).encode())
        return digest.digest()

    def current(self) -> WebConfig:
        """Return the configuration, first reloading it if the files changed (once a second)."""
        with self._lock:
            now = self.monotonic()
            if now - self._checked < self.interval:
                return self._config
            self._checked = now
            digest = self._fingerprint()
            if hmac.compare_digest(digest, self._digest):
                return self._config
            self._digest = digest
            try:
                self._config = load(self.path)
            except WebConfigError as exc:
                self.reload_failures += 1
                log.error("web_config_reload_failed", path=str(self.path), error=str(exc),
                          keeping="the last good configuration")  # fmt: skip
            else:
                self.reloads += 1
                log.info("web_config_reloaded", path=str(self.path))
            return self._config


def parse_file(text: str) -> str:
    """A web configuration file in the exporter toolkit format (TLS and basic auth)."""
    path = text.strip()
    if not path:
        raise ValueError("expected the path of a web configuration file")
    try:
        load(path)
    except WebConfigError as exc:
        raise ValueError(str(exc)) from None
    return path
