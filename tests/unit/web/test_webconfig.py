"""--web.config.file: the toolkit YAML, TLS with a real client, basic auth, and reloading."""

from __future__ import annotations

import base64
import http.client
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from celery_exporter.config import load
from celery_exporter.web import webconfig
from celery_exporter.web.health import HealthView
from celery_exporter.web.server import MetricsServer
from celery_exporter.web.webconfig import WebConfigError, WebConfigWatcher
from tests.tls import Pki, bcrypt_hash, make_pki

READY = HealthView(broker_up=True, consuming=True, reconnects=0, reason="")
PASSWORD = "right horse battery"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("demo_things", "Things counted by the test.", registry=registry).inc(3)
    return registry


def write_config(path: Path, pki: Pki, **tls: str) -> Path:
    """Write a web config with TLS (overridable fields) and the user prometheus."""
    fields = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key), **tls}
    lines = ["tls_server_config:"] + [f"  {k}: {v}" for k, v in fields.items() if v]
    lines += ["basic_auth_users:", f"  prometheus: {bcrypt_hash(PASSWORD)}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def serve(
    path: Path, registry: CollectorRegistry, healthz_open: bool = False
) -> tuple[MetricsServer, WebConfigWatcher]:
    watcher = WebConfigWatcher(path, interval=0.0)
    server = MetricsServer(
        "127.0.0.1", 0, registry, lambda: READY, web=watcher, healthz_open=healthz_open
    )
    server.start()
    return server, watcher


@pytest.fixture
def server(
    tmp_path: Path, pki: Pki, registry: CollectorRegistry
) -> Iterator[tuple[MetricsServer, Path]]:
    path = write_config(tmp_path / "web.yml", pki)
    srv, _ = serve(path, registry)
    yield srv, path
    srv.stop()


