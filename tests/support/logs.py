"""The log files of the processes the tests start, and their ends in failed tests' reports.

Every launcher in :mod:`tests.support` registers the files its process writes with
:data:`LOGS`. :class:`FailureLogs`, a pytest plugin that ``tests/conftest.py`` registers, adds
to the report of a failed test the last lines of each log of the processes that test started,
in its body or in its fixtures (also fixtures set up for an earlier test and still in use).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Generator, Iterable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog

#: How many lines of each log a failed test's report shows.
TAIL_LINES = 40
#: How much of the end of a log file is read to find its last lines.
_TAIL_BYTES = 64 * 1024


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a text file, or "" when it cannot be read."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(max(0, size - _TAIL_BYTES))
            data = handle.read()
    except OSError:
        return ""
    kept = data.decode(errors="replace").splitlines()[-lines:] if lines > 0 else []
    return "".join(f"{line}\n" for line in kept)


class LogFile:
    """One registered log file: where it is, what wrote it, and its end once it is closed."""

    def __init__(self, path: Path, label: str, seq: int) -> None:
        self.path = path
        self.label = label
        self.seq = seq
        self._kept: str | None = None

    def tail(self, lines: int = TAIL_LINES) -> str:
        """The file's last lines; after :meth:`close`, those it had then if it is gone."""
        text = tail(self.path, lines)
        if text or self._kept is None:
            return text
        return "".join(f"{line}\n" for line in self._kept.splitlines()[-lines:])

    def close(self) -> None:
        """Keep the file's end, for a launcher about to delete the file."""
        self._kept = tail(self.path, TAIL_LINES)


class LogRegistry:
    """The log files processes were started with, in the order they (re)started."""

    def __init__(self) -> None:
        self._seq = itertools.count()
        self._files: dict[Path, LogFile] = {}

    def register(self, path: Path, label: str) -> LogFile:
        """Record that a process named ``label`` writes ``path``; return its entry."""
        seq = next(self._seq)
        entry = self._files.get(path)
        if entry is None:
            entry = self._files[path] = LogFile(path, label, seq)
        else:
            entry.label, entry.seq = label, seq
        return entry

    def mark(self) -> int:
        """A point in time for :meth:`since`."""
        return next(self._seq)

    def since(self, mark: int) -> list[LogFile]:
        """The files registered (or registered again) after ``mark``."""
        return sorted((f for f in self._files.values() if f.seq > mark), key=lambda f: f.seq)


#: The logs of every process this Python process started through :mod:`tests.support`.
LOGS = LogRegistry()


def sections(files: Iterable[LogFile], lines: int = TAIL_LINES) -> list[tuple[str, str]]:
    """Report sections (title, text) with the end of each log file, one per file."""
    out: list[tuple[str, str]] = []
    seen: set[Path] = set()
    for log in files:
        if log.path in seen:
            continue
        seen.add(log.path)
        text = log.tail(lines)
        out.append((f"last {lines} lines of {log.label} ({log.path.name})", text or "(empty)\n"))
    return out


class FailureLogs:
    """Pytest plugin: a failed test's report ends with the logs of the processes it started."""

    def __init__(self, registry: LogRegistry, lines: int = TAIL_LINES) -> None:
        self.registry = registry
        self.lines = lines
        #: Fixtures that started processes: fixture id -> (fixture, its value, its logs).
        self._fixtures: dict[int, tuple[pytest.FixtureDef[object], object, list[LogFile]]] = {}
        #: Logs of the fixtures torn down since the current test's setup began.
        self._retired: list[LogFile] = []
        self._mark = registry.mark()

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[object], request: pytest.FixtureRequest
    ) -> Generator[None, object, object]:
        """Remember which logs a fixture's setup registered."""
        mark = self.registry.mark()
        value = yield
        started = self.registry.since(mark)
        if started:
            self._fixtures[id(fixturedef)] = (fixturedef, value, started)
        return value

    def pytest_fixture_post_finalizer(self, fixturedef: pytest.FixtureDef[object]) -> None:
        """A torn-down fixture's logs still belong to the test whose teardown it was."""
        entry = self._fixtures.pop(id(fixturedef), None)
        if entry is not None:
            self._retired.extend(entry[2])

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """Start the test's own record: logs registered from here on are its."""
        self._mark = self.registry.mark()
        self._retired = []

    def logs_for(self, item: pytest.Item) -> list[LogFile]:
        """The logs of the processes ``item`` started, or its fixtures did."""
        values = getattr(item, "funcargs", {})
        found = [
            log
            for fixturedef, value, logs in self._fixtures.values()
            if fixturedef.argname in values and values[fixturedef.argname] is value
            for log in logs
        ]
        return [*found, *self._retired, *self.registry.since(self._mark)]

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        """Append the end of each of the test's logs to its report when it failed."""
        report = yield
        if report.failed:
            report.sections.extend(sections(self.logs_for(item), self.lines))
        return report


@contextlib.contextmanager
def captured_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """structlog's ``capture_logs``, leaving structlog unconfigured if it found it so.

    ``capture_logs`` marks structlog as configured when it ends, with the default (printing)
    logger; code that sets structlog up only when nothing has (the in-worker exporter) would
    then print its lines instead of handing them to the logging module.
    """
    configured = structlog.is_configured()
    try:
        with structlog.testing.capture_logs() as logs:
            yield logs
    finally:
        if not configured:
            structlog.reset_defaults()
