"""Label values bounded in number: past a label's cap, new values become ``other``."""

from __future__ import annotations

from typing import Any

from ..events.fields import clean

#: The value every label takes once its cap of distinct values is reached.
OVERFLOW = "other"


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
