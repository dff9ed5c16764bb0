"""Label values bounded in number: past a label's cap, new values become ``other``."""

from __future__ import annotations

from typing import Any

from ..events.fields import clean

#: The value every label takes once its cap of distinct values is reached.
OVERFLOW = "other"


class LabelCap:
    """Admits at most ``limit`` distinct values of one label; the rest become ``other``.

    Each admitted value is kept as one string object, returned for every equal value, so the
    tables that hold labels do not each hold a copy of what every event decoded anew.
    """

    __slots__ = ("limit", "overflow", "seen")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: Each admitted value, to itself.
        self.seen: dict[str, str] = {}
        self.overflow = 0

    def __call__(self, value: Any) -> str:
        """Return the label value to use for ``value``."""
        seen = self.seen
        if isinstance(value, str) and value in seen:
            return seen[value]
        text = clean(value)
        if text in seen:
            return seen[text]
        if len(seen) < self.limit:
            seen[text] = text
            return text
        self.overflow += 1
        return OVERFLOW

    def forget(self, value: str) -> None:
        """Free the slot of a value whose series are gone."""
        self.seen.pop(value, None)
