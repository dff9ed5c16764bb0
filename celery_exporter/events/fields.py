"""Field values from untrusted events: label text bounded in length, exception class names, ETAs."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

import msgspec

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


def label(value: Any) -> str:
    """A label value from any field: short strings pass as they are, the rest is cleaned."""
    if type(value) is str and 0 < len(value) <= MAX_VALUE_LENGTH:
        return value
    return clean(value)


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


def eta_datetime(value: Any) -> datetime | None:
    """An ETA as Celery writes it (ISO 8601; naive means UTC) as a datetime, else None.

    RFC 3339 is read as msgspec reads it (the fast way of :mod:`.schema`), so both ways give
    the same time; the rest of ISO 8601 as :meth:`datetime.fromisoformat` reads it.
    """
    if not value or type(value) is not str:
        return None
    try:
        return msgspec.convert(value, datetime)
    except msgspec.ValidationError:
        pass
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def unix_time(value: datetime) -> float:
    """A datetime as a Unix time; naive means UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()
