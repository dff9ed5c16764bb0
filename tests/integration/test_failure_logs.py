"""A failed test's report ends with the last lines of the logs of the processes it started."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.logs import LOGS, TAIL_LINES, FailureLogs, LogRegistry, tail

pytest_plugins = ("pytester",)

#: A test module run by an inner pytest: a session fixture and a test body register logs.
INNER = """
import pytest

from tests.support.logs import LOGS


def write(path, name, count):
    path.write_text("".join(f"{name} line {i}\\n" for i in range(count)))
    return path


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    path = write(tmp_path_factory.mktemp("server") / "server.log", "server", 100)
    LOGS.register(path, "fake server")
    return path


def test_sets_up_server(server):
    pass


def test_fails_with_server(server):
    assert False


def test_fails_without_server():
    assert False


def test_starts_its_own_and_fails(tmp_path):
    LOGS.register(write(tmp_path / "own.log", "own", 3), "own process")
    assert False


def test_starts_its_own_and_passes(tmp_path):
    LOGS.register(write(tmp_path / "passing.log", "passing", 3), "passing process")
"""


def lines(name: str, numbers: range) -> str:
    """The text the inner module writes to a log: ``<name> line <n>`` for each number."""
    return "".join(f"{name} line {i}\n" for i in numbers)


def test_failed_tests_report_their_processes_logs(pytester: pytest.Pytester) -> None:
    """Each failed test gets the last 40 lines of its fixtures' and its own logs, no others."""
    pytester.makepyfile(test_inner=INNER)
    run = pytester.inline_run(
        "-p", "no:cacheprovider", "-p", "no:cloudcoil", plugins=[FailureLogs(LOGS)]
    )  # fmt: skip
    reports = {
        r.nodeid.split("::")[-1]: r for r in run.getreports("pytest_runtest_logreport") if r.failed
    }
    assert sorted(reports) == [
        "test_fails_with_server",
        "test_fails_without_server",
        "test_starts_its_own_and_fails",
    ]
    logs = {
        name: [s for s in report.sections if s[0].startswith("last ")]
        for name, report in reports.items()
    }
    assert logs == {
        "test_fails_with_server": [
            (
                f"last {TAIL_LINES} lines of fake server (server.log)",
                lines("server", range(60, 100)),
            )
        ],
        "test_fails_without_server": [],
        "test_starts_its_own_and_fails": [
            ("last 40 lines of own process (own.log)", lines("own", range(3)))
        ],
    }
    passed = [r for r in run.getreports("pytest_runtest_logreport") if r.passed]
    assert all(not s[0].startswith("last ") for r in passed for s in r.sections)
    assert len(passed) == 2 * 3 + 3 * 2  # every phase of 2 tests; setup and teardown of 3


def test_tail_keeps_the_end_of_a_deleted_log(tmp_path: Path) -> None:
    """A closed log's end survives the file's removal; an unknown file's tail is empty."""
    registry = LogRegistry()
    path = tmp_path / "server.log"
    path.write_text(lines("x", range(50)))
    log = registry.register(path, "server")
    assert log.tail(2) == lines("x", range(48, 50))
    log.close()
    path.unlink()
    assert log.tail(3) == lines("x", range(47, 50))
    assert tail(tmp_path / "missing.log") == ""


def test_registry_since_lists_files_registered_after_a_mark(tmp_path: Path) -> None:
    """since() lists the files registered, or registered again, after the mark, oldest first."""
    registry = LogRegistry()
    first = registry.register(tmp_path / "a.log", "a")
    mark = registry.mark()
    second = registry.register(tmp_path / "b.log", "b")
    again = registry.register(tmp_path / "a.log", "a restarted")
    assert again is first
    assert registry.since(mark) == [second, first]
    assert first.label == "a restarted"
