"""The task view's pages in headless Chromium: they show the tasks and run no script of theirs.

Task names and exception messages come from the broker, so the workload
(:mod:`tests.support.taskview_stack`) has tasks named like HTML and a failure whose message is
HTML, each of which sets ``data-pwned`` on the page's body if it ever runs. Two pages of our
own, serving the same payloads unescaped, prove that the checks see such a page: one with no
Content-Security-Policy (the payload runs) and one with the exporter's (it runs not, but the
injected elements are there).
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from html import escape
from pathlib import Path

import pytest

from tests.support import taskapp
from tests.support.browser import Dom, chromium, dump_dom, parse_dom
from tests.support.taskview_stack import (
    FAIL_HTML,
    FAIL_VALUE,
    NAME_IMG,
    NAME_SCRIPT,
    Stack,
    Workload,
    page_path,
    run_workload,
    task_view_stack,
)

pytestmark = pytest.mark.integration

#: Every value a payload sets ``data-pwned`` to, should it run.
PAYLOAD_MARKS = {"1", "2", "3", "4"}
#: A Content-Security-Policy like the pages': no script at all.
NO_SCRIPT_POLICY = "default-src 'none'; style-src 'unsafe-inline'"


@pytest.fixture(scope="module")
def stack(logdir: Path) -> Iterator[Stack]:
    """A private Redis, the exporter and one worker; skipped when Chromium is missing."""
    try:
        chromium()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    with task_view_stack(logdir) as s:
        yield s


@pytest.fixture(scope="module")
def workload(stack: Stack) -> Workload:
    """The known workload, every task of it finished in the API's view."""
    return run_workload(stack)


def load(base: str, path: str) -> Dom:
    """The DOM of ``path`` once Chromium ran what the page would run."""
    return parse_dom(dump_dom(base + path))


def assert_inert(dom: Dom) -> None:
    """No payload ran and none became an element: no data-pwned, <img>, <script>, on* handler."""
    pwned = [e.tag for e in dom.with_attr("data-pwned")]
    assert pwned == [], f"a payload ran: data-pwned on {pwned}\n{dom.source[:3000]}"
    injected = [(e.tag, e.attrs) for e in dom.elements if e.tag in ("img", "script")]
    assert injected == [], f"injected elements: {injected}"
    handlers = [(e.tag, k) for e in dom.elements for k in e.attrs if k.startswith("on")]
    assert handlers == [], f"event handler attributes: {handlers}"


def cells(dom: Dom) -> list[str]:
    """The text of every table cell, whitespace trimmed."""
    return [e.content.strip() for e in dom.find("td")]


def test_tasks_page_shows_tasks_and_runs_no_payload(stack: Stack, workload: Workload) -> None:
    """/tasks lists the failed task's id and shows HTML task names as text, running none."""
    dom = load(stack.exporter.base, "/tasks")
    assert_inert(dom)
    shown = cells(dom)
    for task_id in workload.failed():
        assert task_id in shown
    assert shown.count(NAME_IMG) == 1
    assert shown.count(NAME_SCRIPT) == 1
    assert shown.count(FAIL_VALUE) == 2


def test_task_page_shows_html_message_as_text(stack: Stack, workload: Workload) -> None:
    """/tasks/<id> of the HTML-message failure shows its id, message and traceback as text."""
    task_id = workload.one(FAIL_HTML)
    dom = load(stack.exporter.base, f"/tasks/{task_id}")
    assert_inert(dom)
    assert dom.first("h1").content == f"Task {task_id}"
    assert taskapp.HTML_MESSAGE in cells(dom)
    (pre,) = dom.find("pre")
    assert pre.content.rstrip().endswith(f"ValueError: {taskapp.HTML_MESSAGE}")


@pytest.mark.parametrize("name", [NAME_IMG, NAME_SCRIPT], ids=["img", "script"])
def test_task_page_of_html_named_task(stack: Stack, workload: Workload, name: str) -> None:
    """/tasks/<id> of a task named like HTML shows the name as text and runs nothing."""
    dom = load(stack.exporter.base, f"/tasks/{workload.one(name)}")
    assert_inert(dom)
    assert name in cells(dom)


def test_filter_echo_and_failures_page_run_no_payload(stack: Stack, workload: Workload) -> None:
    """An HTML name in the filter form's query, and /failures, stay text."""
    dom = load(stack.exporter.base, page_path("/tasks", name=NAME_IMG))
    assert_inert(dom)
    assert [e.attrs.get("value") for e in dom.find("input") if e.attrs.get("name") == "name"] == [
        NAME_IMG
    ]
    assert cells(dom).count(NAME_IMG) == 1
    dom = load(stack.exporter.base, "/failures")
    assert_inert(dom)
    assert NAME_SCRIPT in cells(dom)
    assert FAIL_HTML in cells(dom)


class UnsafePage(http.server.BaseHTTPRequestHandler):
    """Serves the payloads unescaped, as a broken page would; ``/csp`` adds a no-script policy."""

    def do_GET(self) -> None:
        """Answer with the unsafe page."""
        body = (
            "<!doctype html><html><head><title>unsafe</title></head><body><table>"
            f"<tr><td>{NAME_IMG}</td></tr><tr><td>{NAME_SCRIPT}</td></tr>"
            f"<tr><td>{taskapp.HTML_MESSAGE}</td></tr>"
            f"<tr><td>{escape(NAME_IMG)}</td></tr>"
            "</table></body></html>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if self.path == "/csp":
            self.send_header("Content-Security-Policy", NO_SCRIPT_POLICY)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Keep quiet."""


@pytest.fixture
def unsafe_server() -> Iterator[str]:
    """A server of :class:`UnsafePage` on a free loopback port; its base URL."""
    try:
        chromium()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), UnsafePage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_checks_catch_an_unsafe_page(unsafe_server: str) -> None:
    """The same payloads unescaped run (data-pwned set) and leave elements the check sees."""
    dom = load(unsafe_server, "/")
    body = dom.first("body")
    assert body.attrs.get("data-pwned") in PAYLOAD_MARKS
    with pytest.raises(AssertionError, match="a payload ran"):
        assert_inert(dom)
    # The one escaped copy is the only one that reads as text.
    assert cells(dom).count(NAME_IMG) == 1


def test_checks_catch_an_unsafe_page_under_csp(unsafe_server: str) -> None:
    """Under a no-script policy the payloads do not run, but the injected elements are caught."""
    dom = load(unsafe_server, "/csp")
    assert dom.with_attr("data-pwned") == []
    with pytest.raises(AssertionError, match="injected elements"):
        assert_inert(dom)
    assert [e.attrs.get("onerror") for e in dom.find("img")] == [
        'document.body.setAttribute("data-pwned","1")',
        'document.body.setAttribute("data-pwned","3")',
    ]
    assert len(dom.find("script")) == 2
