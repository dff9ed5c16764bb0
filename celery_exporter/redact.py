"""Keeping broker passwords out of every log line, error and page."""

from __future__ import annotations

import re
from collections.abc import Iterable, MutableMapping
from typing import Any
from urllib.parse import unquote

MASK = "***"
_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@;\s]*):(?P<pw>[^@/;\s]*)@"
)
# user:password@ without a scheme, as in a mistyped URL (redis:/:pw@host).
_BARE_USERINFO = re.compile(r"(?P<user>[^:/@;\s]*):(?P<pw>[^@/;\s]+)@")
_QUERY_SECRET = re.compile(
    r"(?P<key>(?:password|passwd|pass|sasl_password)=)(?P<pw>[^&;\s]*)", re.I
)


def mask_url(text: str) -> str:
    """Replace every password in URLs within ``text`` with ``***``, also in mistyped URLs."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@" if m["pw"] else m[0], text)
    text = _BARE_USERINFO.sub(lambda m: f"{m['user']}:{MASK}@" if m["pw"] != MASK else m[0], text)
    return _QUERY_SECRET.sub(lambda m: f"{m['key']}{MASK}" if m["pw"] else m[0], text)


def url_secrets(url: str) -> set[str]:
    """Return the passwords a broker URL carries, raw and percent-decoded."""
    found: set[str] = set()
    for match in _USERINFO.finditer(url):
        if match["pw"]:
            found.update((match["pw"], unquote(match["pw"])))
    for match in _QUERY_SECRET.finditer(url):
        if match["pw"]:
            found.update((match["pw"], unquote(match["pw"])))
    return {s for s in found if len(s) >= 3}


class Redactor:
    """A structlog processor that masks URL passwords and known secrets in every string value."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = sorted(set(secrets), key=len, reverse=True)

    def scrub(self, text: str) -> str:
        """Return ``text`` with every secret masked."""
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return mask_url(text) if "@" in text or "=" in text else text

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        for key, value in event_dict.items():
            if isinstance(value, str):
                event_dict[key] = self.scrub(value)
            elif isinstance(value, BaseException):
                event_dict[key] = self.scrub(f"{type(value).__name__}: {value}")
        return event_dict
