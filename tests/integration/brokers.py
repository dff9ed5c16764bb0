"""Fixtures and helpers for the broker and worker-pool collector tests.

Workers with extra command-line options (``--concurrency``, ``--autoscale``,
``--prefetch-multiplier``), one private RabbitMQ node per session, and waiting on a collector's
samples. Test modules import the fixtures they use from here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import pytest

from tests.integration.conftest import ExporterProcess
from tests.support import RabbitMQServer, Sample, wait_for

#: Generous: two CPUs are shared with other jobs and each inspect round takes about 3 s.
COLLECT_TIMEOUT = 90.0
#: Short intervals, so the collectors answer quickly in tests.
FAST = ("--queue-interval", "0.3s", "--inspect-interval", "1s")


def wait_samples(
    exporter: ExporterProcess,
    expected: Mapping[Sample, float],
    timeout: float = COLLECT_TIMEOUT,
    absent: Sequence[Sample] = (),
) -> dict[Sample, float]:
    """Poll ``/metrics`` until every expected sample has exactly its value; return the scrape."""
    last: dict[Sample, float] = {}

    def reached() -> bool:
        nonlocal last
        last = exporter.metrics()
        return all(last.get(k) == v for k, v in expected.items()) and not any(
            k in last for k in absent
        )

    try:
        wait_for(reached, timeout, 0.2, "collector samples")
    except TimeoutError:
        got = {f"{n}{dict(sorted(lb))}": (last.get((n, lb)), v) for (n, lb), v in expected.items()}
        raise AssertionError(
            f"(got, wanted) after {timeout}s: {got}; present but unwanted: "
            f"{[k for k in absent if k in last]}\nexporter output:\n{exporter.output()[-3000:]}"
        ) from None
    return last


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitMQServer]:
    """One private RabbitMQ node with the management plugin for the session."""
    with RabbitMQServer() as server:
        yield server
