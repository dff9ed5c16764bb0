"""Field values from untrusted events: label text bounded in length, exception class names, ETAs."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

#: The value of a label the event did not carry.
UNKNOWN = "unknown"
#: Longest label value kept; longer values are cut to this many characters.
MAX_VALUE_LENGTH = 200

_EXCEPTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_REPR_CLASS = re.compile(r"([A-Za-z_][A-Za-z0-9_.]*)\(")
_TRACEBACK_CLASS = re.compile(r"([A-Za-z_][A-Za-z0-9_.]*)(?::|$)")


def clean(value: Any) -> str:
    """Turn any event field into a short label value."""
    text = value if isinstance(value, str) else "" if value is None else str(value)
    if not text:
        return UNKNOWN
    return text[:MAX_VALUE_LENGTH] if len(text) > MAX_VALUE_LENGTH else text


def exception_name(exception: Any, traceback: Any) -> str:
    """Return the exception class name from a task event's ``exception`` and ``traceback``.

    Workers send the exception's repr, e.g. ``ValueError('bad')``; when it is not of that form
    (``ExceptionWithTraceback()`` for a hard time limit, or a custom ``__repr__`` such as
    Reject's ``reject requeue=False: ...``) the class is taken from the traceback's last line.
    """
    text = exception.strip() if isinstance(exception, str) else ""
    match = _REPR_CLASS.match(text)
    name = _last_part(match.group(1)) if match else ""
    if name in ("", "ExceptionWithTraceback") and isinstance(traceback, str):
        name = _class_from_traceback(traceback) or name
    if not name:
        match = _EXCEPTION_NAME.match(text)
        name = _last_part(match.group(0)) if match else ""
    return name or UNKNOWN


def _last_part(dotted: str) -> str:
    return str(dotted).rsplit(".", 1)[-1]


def _class_from_traceback(traceback: str) -> str:
    last = traceback[-2000:].rstrip().rsplit("\n", 1)[-1].strip()
    match = _TRACEBACK_CLASS.match(last)
    return _last_part(match.group(1)) if match else ""


def eta_time(value: Any) -> float | None:
    """An ISO 8601 time (naive means UTC) as a Unix time, else None."""
    if not value or type(value) is not str:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()
