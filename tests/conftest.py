"""Hooks for the whole suite: a failed test's report ends with the logs of the processes it ran."""

from __future__ import annotations

import pytest

from tests.support.logs import LOGS, FailureLogs


def pytest_configure(config: pytest.Config) -> None:
    """Register :class:`~tests.support.logs.FailureLogs` over the suite's log registry."""
    config.pluginmanager.register(FailureLogs(LOGS), "celery-exporter-failure-logs")
