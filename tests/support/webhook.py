"""An HTTP server on a loopback port that stands for Alertmanager's webhook receiver."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, NamedTuple

Json = dict[str, Any]


class Delivery(NamedTuple):
    """One POST the webhook received: its path and decoded JSON body."""

    path: str
    body: Json


class WebhookReceiver:
    """An HTTP server on a loopback port that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"undecodable": raw.decode(errors="replace")}
                with receiver._changed:
                    receiver.deliveries.append(Delivery(self.path, body))
                    receiver._changed.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Keep the test output quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> WebhookReceiver:
        """Serve on a thread of its own."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread.is_alive():
            self.server.shutdown()
            self._thread.join(10)
        self.server.server_close()

    def wait(self, match: Callable[[Delivery], bool], timeout: float) -> Delivery:
        """The first delivery ``match`` accepts, waiting up to ``timeout`` seconds for it."""
        with self._changed:
            found = self._changed.wait_for(
                lambda: next((d for d in self.deliveries if match(d)), None), timeout
            )
            if found is None:
                raise TimeoutError(
                    f"no matching webhook delivery in {timeout}s; got {self.deliveries}"
                )
            return found

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def firing_alerts(delivery: Delivery, alertname: str) -> Iterator[Json]:
    """The firing alerts named ``alertname`` in an Alertmanager webhook delivery."""
    for alert in delivery.body.get("alerts", []):
        labels = alert.get("labels", {})
        if alert.get("status") == "firing" and labels.get("alertname") == alertname:
            yield alert
