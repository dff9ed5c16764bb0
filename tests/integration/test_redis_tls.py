"""The exporter and a real TLS-only redis-server: events and queues over rediss://, refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support import free_port, total, value, wait_for
from tests.support.events import encode_envelope
from tests.support.launchers import REDIS_MISSING, terminate
from tests.support.processes import ExporterProcess
from tests.tls import Pki, make_pki

pytestmark = pytest.mark.integration

QUEUE = "tls-queue"
#: Events publish on the celeryev exchange of database 0 (kombu's fanout prefix).
CHANNEL = "/0.celeryev"


class TlsRedis:
    """A private redis-server listening only with TLS on 127.0.0.1 (and ::1 if there is one)."""

    def __init__(self, pki: Pki, directory: Path) -> None:
        self.pki = pki
        self.dir = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> TlsRedis:
        """Start it and wait until it answers PING over TLS; skip if it has no TLS support."""
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip(REDIS_MISSING)
        errors = self.dir / "stderr.log"
        args = [
            binary, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1", "-::1",
            "--tls-cert-file", str(self.pki.server_cert),
            "--tls-key-file", str(self.pki.server_key),
            "--tls-ca-cert-file", str(self.pki.ca), "--tls-auth-clients", "no",
            "--save", "", "--appendonly", "no", "--dir", str(self.dir),
        ]  # fmt: skip
        with errors.open("wb") as err:
            self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_for(self.answers, 15, 0.05, f"redis-server with TLS on port {self.port}")
        except RuntimeError as exc:
            if "Bad directive" in str(exc) and "tls" in str(exc):
                pytest.skip(f"this redis-server was built without TLS support: {exc}")
            raise
        return self

    def answers(self) -> bool:
        """Whether the server answers PING over verified TLS (raises if it exited)."""
        assert self.process is not None
        if self.process.poll() is not None:
            text = (self.dir / "stderr.log").read_text(errors="replace")
            raise RuntimeError(f"redis-server exited with {self.process.returncode}: {text}")
        try:
            return bool(self.client().ping())
        except redis.ConnectionError:
            return False

    def client(self) -> Any:
        """A redis-py client of database 0 that verifies the server with the test CA."""
        return redis.Redis(
            host="127.0.0.1", port=self.port, ssl=True, ssl_ca_certs=str(self.pki.ca),
            socket_timeout=5, socket_connect_timeout=5,
        )  # fmt: skip

    def stop(self) -> None:
        """Stop the server."""
        if self.process is not None:
            terminate(self.process, 10)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The CA and server certificate (for localhost and 127.0.0.1) the server uses."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_redis(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    """The TLS-only redis-server shared by this module's tests."""
    server = TlsRedis(pki, tmp_path_factory.mktemp("redis-tls"))
    try:
        yield server.start()
    finally:
        server.stop()


def ipv6_loopback() -> bool:
    """Whether this machine has ::1 to listen on."""
    try:
        free_port("::1")
    except OSError:
        return False
    return True


def start_exporter(url: str, ca: Path, logdir: Path, *options: str) -> ExporterProcess:
    """The exporter following ``url``, trusting ``ca``, measuring ``QUEUE`` every second."""
    return ExporterProcess(
        url, logdir,
        ["--broker-ssl-option", f"ssl_ca_certs={ca}", *options, "--queues", QUEUE,
         "--queue-interval", "1s", "--no-inspect-collector"],
    ).start()  # fmt: skip


def publish(server: TlsRedis, routing_key: str, event: dict[str, Any]) -> None:
    """Publish one event as a worker's kombu does, over TLS; fail unless someone listens."""
    envelope = encode_envelope(event, routing_key=routing_key, hostname=event["hostname"])
    assert server.client().publish(f"{CHANNEL}/{routing_key}", envelope) == 1


