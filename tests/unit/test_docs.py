"""The README documents every flag and every metric family the exporter serves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from celery_exporter.config import OPTIONS

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
GOLDEN = (Path(__file__).parent / "golden" / "metrics.txt").read_text()
FAMILIES = sorted(set(re.findall(r"^# TYPE (celery_\w+) ", GOLDEN, re.M)))


@pytest.mark.parametrize("flag", [opt.flag for opt in OPTIONS])
def test_readme_documents_every_flag(flag: str) -> None:
    """Each flag and its environment variable appear in the README's configuration table."""
    opt = next(o for o in OPTIONS if o.flag == flag)
    assert f"`{opt.flag}`" in README
    assert f"`{opt.env}`" in README


@pytest.mark.parametrize("family", FAMILIES)
def test_readme_documents_every_metric(family: str) -> None:
    """Each metric family of the golden /metrics output is named in the README."""
    assert f"`{family}`" in README


def test_golden_file_covers_the_families() -> None:
    """The golden output holds the task, worker and exporter families (guards the test above)."""
    assert len(FAMILIES) >= 35
