"""The task view's HTML pages: rendered from the same data as the API, hostile text escaped."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from celery_exporter.web.pages import CONTENT_SECURITY_POLICY, format_seconds, format_time
from tests.support.taskview_scene import (
    HOSTILE,
    HOSTILE_ID,
    NOW,
    T0,
    W1,
    get,
    hostile_scene,
    scene,
    serving,
)

PAGES = ("/tasks", "/tasks/t-slow", "/workers", "/queues", "/failures")
#: HOSTILE as autoescaping writes it.
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"
QUOTED_ID = quote(HOSTILE_ID, safe="")


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    with serving(scene()) as srv:
        yield srv


@pytest.fixture(scope="module")
def hostile() -> Iterator[Any]:
    with serving(hostile_scene()) as srv:
        yield srv


def page(server: Any, path: str, status: int = 200) -> str:
    """The page's HTML after checking its status and security headers."""
    got, headers, body = get(server, path)
    assert got == status
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert headers["X-Content-Type-Options"] == "nosniff"
    return body.decode()


def row_of(html: str, task_id: str) -> str:
    """The table row of one task on /tasks."""
    match = re.search(rf'<tr[^>]*>\s*<td class="id"><a href="tasks/{task_id}">.*?</tr>', html, re.S)
    assert match, f"no row for {task_id}"
    return match.group(0)


@pytest.mark.parametrize("path", PAGES)
def test_each_page_renders_with_nav_and_no_script(server: Any, path: str) -> None:
    """Each page answers 200 with the navigation and carries no script or refresh by default."""
    html = page(server, path)
    assert html.startswith("<!doctype html>")
    root = "../" if path.count("/") == 2 else ""
    for target in ("tasks", "workers", "queues", "failures"):
        assert f'<a href="{root}{target}"' in html
    assert "<script" not in html
    assert 'http-equiv="refresh"' not in html


def test_policy_allows_no_script() -> None:
    """The pages' policy denies everything by default and names no script source."""
    assert CONTENT_SECURITY_POLICY.startswith("default-src 'none';")
    assert "script-src" not in CONTENT_SECURITY_POLICY


def test_landing_page_links_the_pages(server: Any) -> None:
    """The landing page links each task view page when the view is on."""
    html = get(server, "/")[2].decode()
    for target in ("tasks", "workers", "queues", "failures"):
        assert f'<li><a href="{target}">/{target}</a>' in html


def test_tasks_lists_every_task_and_marks_only_the_stuck_one(server: Any) -> None:
    """/tasks shows each task; only the task started longer than --web.stuck-after is stuck."""
    html = page(server, "/tasks")
    assert "6 of 6 matching tasks" in html
    for task_id in ("t-fresh", "t-retry", "t-wait", "t-slow", "t-fail", "t-ok"):
        row = row_of(html, task_id)
        assert ('class="stuck"' in row) == (task_id == "t-slow")
        assert ("stuck-label" in row) == (task_id == "t-slow")
    slow = row_of(html, "t-slow")
    assert "<td>3/10 resizing</td>" in slow
    assert "(16.3 min ago)" in slow


def test_task_page_marks_a_stuck_task(server: Any) -> None:
    """/tasks/<id> labels a stuck task stuck, and a task that started recently not."""
    label = '<td class="state-started">started <span class="stuck-label">stuck</span></td>'
    assert label in page(server, "/tasks/t-slow")
    assert '<td class="state-started">started</td>' in page(server, "/tasks/t-fresh")


def test_tasks_links_the_stuck_filter(server: Any) -> None:
    """/tasks links the filter that lists only the stuck tasks, and that filter finds t-slow."""
    assert '<a href="?state=started&amp;older_than=900">show only those</a>' in page(
        server, "/tasks"
    )
    html = page(server, "/tasks?state=started&older_than=900")
    assert re.findall(r'href="tasks/([^"]+)"', html) == ["t-slow"]


def test_tasks_stuck_after_is_a_setting() -> None:
    """With a longer --web.stuck-after nothing is stuck."""
    with serving(scene(), stuck_after=1000.0) as srv:
        html = page(srv, "/tasks")
    assert 'class="stuck"' not in html


