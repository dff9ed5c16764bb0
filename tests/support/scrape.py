"""Reading ``/metrics`` pages into plain dicts, and looking samples up in them."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

#: A sample's key in a parsed page: its name and its label pairs.
Sample = tuple[str, frozenset[tuple[str, str]]]


def fetch(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``url``; return the status and body (also for error statuses)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def parse_metrics(text: str) -> dict[Sample, float]:
    """Map ``(sample name, labels)`` to value for every sample of an exposition."""
    samples: dict[Sample, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape(url: str, timeout: float = 5.0) -> dict[Sample, float]:
    """Fetch and parse a ``/metrics`` page."""
    status, body = fetch(url, timeout)
    if status != 200:
        raise RuntimeError(f"{url} answered {status}")
    return parse_metrics(body.decode())


def sample(name: str, /, **labels: str) -> Sample:
    """The key of one sample in a parsed page (``name`` may also be one of the labels)."""
    return (name, frozenset(labels.items()))


def value(samples: Mapping[Sample, float], name: str, /, **labels: str) -> float:
    """The value of one sample, or 0 when it is absent."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Mapping[Sample, float], name: str, /, **labels: str) -> float:
    """The sum of every sample named ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, lbls), v in samples.items() if n == name and wanted <= lbls)