def client_context(
    pki: Pki, cert: bool = False, max_version: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert:
        context.load_cert_chain(pki.client_cert, pki.client_key)
    if max_version is not None:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = max_version
    return context


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def request(
    port: int,
    context: ssl.SSLContext,
    path: str = "/metrics",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes, bytes]:
    """GET over TLS; return status, headers, body and the server certificate (DER)."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        conn.connect()
        assert conn.sock is not None
        der = conn.sock.getpeercert(binary_form=True) or b""
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read(), der
    finally:
        conn.close()


def test_right_password_200(server: tuple[MetricsServer, Path], pki: Pki) -> None:
    """A TLS client with the right user and password gets the metrics."""
    status, _, body, _ = request(
        server[0].port, client_context(pki), headers=basic("prometheus", PASSWORD)
    )
    assert status == 200
    assert b"demo_things_total 3.0" in body


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic("prometheus", "wrong"),
        basic("nobody", PASSWORD),
        {"Authorization": "Bearer abc"},
        {"Authorization": "Basic !!!notbase64"},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
    ],
    ids=["none", "wrong-password", "unknown-user", "bearer", "bad-base64", "no-colon"],
)
def test_without_valid_credentials_401(
    server: tuple[MetricsServer, Path], pki: Pki, headers: dict[str, str]
) -> None:
    """No, wrong or unusable credentials get 401 with a Basic challenge and no metrics."""
    for path in ("/metrics", "/healthz", "/readyz", "/"):
        status, got, body, _ = request(server[0].port, client_context(pki), path, headers)
        assert (status, body) == (401, b"unauthorized\n")
        assert got["WWW-Authenticate"] == 'Basic realm="celery-exporter", charset="UTF-8"'


def test_healthz_open_flag(tmp_path: Path, pki: Pki, registry: CollectorRegistry) -> None:
    """With healthz_open, /healthz answers without credentials while /metrics still needs them."""
    srv, _ = serve(write_config(tmp_path / "web.yml", pki), registry, healthz_open=True)
    try:
        assert request(srv.port, client_context(pki), "/healthz")[:3:2] == (200, b"ok\n")
        assert request(srv.port, client_context(pki), "/metrics")[0] == 401
        assert request(srv.port, client_context(pki), "/readyz")[0] == 401
    finally:
        srv.stop()


def test_plain_http_fails_on_tls_port(server: tuple[MetricsServer, Path]) -> None:
    """A plain HTTP request to the TLS port gets no HTTP answer."""
    conn = http.client.HTTPConnection("127.0.0.1", server[0].port, timeout=10)
    try:
        with pytest.raises((http.client.HTTPException, OSError)):
            conn.request("GET", "/metrics")
            conn.getresponse()
    finally:
        conn.close()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls11_refused(server: tuple[MetricsServer, Path], pki: Pki) -> None:
    """A client that speaks at most TLS 1.1 fails the handshake."""
    with pytest.raises(ssl.SSLError):
        request(server[0].port, client_context(pki, max_version=ssl.TLSVersion.TLSv1_1))


def test_tls12_accepted_unless_min_tls13(
    tmp_path: Path, pki: Pki, registry: CollectorRegistry
) -> None:
    """TLS 1.2 works by default; with min_version TLS13 it fails the handshake."""
    headers = basic("prometheus", PASSWORD)
    srv, _ = serve(write_config(tmp_path / "a.yml", pki), registry)
    try:
        context = client_context(pki, max_version=ssl.TLSVersion.TLSv1_2)
        assert request(srv.port, context, headers=headers)[0] == 200
    finally:
        srv.stop()
    srv, _ = serve(write_config(tmp_path / "b.yml", pki, min_version="TLS13"), registry)
    try:
        with pytest.raises(ssl.SSLError):
            request(srv.port, client_context(pki, max_version=ssl.TLSVersion.TLSv1_2))
        assert request(srv.port, client_context(pki), headers=headers)[0] == 200
    finally:
        srv.stop()


def test_client_certificate_required(tmp_path: Path, pki: Pki, registry: CollectorRegistry) -> None:
    """RequireAndVerifyClientCert: no client certificate fails the handshake, one from the CA works."""
    path = write_config(
        tmp_path / "web.yml", pki, client_ca_file=str(pki.ca),
        client_auth_type="RequireAndVerifyClientCert",
    )  # fmt: skip
    srv, _ = serve(path, registry)
    try:
        with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected)):
            request(srv.port, client_context(pki), headers=basic("prometheus", PASSWORD))
        status, _, _, _ = request(
            srv.port, client_context(pki, cert=True), headers=basic("prometheus", PASSWORD)
        )
        assert status == 200
    finally:
        srv.stop()


def test_users_and_certificate_reloaded(
    server: tuple[MetricsServer, Path], pki: Pki, tmp_path: Path
) -> None:
    """A changed file takes effect on the next request: new password, new certificate, no restart."""
    srv, path = server
    first = request(srv.port, client_context(pki), headers=basic("prometheus", PASSWORD))
    assert first[0] == 200
    assert first[3] == der(pki.server_cert)

    text = path.read_text().replace(str(pki.server_cert), str(pki.other_cert))
    text = text.replace(str(pki.server_key), str(pki.other_key))
    path.write_text(
        text.split("basic_auth_users:")[0] + f"basic_auth_users:\n  ops: {bcrypt_hash('new')}\n"
    )
    assert request(srv.port, client_context(pki), headers=basic("prometheus", PASSWORD))[0] == 401
    second = request(srv.port, client_context(pki), headers=basic("ops", "new"))
    assert second[0] == 200
    assert second[3] == der(pki.other_cert)


def test_bad_reload_keeps_last_good(server: tuple[MetricsServer, Path], pki: Pki) -> None:
    """A file that becomes invalid is logged and ignored: the last good users and TLS stay."""
    srv, path = server
    watcher = srv.web
    assert watcher is not None
    path.write_text("tls_server_config: [not, a, mapping]\n")
    assert request(srv.port, client_context(pki), headers=basic("prometheus", PASSWORD))[0] == 200
    assert (watcher.reloads, watcher.reload_failures) == (0, 1)
    assert request(srv.port, client_context(pki))[0] == 401


def test_certificate_file_change_reloads(server: tuple[MetricsServer, Path], pki: Pki) -> None:
    """Replacing the certificate and key files (same paths in the YAML) is picked up."""
    srv, _ = server
    original = (pki.server_cert.read_bytes(), pki.server_key.read_bytes())
    try:
        pki.server_cert.write_bytes(pki.other_cert.read_bytes())
        pki.server_key.write_bytes(pki.other_key.read_bytes())
        got = request(srv.port, client_context(pki), headers=basic("prometheus", PASSWORD))
        assert got[0] == 200
        assert got[3] == der(pki.other_cert)
    finally:
        pki.server_cert.write_bytes(original[0])
        pki.server_key.write_bytes(original[1])


def der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def test_unknown_user_checks_a_dummy_hash_of_the_same_cost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown user costs one bcrypt check against a dummy hash with the users' cost."""
    path = tmp_path / "web.yml"
    path.write_text(
        f"basic_auth_users:\n  a: {bcrypt_hash('pw', rounds=5)}\n  b: {bcrypt_hash('pw', rounds=6)}\n"
    )
    config = webconfig.load(path)
    calls: list[bytes] = []
    real = webconfig.bcrypt.checkpw

    def spy(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return bool(real(password, hashed))

    monkeypatch.setattr(webconfig.bcrypt, "checkpw", spy)
    assert config.check("nobody", "pw") is False
    assert config.check("a", "pw") is True
    assert config.check("b", "wrong") is False
    assert [h[:7] for h in calls] == [b"$2b$06$", b"$2b$05$", b"$2b$06$"]
    assert calls[0] == config.dummy_hash


def test_no_file_means_open_plain_http(registry: CollectorRegistry) -> None:
    """Without a web config the server speaks plain HTTP and needs no credentials."""
    srv = MetricsServer("127.0.0.1", 0, registry, lambda: READY)
    srv.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        conn.request("GET", "/metrics")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        srv.stop()


def test_auth_without_tls_and_headers(tmp_path: Path, registry: CollectorRegistry) -> None:
    """basic_auth_users alone works on plain HTTP; http_server_config.headers are added."""
    path = tmp_path / "web.yml"
    path.write_text(
        f"basic_auth_users:\n  u: {bcrypt_hash('p')}\n"
        "http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
    )
    srv, _ = serve(path, registry)
    try:
        for headers, status in (({}, 401), (basic("u", "p"), 200)):
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
            conn.request("GET", "/metrics", headers=headers)
            response = conn.getresponse()
            assert response.status == status
            assert response.getheader("X-Frame-Options") == "deny"
            conn.close()
    finally:
        srv.stop()


# -- invalid files --------------------------------------------------------------------------------

HASH = "$2b$04$" + "a" * 53


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: [", "is not valid YAML"),
        ("- 1\n", "expected a mapping with keys tls_server_config, http_server_config, basic_auth_users"),
        ("tls_config: {}\n", "unknown field tls_config (allowed: tls_server_config, http_server_config, basic_auth_users)"),
        ("tls_server_config: {cert_file: CERT}\n", "tls_server_config needs both cert_file and key_file"),
        ("tls_server_config: {cert_file: CERT, key_file: KEY, min_version: TLS11}\n",
         "tls_server_config.min_version: 'TLS11' is not supported; expected one of TLS12, TLS13"),
        ("tls_server_config: {cert_file: CERT, key_file: KEY, min_version: TLS13, max_version: TLS12}\n",
         "tls_server_config: min_version is above max_version"),
        ("tls_server_config: {cert_file: CERT, key_file: KEY, client_auth_type: Sometimes}\n",
         "tls_server_config.client_auth_type: 'Sometimes' is not one of NoClientCert, "
         "RequestClientCert, VerifyClientCertIfGiven, RequireAnyClientCert, RequireAndVerifyClientCert"),
        ("tls_server_config: {cert_file: CERT, key_file: KEY, client_auth_type: RequireAndVerifyClientCert}\n",
         "tls_server_config.client_auth_type RequireAndVerifyClientCert needs client_ca_file"),
        ("tls_server_config: {cert_file: CERT, key_file: KEY, client_ca_file: CA}\n",
         "tls_server_config.client_ca_file is set but client_auth_type is NoClientCert"),
        ("tls_server_config: {cert_file: CERT, key_file: CERT}\n", "cannot load cert_file"),
        ("tls_server_config: {cert_file: CERT, key_file: KEY, cipher_suites: []}\n",
         "unknown field tls_server_config.cipher_suites"),
        ("basic_auth_users: {u: plain}\n", "basic_auth_users.u: expected a bcrypt hash"),
        (f"basic_auth_users: {{'a:b': '{HASH}'}}\n", "basic_auth_users: invalid user name 'a:b'"),
        ("basic_auth_users: [u]\n", "basic_auth_users must be a mapping of user name to bcrypt hash"),
        ("http_server_config: {headers: {A: [1]}}\n", "http_server_config.headers must map header names to strings"),
    ],
)  # fmt: skip
def test_invalid_file_rejected(tmp_path: Path, pki: Pki, text: str, message: str) -> None:
    """Each kind of mistake raises WebConfigError with a message saying what is wrong."""
    path = tmp_path / "web.yml"
    text = text.replace("CERT", str(pki.server_cert)).replace("KEY", str(pki.server_key))
    path.write_text(text.replace("CA", str(pki.ca)))
    with pytest.raises(WebConfigError) as caught:
        webconfig.load(path)
    assert message in str(caught.value)


def test_relative_paths_from_the_file(tmp_path: Path, pki: Pki) -> None:
    """cert_file and key_file relative to the YAML file's directory load."""
    path = pki.ca.parent / "relative.yml"
    path.write_text("tls_server_config: {cert_file: server.crt, key_file: server.key}\n")
    config = webconfig.load(path)
    assert isinstance(config.ssl_context, ssl.SSLContext)
    assert config.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert config.ssl_context.verify_mode == ssl.CERT_NONE
    assert config.users == {}


def test_empty_file_is_no_tls_no_auth(tmp_path: Path) -> None:
    """An empty file turns on nothing: no TLS and no users."""
    path = tmp_path / "web.yml"
    path.write_text("")
    config = webconfig.load(path)
    assert (config.ssl_context, dict(config.users), config.auth_required) == (None, {}, False)


def test_bad_file_exits_2_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--web.config.file with an unusable file exits 2, naming the flag, the value and the fault."""
    path = tmp_path / "web.yml"
    path.write_text("basic_auth_users: {u: plain}\n")
    with pytest.raises(SystemExit) as caught:
        load(["--web.config.file", str(path)], {})
    assert caught.value.code == 2
    line = capsys.readouterr().err.rstrip().splitlines()[-1]
    assert line == (
        f"celery-exporter: error: --web.config.file: invalid value {str(path)!r}: "
        "basic_auth_users.u: expected a bcrypt hash"
    )


def test_flags_reach_config(tmp_path: Path) -> None:
    """--web.config.file and --web.healthz-unauthenticated (or their variables) reach the Config."""
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users: {{u: '{bcrypt_hash('p')}'}}\n")
    cfg = load(["--web.config.file", str(path), "--web.healthz-unauthenticated"], {})
    assert (cfg.web_config_file, cfg.web_healthz_unauthenticated) == (str(path), True)
    env: dict[str, Any] = {
        "CELERY_EXPORTER_WEB_CONFIG_FILE": str(path),
        "CELERY_EXPORTER_WEB_HEALTHZ_UNAUTHENTICATED": "false",
    }
    cfg = load([], env)
    assert (cfg.web_config_file, cfg.web_healthz_unauthenticated) == (str(path), False)