def test_tasks_filter_form_keeps_its_values(server: Any) -> None:
    """Filters come from the GET form; empty fields filter nothing; the form shows the choice."""
    html = page(
        server, "/tasks?state=started&state=failed&name=&queue=&worker=&older_than=900&limit="
    )
    assert "2 of 2 matching tasks" in html
    assert [m for m in re.findall(r'href="tasks/([^"]+)"', html)] == ["t-slow", "t-fail"]
    assert '<input type="checkbox" name="state" value="started" checked>' in html
    assert '<input type="checkbox" name="state" value="failed" checked>' in html
    assert '<input type="checkbox" name="state" value="sent">' in html
    assert '<input type="text" name="older_than" value="900" size="6">' in html


def test_tasks_bad_filter_answers_400_with_the_form(server: Any) -> None:
    """A bad filter answers 400 naming it, escaped, above no table."""
    html = page(server, "/tasks?limit=%3Cb%3E", 400)
    expected = "limit: expected a whole number from 1 to 1000, got &#39;&lt;b&gt;&#39;"
    assert f'<p class="error">{expected}</p>' in html
    assert '<input type="text" name="limit" value="&lt;b&gt;" size="5">' in html
    assert "<table>" not in html


def test_task_page_shows_every_field(server: Any) -> None:
    """/tasks/<id> shows the fields, the exception message, traceback in <pre> and history."""
    html = page(server, "/tasks/t-fail")
    assert "<h1>Task <code>t-fail</code></h1>" in html
    assert '<tr><th>state</th><td class="state-failed">failed</td></tr>' in html
    assert f"<tr><th>worker</th><td>{W1}</td></tr>" in html
    assert f"<tr><th>finished</th><td>{format_time(T0 + 12)}</td></tr>" in html
    assert "<tr><th>runtime</th><td>1 s</td></tr>" in html
    assert "<tr><th>exception message</th><td>bad input</td></tr>" in html
    assert (
        "<pre>Traceback (most recent call last):\n  ...\nValueError(&#39;bad input&#39;)\n</pre>"
        in html
    )
    assert '<tr><th>root</th><td><a href="../tasks/t-fail">t-fail</a></td></tr>' in html
    history = re.findall(r"<tr><td>(task-\w+)</td><td>([^<]+)</td><td>([^<]+)</td></tr>", html)
    assert history == [
        ("task-received", format_time(T0 + 10), W1),
        ("task-started", format_time(T0 + 11), W1),
        ("task-failed", format_time(T0 + 12), W1),
    ]
    assert "<th>args</th>" not in html


def test_task_page_progress(server: Any) -> None:
    """Progress reads current/total and the message, with when it arrived."""
    html = page(server, "/tasks/t-slow")
    updated = format_time(T0 + 500)
    assert f'<td>3/10 resizing <span class="muted">(updated {updated})</span></td>' in html


def test_unknown_task_page_answers_404(server: Any) -> None:
    """An unknown id answers a 404 page naming it, escaped."""
    html = page(server, "/tasks/%3Ci%3Enope", 404)
    assert '<p class="error">No task &#39;&lt;i&gt;nope&#39; is known.</p>' in html


def test_workers_page(server: Any) -> None:
    """/workers shows liveness, pool busy/size and the queues inspect saw, linked to /tasks."""
    html = page(server, "/workers")
    assert '<td><a href="tasks?worker=celery%40w1">celery@w1</a></td>' in html
    assert '<td class="num">0 / 4</td>' in html
    assert '<td class="num">2 / -</td>' in html
    assert '<a href="tasks?queue=celery">celery</a>, <a href="tasks?queue=fast">fast</a>' in html


def test_queues_page(server: Any) -> None:
    """/queues shows each queue's figures and the time of the poll."""
    html = page(server, "/queues")
    assert f"As the broker answered at {format_time(NOW)}" in html
    assert (
        '<td><a href="tasks?queue=celery">celery</a></td>\n<td class="num">5</td>\n'
        '<td class="num">-</td>\n<td class="num">1</td>\n<td class="num">42 s</td>'
    ) in html


