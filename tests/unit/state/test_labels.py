"""Label values: exception class names, caps and cleaning."""

from __future__ import annotations

from typing import Any

import pytest

from celery_exporter.events.fields import MAX_VALUE_LENGTH, clean, exception_name
from celery_exporter.state.labels import LabelCap

HARD_LIMIT_TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/usr/lib/python3/site-packages/billiard/pool.py", line 684, in on_hard_timeout\n'
    "    raise TimeLimitExceeded(job._timeout)\n"
    "billiard.exceptions.TimeLimitExceeded: TimeLimitExceeded(1,)\n"
)


@pytest.mark.parametrize(
    ("exception", "traceback", "expected"),
    [
        ("ValueError('bad')", None, "ValueError"),
        ("KeyError('missing')", "Traceback ...\nKeyError: 'missing'", "KeyError"),
        ("SoftTimeLimitExceeded()", None, "SoftTimeLimitExceeded"),
        ("Reject('no reason', False)", None, "Reject"),
        ("myapp.errors.PaymentDeclined('card')", None, "PaymentDeclined"),
        ("  ConnectionError()  ", None, "ConnectionError"),
        ("ExceptionWithTraceback()", HARD_LIMIT_TRACEBACK, "TimeLimitExceeded"),
        ("ExceptionWithTraceback()", None, "ExceptionWithTraceback"),
        ("ExceptionWithTraceback()", "   \n  ", "ExceptionWithTraceback"),
        ("", "Traceback ...\nmyapp.Boom: x", "Boom"),
        ("", None, "unknown"),
        (None, None, "unknown"),
        (42, None, "unknown"),
        ("!!! (not a repr)", None, "unknown"),
        ("123abc", None, "unknown"),
        ("trailing.", None, "unknown"),
    ],
)
def test_exception_name(exception: Any, traceback: Any, expected: str) -> None:
    """The class name comes from the repr, or the traceback's last line for ExceptionWithTraceback."""
    assert exception_name(exception, traceback) == expected


def test_exception_name_ignores_traceback_when_repr_names_a_class() -> None:
    """A usable repr wins over whatever the traceback's last line says."""
    assert exception_name("ValueError('x')", HARD_LIMIT_TRACEBACK) == "ValueError"


def test_label_cap_admits_up_to_limit_then_other() -> None:
    """A cap of 2 admits two distinct values; a third becomes 'other' and counts overflow."""
    cap = LabelCap(2)
    assert cap("a") == "a"
    assert cap("b") == "b"
    assert cap("a") == "a"
    assert cap.overflow == 0
    assert cap("c") == "other"
    assert cap("d") == "other"
    assert cap("c") == "other"
    assert cap.overflow == 3
    assert cap("b") == "b"
    assert set(cap.seen) == {"a", "b"}


def test_label_cap_forget_frees_a_slot() -> None:
    """Forgetting a value lets a new value take its slot."""
    cap = LabelCap(1)
    assert cap("a") == "a"
    assert cap("b") == "other"
    cap.forget("a")
    assert cap("b") == "b"
    assert cap.overflow == 1


def test_label_cap_cleans_values() -> None:
    """Missing and non-string values are cleaned before taking a slot."""
    cap = LabelCap(3)
    assert cap(None) == "unknown"
    assert cap("") == "unknown"
    assert cap(7) == "7"
    assert set(cap.seen) == {"unknown", "7"}
    long = "x" * (MAX_VALUE_LENGTH + 50)
    assert cap(long) == "x" * MAX_VALUE_LENGTH
    assert cap(long) == "x" * MAX_VALUE_LENGTH
    assert cap.overflow == 0
    assert len(cap.seen) == 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "unknown"),
        ("", "unknown"),
        ("queue-a", "queue-a"),
        (3, "3"),
        (["a"], "['a']"),
        ("y" * 201, "y" * 200),
        ("z" * 200, "z" * 200),
    ],
)
def test_clean(value: Any, expected: str) -> None:
    """clean() maps None/empty to 'unknown', stringifies, and truncates to 200 characters."""
    assert clean(value) == expected


def test_exception_name_of_a_custom_repr_comes_from_the_traceback() -> None:
    """Reject's custom repr ('reject requeue=False: ...') is named by the traceback's class."""
    traceback = (
        "Traceback (most recent call last):\n  ...\n"
        "celery.exceptions.Reject: reject requeue=False: not wanted\n"
    )
    assert exception_name("reject requeue=False: not wanted", traceback) == "Reject"
    assert exception_name("reject requeue=False: not wanted", None) == "reject"


def test_label_cap_returns_one_object_per_value() -> None:
    """Equal values come back as the first one's string object, so tables hold one copy."""
    cap = LabelCap(2)
    first = "".join(["app.", "add"])
    again = "".join(["app.", "add"])
    assert again is not first
    assert cap(first) is first
    assert cap(again) is first
