"""The Prometheus text format (version 0.0.4), written quickly.

prometheus_client checks and escapes every label name on every sample; a scrape of a busy
cluster has thousands of samples over a handful of label names. This writer checks each
family's label names once and caches escaped label values, and writes the same text.
OpenMetrics is left to prometheus_client; ``/metrics`` prefers this format whenever the client
accepts it, which Prometheus always does.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_OM_ONLY_SUFFIXES = ("_created", "_gsum", "_gcount")
_TYPE_IN_TEXT = {
    "info": "gauge",
    "stateset": "gauge",
    "gaugehistogram": "histogram",
    "unknown": "untyped",
}


def accepts_text(accept: str) -> bool:
    """Whether a client's Accept header allows the text format (no header allows anything)."""
    return not accept.strip() or "text/plain" in accept or "*/*" in accept


def render(families: Iterable[Metric]) -> bytes:
    """Render ``families`` (e.g. ``registry.collect()``) in the text format."""
    out: list[str] = []
    escaped: dict[str, str] = {}
    for family in families:
        name, kind = family.name, family.type
        if kind == "counter":
            name += "_total"
        elif kind == "info":
            name += "_info"
        doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {_TYPE_IN_TEXT.get(kind, kind)}\n")
        extra: dict[str, list[str]] = {}
        for sample in family.samples:
            line = _line(sample.name, sample.labels, sample.value, sample.timestamp, escaped)
            suffix = sample.name[len(family.name) :]
            if suffix in _OM_ONLY_SUFFIXES and sample.name.startswith(family.name):
                extra.setdefault(suffix, []).append(line)
            else:
                out.append(line)
        for suffix, lines in sorted(extra.items()):
            out.append(f"# HELP {family.name}{suffix} {doc}\n# TYPE {family.name}{suffix} gauge\n")
            out.extend(lines)
    return "".join(out).encode()


def _line(
    name: str,
    labels: dict[str, str],
    value: float,
    timestamp: object,
    escaped: dict[str, str],
) -> str:
    if labels:
        parts = []
        for key, raw in sorted(labels.items()):
            text = escaped.get(raw)
            if text is None:
                text = escaped[raw] = (
                    raw.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
                )
            parts.append(f'{key}="{text}"')
        head = f"{name}{{{','.join(parts)}}} "
    else:
        head = f"{name} "
    tail = f" {int(float(str(timestamp)) * 1000)}\n" if timestamp is not None else "\n"
    return head + _number(value) + tail


def _number(value: float) -> str:
    if type(value) is int and 0 <= value < 1_000_000:
        return f"{value}.0"  # counts: what floatToGoString gives, without its work
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]
