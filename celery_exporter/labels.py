"""Label values from untrusted events: bounded in length and in number of distinct values."""

from __future__ import annotations

import re
from typing import Any

#: The value every label takes once its cap of distinct values is reached.
OVERFLOW = "other"
#: The value of a label the event did not carry.
UNKNOWN = "unknown"
#: Longest label value kept; longer values are cut to this many characters.
MAX_VALUE_LENGTH = 200

_EXCEPTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


class LabelCap:
    """Admits at most ``limit`` distinct values of one label; the rest become ``other``."""

    __slots__ = ("limit", "overflow", "seen")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()
        self.overflow = 0

    def __call__(self, value: Any) -> str:
        """Return the label value to use for ``value``."""
        if isinstance(value, str) and value in self.seen:
            return value
        text = clean(value)
        if text in self.seen:
            return text
        if len(self.seen) < self.limit:
            self.seen.add(text)
            return text
        self.overflow += 1
        return OVERFLOW

    def forget(self, value: str) -> None:
        """Free the slot of a value whose series are gone."""
        self.seen.discard(value)


def clean(value: Any) -> str:
    """Turn any event field into a short label value."""
    text = value if isinstance(value, str) else "" if value is None else str(value)
    if not text:
        return UNKNOWN
    return text[:MAX_VALUE_LENGTH] if len(text) > MAX_VALUE_LENGTH else text


def exception_name(exception: Any, traceback: Any) -> str:
    """Return the exception class name from a task event's ``exception`` and ``traceback``.

    Workers send the exception's repr, e.g. ``ValueError('bad')``. A prefork pool reports a hard
    time limit as ``ExceptionWithTraceback()``: then the class is on the traceback's last line.
    """
    name = _class_from_repr(exception)
    if name in ("", "ExceptionWithTraceback") and isinstance(traceback, str):
        name = _class_from_traceback(traceback) or name
    return name or UNKNOWN


def _class_from_repr(exception: Any) -> str:
    if not isinstance(exception, str):
        return ""
    match = _EXCEPTION_NAME.match(exception.strip())
    return str(match.group(0)).rsplit(".", 1)[-1] if match else ""


def _class_from_traceback(traceback: str) -> str:
    tail = traceback[-2000:].rstrip()
    last = tail.rsplit("\n", 1)[-1].strip()
    match = _EXCEPTION_NAME.match(last)
    return str(match.group(0)).rsplit(".", 1)[-1] if match else ""
