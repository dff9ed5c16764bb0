"""The broker collector tests' helpers: fast queue and inspect collectors, waiting on their samples."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tests.support.processes import ExporterProcess
from tests.support.scrape import Sample
from tests.support.waiting import wait_for

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
