"""Task control's broker side on dead brokers: a refused connection is 503 at once, a silent
one 504 after the deadline, so an HTTP request never hangs."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from celery_exporter.broker import Broker, celery_app
from celery_exporter.broker.control import ControlError, Controller, StoredCall
from tests.support.launchers import free_port

CALL = StoredCall("t1", "FAILURE", "app.fail", [1], {}, "celery")


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()
    for conn in held:
        conn.close()


def controller(port: int, timeout: float = 10.0) -> Controller:
    """A controller whose broker and result backend are both at ``port``."""
    app = celery_app(Broker(f"redis://127.0.0.1:{port}/0"), "control-test")
    return Controller(app, f"redis://127.0.0.1:{port}/1", timeout=timeout)


def test_refused_connections_are_503_at_once() -> None:
    """Nothing listening: each call fails within a second with 503 and the broker's error."""
    port = free_port()
    control = controller(port)
    calls = {
        "revoke broadcast to the broker": lambda: control.revoke("t1", True, "SIGTERM"),
        "read from the result backend": lambda: control.stored_call("t1"),
        "send to the broker": lambda: control.send_again(CALL),
    }
    for what, call in calls.items():
        began = time.monotonic()
        with pytest.raises(ControlError) as caught:
            call()
        assert time.monotonic() - began < 1.0, what
        assert caught.value.status == 503
        assert str(caught.value).startswith(f"{what} failed: "), str(caught.value)
        assert f"127.0.0.1:{port}. Connection refused." in str(caught.value)


def test_silent_broker_is_504_after_the_deadline(silent_port: int) -> None:
    """A broker that accepts and never answers: 504 once the call's deadline has passed."""
    control = controller(silent_port, timeout=1.0)
    for what, call in (
        ("revoke broadcast to the broker", lambda: control.revoke("t1", False, "SIGKILL")),
        ("read from the result backend", lambda: control.stored_call("t1")),
    ):
        began = time.monotonic()
        with pytest.raises(ControlError) as caught:
            call()
        assert 1.0 <= time.monotonic() - began < 3.0, what
        assert (caught.value.status, str(caught.value)) == (504, f"{what}: no answer within 1 s")


def test_only_sigterm_and_sigkill() -> None:
    """Another signal is refused before anything is sent."""
    with pytest.raises(ValueError, match="signal must be one of SIGTERM, SIGKILL"):
        controller(free_port()).revoke("t1", True, "SIGHUP")


def test_without_result_backend_there_is_no_retry() -> None:
    """Without --result-backend retry cannot read stored calls: 503 naming the flag."""
    app = celery_app(Broker(f"redis://127.0.0.1:{free_port()}/0"), "control-test")
    control = Controller(app, None)
    assert not control.can_retry
    with pytest.raises(ControlError) as caught:
        control.stored_call("t1")
    assert (caught.value.status, str(caught.value)) == (503, "no --result-backend is given")


def test_an_unusable_result_backend_is_503_with_the_reason() -> None:
    """A backend URL the backend refuses: retry is offered, and a read says why it fails."""
    app = celery_app(Broker(f"redis://127.0.0.1:{free_port()}/0"), "control-test")
    control = Controller(app, "redis://127.0.0.1:1/notadb")
    assert control.can_retry
    with pytest.raises(ControlError) as caught:
        control.stored_call("t1")
    assert (caught.value.status, str(caught.value)) == (
        503,
        "--result-backend cannot be used: ValueError: invalid literal for int() with base 10: "
        "'notadb'",
    )