def test_events_and_queues_over_tls(tls_redis: TlsRedis, pki: Pki, logdir: Path) -> None:
    """With the right CA, rediss:// carries the event stream and the queue collector's reads."""
    host = f"celery@tls-{uuid.uuid4().hex[:6]}"
    want = {"broker_up": 1.0, "worker_up": 1.0, "received": 1.0, "queues_ok": 1.0, "length": 3.0}
    client = tls_redis.client()
    client.delete(QUEUE)
    client.lpush(QUEUE, *[json.dumps({"headers": {"id": str(i)}}) for i in range(3)])
    exporter = start_exporter(f"rediss://127.0.0.1:{tls_redis.port}/0", pki.ca, logdir)
    try:
        exporter.wait_ready()
        now = time.time()
        publish(tls_redis, "worker.heartbeat", {
            "type": "worker-heartbeat", "hostname": host, "freq": 2.0, "active": 0,
            "processed": 0, "timestamp": now, "utcoffset": 0, "pid": 1, "clock": 1,
        })  # fmt: skip
        publish(tls_redis, "task.received", {
            "type": "task-received", "uuid": str(uuid.uuid4()), "name": "tls.probe",
            "args": "()", "kwargs": "{}", "retries": 0, "eta": None, "expires": None,
            "hostname": host, "timestamp": now, "utcoffset": 0, "pid": 1, "clock": 2,
        })  # fmt: skip

        last: dict[str, float] = {}

        def counted() -> bool:
            samples = exporter.metrics()
            last.update({
                "broker_up": value(samples, "celery_exporter_broker_up"),
                "worker_up": value(samples, "celery_worker_up", hostname=host),
                "received": total(samples, "celery_task_received_total", name="tls.probe"),
                "queues_ok": value(samples, "celery_exporter_collector_success",
                                   collector="queues"),
                "length": value(samples, "celery_queue_length", queue_name=QUEUE),
            })  # fmt: skip
            return last == want

        try:
            wait_for(counted, 60, 0.2, "events and queue depth over TLS")
        except TimeoutError:
            raise AssertionError(f"got {last}, wanted {want}") from None
    finally:
        status = exporter.stop()
    assert status == 0


@pytest.mark.parametrize(
    ("host", "other_ca", "why"),
    [
        ("127.0.0.1", True, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"),
        ("[::1]", False, "certificate verify failed: IP address mismatch"),
    ],
    ids=["unknown-ca", "name-not-in-certificate"],
)
def test_unverifiable_server_is_refused_without_crash(
    tls_redis: TlsRedis,
    pki: Pki,
    logdir: Path,
    tmp_path: Path,
    host: str,
    other_ca: bool,
    why: str,
) -> None:
    """A server it cannot verify (other CA, name not in its certificate) is refused at error level, not fatal."""
    if host == "[::1]" and not ipv6_loopback():
        pytest.skip("this machine has no ::1 to reach the server by a name not in its certificate")
    ca = make_pki(tmp_path).ca if other_ca else pki.ca
    exporter = start_exporter(f"rediss://{host}:{tls_redis.port}/0", ca, logdir)
    try:

        def refused() -> bool:
            lines = [json.loads(line) for line in exporter.output().splitlines() if "{" in line]
            events = {(line.get("event"), line.get("level"), line.get("collector"))
                      for line in lines if why in str(line.get("error", ""))}  # fmt: skip
            return {
                ("broker_tls_failed", "error", None), ("collector_failed", "warning", "queues")
            } <= events  # fmt: skip

        wait_for(refused, 60, 0.2, f"the exporter to log {why!r} for both connections")
        samples = exporter.metrics()
        assert value(samples, "celery_exporter_broker_up") == 0
        assert value(samples, "celery_exporter_collector_success", collector="queues") == 0
        assert exporter.get("/readyz")[0] == 503
        assert exporter.get("/healthz")[0] == 200
        assert exporter.process is not None and exporter.process.poll() is None
        assert "Traceback" not in exporter.output()
    finally:
        status = exporter.stop()
    assert status == 0


def test_hostname_check_can_be_turned_off(tls_redis: TlsRedis, pki: Pki, logdir: Path) -> None:
    """ssl_check_hostname=false accepts the CA-signed certificate under a name it lacks."""
    if not ipv6_loopback():
        pytest.skip("this machine has no ::1 to reach the server by a name not in its certificate")
    exporter = start_exporter(
        f"rediss://[::1]:{tls_redis.port}/0", pki.ca, logdir,
        "--broker-ssl-option", "ssl_check_hostname=false",
    )  # fmt: skip
    try:

        def measured() -> bool:
            samples = exporter.metrics()
            return (
                value(samples, "celery_exporter_broker_up") == 1
                and value(samples, "celery_exporter_collector_success", collector="queues") == 1
            )

        wait_for(measured, 60, 0.2, "the exporter to read events and queues over [::1]")
    finally:
        status = exporter.stop()
    assert status == 0
