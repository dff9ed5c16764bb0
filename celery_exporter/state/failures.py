"""Recent failures by task name and exception class, counted per minute for a day.

Backs ``/api/v1/failures``: how often each (name, exception) pair failed over the last
``since`` seconds, counted in whole minutes (a failure up to a minute older than ``since`` may
be counted), with the latest failing task's id and exception. At most :data:`MAX_GROUPS` pairs
are kept, the one that failed least recently making way first.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Longest window asked for, in seconds; minutes older than this are forgotten.
RETENTION = 86_400.0
#: Most (name, exception) pairs kept.
MAX_GROUPS = 500
_MINUTE = 60.0


class _Group:
    __slots__ = ("last_message", "last_seen", "last_task_id", "minutes")

    def __init__(self) -> None:
        #: Failures per minute (its number since the epoch), oldest first.
        self.minutes: dict[int, int] = {}
        self.last_seen = 0.0
        self.last_task_id = ""
        self.last_message: str | None = None


@dataclass(frozen=True)
class FailureRow:
    """One (name, exception) pair's failures within a window."""

    name: str
    exception: str
    count: int
    last_seen: float
    last_task_id: str
    last_message: str | None


class FailureLog:
    """Failures per (task name, exception class) and minute, for the last day."""

    def __init__(self, max_groups: int = MAX_GROUPS) -> None:
        self.max_groups = max_groups
        self._groups: dict[tuple[str, str], _Group] = {}

    def __len__(self) -> int:
        return len(self._groups)

    def add(
        self, name: str, exception: str, task_id: str, message: str | None, when: float,
        now: float,
    ) -> None:  # fmt: skip
        """Count one failure that happened at ``when`` (per its worker), arriving at ``now``."""
        key = (name, exception)
        group = self._groups.pop(key, None)
        if group is None:
            group = _Group()
            if len(self._groups) >= self.max_groups:
                del self._groups[next(iter(self._groups))]
        self._groups[key] = group  # the most recent failure last
        minute = int(now // _MINUTE)
        minutes = group.minutes
        if minute not in minutes:
            oldest = minute - int(RETENTION // _MINUTE)
            for old in [m for m in minutes if m < oldest]:
                del minutes[old]
        minutes[minute] = minutes.get(minute, 0) + 1
        group.last_seen = when
        group.last_task_id = task_id
        group.last_message = message

    def rows(self, since: float, now: float) -> list[FailureRow]:
        """Each pair that failed in the last ``since`` seconds, the largest count first."""
        first = int((now - since) // _MINUTE)
        rows = []
        for (name, exception), group in self._groups.items():
            count = sum(n for minute, n in group.minutes.items() if minute >= first)
            if count:
                last = (group.last_seen, group.last_task_id, group.last_message)
                rows.append(FailureRow(name, exception, count, *last))
        rows.sort(key=lambda row: (-row.count, -row.last_seen, row.name, row.exception))
        return rows