def test_failures_page(server: Any) -> None:
    """/failures groups failures and links the last task; since narrows it."""
    html = page(server, "/failures")
    assert '<td><a href="tasks?name=app.fail&amp;state=failed">app.fail</a></td>' in html
    assert '<td class="id"><a href="tasks/t-fail">t-fail</a></td>' in html
    assert "<td>bad input</td>" in html
    assert "No task failed in that time." in page(server, "/failures?since=900")
    assert "since: expected" in page(server, "/failures?since=x", 400)


def test_refresh_only_when_asked(server: Any) -> None:
    """?refresh=1 adds the meta refresh and ticks the box; without it there is none."""
    html = page(server, "/workers?refresh=1")
    assert '<meta http-equiv="refresh" content="10">' in html
    assert '<input type="checkbox" name="refresh" value="1" checked>' in html
    assert 'http-equiv="refresh"' not in page(server, "/workers")


def test_unknown_parameter_on_a_page_answers_400(server: Any) -> None:
    """A parameter a page does not take answers 400 naming it."""
    assert "unknown parameter &#39;x&#39;" in page(server, "/queues?x=1", 400)


@pytest.mark.parametrize(
    "path",
    ["/tasks", f"/tasks/{QUOTED_ID}", "/workers", "/queues", "/failures", "/tasks?state=failed"],
)
def test_hostile_text_is_escaped_everywhere(hostile: Any, path: str) -> None:
    """Markup in names, ids, args, messages, tracebacks, hostnames and queues is escaped."""
    html = page(hostile, path)
    assert ESCAPED in html
    assert "<script" not in html
    assert "<img" not in html
    assert "onerror=alert(1)>" not in html


def test_hostile_task_page_escapes_each_field(hostile: Any) -> None:
    """The hostile task's page escapes its name, queue, worker, args, message and traceback."""
    html = page(hostile, f"/tasks/{QUOTED_ID}")
    for field in ("name", "queue", "worker", "exception message"):
        assert f"<tr><th>{field}</th><td>{ESCAPED}</td></tr>" in html
    assert f"<tr><th>args</th><td><code>(&#39;{ESCAPED}&#39;,)</code></td></tr>" in html
    assert f"<pre>Traceback\n{ESCAPED}\n</pre>" in html
    assert f"<td>1/2 {ESCAPED} " in html


def test_links_quote_task_ids(hostile: Any) -> None:
    """Links to a task quote its id as one path segment, and that link finds the task."""
    html = page(hostile, "/tasks")
    assert f'<a href="tasks/{QUOTED_ID}">' in html
    assert QUOTED_ID == "%3Cscript%3Ealert%281%29%3C%2Fscript%3E%2Fx%3Fy%23z%25"
    detail = page(hostile, f"/tasks/{QUOTED_ID}")
    assert f'<a href="../tasks/{QUOTED_ID}">' in detail
    assert (
        f"<h1>Task <code>{HOSTILE_ID.replace('<', '&lt;').replace('>', '&gt;')}</code></h1>"
        in detail
    )
    assert f'<a href="tasks?worker={quote(HOSTILE, safe="")}">' in page(hostile, "/workers")


def test_format_helpers() -> None:
    """Times read as UTC; durations in s, min or h; unknown as -."""
    assert format_time(T0) == "2023-11-14 22:13:20 UTC"
    assert format_time(None) == format_seconds(None) == "-"
    assert [format_seconds(v) for v in (0.5, 12.4, 90, 7200)] == [
        "0.5 s",
        "12 s",
        "1.5 min",
        "2.0 h",
    ]


def test_jinja2_is_loaded_by_the_first_page_only() -> None:
    """The daemon starts without Jinja2 in memory; rendering a page loads it."""
    code = (
        "import sys, celery_exporter.daemon\n"
        "from celery_exporter.web.pages import Templates\n"
        "print('jinja2' in sys.modules)\n"
        "context = {'root': '', 'page': 'tasks', 'states': (), 'show_args': False,\n"
        "           'refresh': False, 'refresh_seconds': 5, 'now': 0.0, 'error': 'x'}\n"
        "assert 'x' in Templates().render('error.html', context)\n"
        "print('jinja2' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["False", "True"]
