"""Loading a loopback URL in headless Chromium and reading the DOM its scripts left.

:func:`dump_dom` runs ``chromium --headless --dump-dom`` with a throw-away profile, no network
beyond loopback and a virtual time budget, so scripts and event handlers a page would run have
run before the DOM is printed. :func:`parse_dom` reads that DOM into its elements. Reads
``CHROMIUM`` (the browser to run, when it is not ``chromium`` on PATH).
"""

from __future__ import annotations

import contextlib
import html.parser
import ipaddress
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.parse
from dataclasses import dataclass, field

from tests.support.scrape import fetch

CHROMIUM_MISSING = (
    "chromium was not found on PATH. Install it (Debian/Ubuntu: sudo apt-get install "
    "chromium), or run 'make test', which installs it."
)
#: Milliseconds of virtual time a page gets to run its scripts and timers before the dump.
VIRTUAL_TIME_BUDGET_MS = 2000
#: Seconds of real time Chromium may take in all (a loaded 2-core machine starts it slowly).
TIMEOUT = 60.0
#: How many lines of Chromium's stderr an error shows.
STDERR_LINES = 30
#: Flags for a quiet, repeatable run: no first-run pages, extensions, sync, background
#: networking or proxies, and no name resolution but for loopback.
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--no-proxy-server",
    "--mute-audio",
    "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
    "--window-size=1280,1024",
)
#: Lines of Chromium's stderr that say nothing about the page (no D-Bus in containers).
_NOISE = ("dbus/", "unexpected operator")


class BrowserError(RuntimeError):
    """Chromium could not load the page; the message ends with its stderr."""


def chromium() -> str:
    """The Chromium binary to run; raise :class:`BrowserError` if there is none."""
    binary = shutil.which(os.environ.get("CHROMIUM", "chromium"))
    if binary is None:
        raise BrowserError(CHROMIUM_MISSING)
    return binary


def _check_loopback(url: str) -> None:
    """Raise ValueError unless ``url`` is http(s) on 127.0.0.1 or ::1."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.hostname is None:
        raise ValueError(f"not an http(s) URL: {url!r}")
    try:
        loopback = ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"only loopback addresses (127.0.0.1, ::1) may be loaded: {url!r}")


def _stderr_tail(stderr: bytes, lines: int = STDERR_LINES) -> str:
    """The last ``lines`` lines of Chromium's stderr that are not noise."""
    kept = [
        line
        for line in stderr.decode(errors="replace").splitlines()
        if line.strip() and not any(n in line for n in _NOISE)
    ]
    return "\n".join(kept[-lines:]) or "(nothing)"


def dump_dom(
    url: str,
    timeout: float = TIMEOUT,
    budget_ms: int = VIRTUAL_TIME_BUDGET_MS,
    status: int | None = 200,
) -> str:
    """Load a loopback ``url`` in headless Chromium; return the DOM once its scripts ran.

    Unless ``status`` is None, the URL is first fetched to check it answers that status, as
    Chromium renders an error page like any other.
    """
    _check_loopback(url)
    binary = chromium()
    if status is not None:
        try:
            got, body = fetch(url, timeout=min(timeout, 30.0))
        except OSError as exc:
            raise BrowserError(f"GET {url} failed: {exc}") from exc
        if got != status:
            raise BrowserError(f"GET {url} answered {got}, not {status}: {body[:500]!r}")
    profile = tempfile.mkdtemp(prefix="celery-exporter-chromium-")
    args = [
        binary,
        *_FLAGS,
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={budget_ms}",
        "--dump-dom",
        url,
    ]
    env = {**os.environ, "HOME": profile, "DBUS_SESSION_BUS_ADDRESS": "disabled:"}
    try:
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            raise BrowserError(
                f"chromium did not dump {url} within {timeout}s; its stderr:\n{_stderr_tail(err)}"
            ) from None
        finally:
            # Chromium's helpers (zygote, renderers) share its process group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    dom = out.decode(errors="replace")
    failed = b"Page load failed" in err
    if process.returncode != 0 or failed or not dom.strip():
        raise BrowserError(
            f"chromium could not load {url} (exit status {process.returncode}); "
            f"its stderr:\n{_stderr_tail(err)}"
        )
    return dom


@dataclass
class Element:
    """One element of a parsed DOM: its tag, attributes and text (its descendants' too)."""

    tag: str
    attrs: dict[str, str | None]
    text: list[str] = field(default_factory=list)

    @property
    def content(self) -> str:
        """All the text inside the element, as ``textContent`` reads it."""
        return "".join(self.text)


@dataclass
class Dom:
    """A DOM as Chromium dumped it: every element in document order, and its text (no scripts)."""

    source: str
    elements: list[Element]
    text: str

    def find(self, tag: str) -> list[Element]:
        """The elements named ``tag``."""
        return [e for e in self.elements if e.tag == tag]

    def first(self, tag: str) -> Element:
        """The first element named ``tag``; raise AssertionError if there is none."""
        found = self.find(tag)
        assert found, f"no <{tag}> in the DOM:\n{self.source[:3000]}"
        return found[0]

    def with_attr(self, name: str) -> list[Element]:
        """The elements that carry attribute ``name``."""
        return [e for e in self.elements if name in e.attrs]


#: Elements that have no end tag.
_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta"})
_VOID |= {"param", "source", "track", "wbr"}


class _Collector(html.parser.HTMLParser):
    """Collects the elements and text of an HTML document."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self.open: list[Element] = []
        self.texts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, dict(attrs))
        self.elements.append(element)
        if tag not in _VOID:
            self.open.append(element)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.open) - 1, -1, -1):
            if self.open[i].tag == tag:
                del self.open[i:]
                break

    def handle_data(self, data: str) -> None:
        for element in self.open:
            element.text.append(data)
        if not (self.open and self.open[-1].tag in ("script", "style")):
            self.texts.append(data)


def parse_dom(source: str) -> Dom:
    """Parse what :func:`dump_dom` returned."""
    collector = _Collector()
    collector.feed(source)
    collector.close()
    return Dom(source, collector.elements, "".join(collector.texts))
