"""TLS pieces without servers: the local CA and its renewal, the URLs with TLS, pika's parameters, the settings,
a worker's /metrics over HTTPS (tools/infra/tls.py, common/tls.py); the whole system: tests/e2e/test_tls_pipeline.py.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from common.health import serve_process_endpoints
from common.settings import ConfigurationError, TlsSettings, load_settings
from common.tls import client_context, pika_broker_options, server_context
from tools.infra import tls
from tools.infra.settings import ServerSettings, with_path


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str) -> None:
    """A TLS handshake in memory between the two contexts (raises what the client's checks raise)."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_end = client.wrap_bio(to_client, to_server, server_hostname=hostname)
    from_client, from_server = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_end = server.wrap_bio(from_client, from_server, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, end in (("client", client_end), ("server", server_end)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        from_client.write(to_server.read())
        to_client.write(from_server.read())
        if all(done.values()):
            return
    raise AssertionError("the handshake did not complete")


def _settings(data_dir: Path, *, on: bool) -> ServerSettings:
    return ServerSettings(
        data_dir=data_dir,
        pg_port=54460,
        amqp_port=56760,
        management_port=15760,
        dist_port=25760,
        nodename="x@localhost",
        timeout=5,
        tls=on,
    )


def _names(path: Path) -> set[str]:
    san = x509.load_pem_x509_certificate(path.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    return set(san.value.get_values_for_type(x509.DNSName)) | {
        str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)
    }


def test_the_ca_and_server_certificate_are_made_once_with_private_keys(tmp_path: Path) -> None:
    made = tls.ensure_certificates(tmp_path)
    files = tls.files(tmp_path)
    assert len(made) == 2
    assert {path.name for path in files.folder.iterdir()} >= {"ca.pem", "ca-key.pem", "server.pem", "server-key.pem"}
    for key in (files.ca_key, files.server_key):
        assert key.stat().st_mode & 0o777 == 0o600
    assert _names(files.server_cert) == {"localhost", "127.0.0.1", "::1"}
    certificate = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    certificate.verify_directly_issued_by(x509.load_pem_x509_certificate(files.ca_cert.read_bytes()))
    # A client trusting the CA completes a handshake with a server presenting them, by IP and by DNS name.
    server = server_context(TlsSettings(cert_file=files.server_cert, key_file=files.server_key))
    client = client_context(TlsSettings(ca_file=files.ca_cert))
    for name in ("127.0.0.1", "localhost"):
        _handshake(server, client, name)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server, client, "example.com")

    before = {path: path.read_bytes() for path in files.folder.glob("*.pem")}
    assert tls.ensure_certificates(tmp_path) == []  # valid: kept as they are
    assert {path: path.read_bytes() for path in files.folder.glob("*.pem")} == before


def test_a_certificate_near_its_end_is_made_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tls.ensure_certificates(tmp_path)
    files = tls.files(tmp_path)
    ca_before, server_before = files.ca_cert.read_bytes(), files.server_cert.read_bytes()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=tls.SERVER_DAYS) - tls.RENEW_BEFORE + dt.timedelta(days=1)
    monkeypatch.setattr(tls, "_now", lambda: later)
    made = tls.ensure_certificates(tmp_path)
    assert [line.split(" ")[2] for line in made] == ["server"]  # the server certificate only; the CA lasts
    assert files.ca_cert.read_bytes() == ca_before and files.server_cert.read_bytes() != server_before

    much_later = dt.datetime.now(dt.UTC) + dt.timedelta(days=tls.CA_DAYS)
    monkeypatch.setattr(tls, "_now", lambda: much_later)
    assert len(tls.ensure_certificates(tmp_path)) == 2  # a new CA means a new server certificate too
    assert files.ca_cert.read_bytes() != ca_before


def test_the_mode_is_remembered_and_names_tls_urls(tmp_path: Path) -> None:
    assert not tls.enabled(tmp_path)
    tls.remember(tmp_path, True)
    assert tls.enabled(tmp_path)
    urls = _settings(tmp_path, on=True).urls
    ca = str(tls.files(tmp_path).ca_cert)
    assert urls.database_url.endswith(f"/oms?sslmode=verify-full&sslrootcert={ca}")
    assert urls.amqp_url == f"amqps://guest:guest@127.0.0.1:56760/?cafile={ca}"
    assert urls.management_url == "https://127.0.0.1:15760/"
    # A database or vhost of the same server keeps the TLS parameters.
    assert with_path(urls.database_url, "/other").endswith(f"/other?sslmode=verify-full&sslrootcert={ca}")
    assert with_path(urls.amqp_url, "/vhost").endswith(f"/vhost?cafile={ca}")
    plain = _settings(tmp_path, on=False).urls
    assert plain.database_url.endswith("/oms") and plain.amqp_url.startswith("amqp://")
    tls.remember(tmp_path, False)
    assert not tls.enabled(tmp_path)


def test_pika_gets_the_urls_ca_and_checks_the_host_name(tmp_path: Path) -> None:
    plain = "amqp://u:p@127.0.0.1:5672/v"
    assert pika_broker_options(plain) == {"url": plain}  # plaintext: as before
    tls.ensure_certificates(tmp_path)
    ca = tls.files(tmp_path).ca_cert
    options = pika_broker_options(f"amqps://u:p@127.0.0.1:56760/v?cafile={ca}&heartbeat=30")
    (parameters,) = options["parameters"]
    assert (parameters["host"], parameters["port"], parameters["virtual_host"]) == ("127.0.0.1", 56760, "v")
    assert parameters["heartbeat"] == 30  # pika's own URL parameters still apply
    ssl_options = parameters["ssl_options"]
    assert ssl_options.server_hostname == "127.0.0.1"
    assert ssl_options.context.verify_mode == ssl.CERT_REQUIRED and ssl_options.context.check_hostname


def test_a_tls_listener_without_its_certificate_stops_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMS_REST_TLS", "true")
    monkeypatch.delenv("OMS_TLS_CERT_FILE", raising=False)
    with pytest.raises(ConfigurationError, match="OMS_TLS_CERT_FILE"):
        load_settings()
    monkeypatch.setenv("OMS_TLS_CERT_FILE", "/nonexistent/server.pem")
    monkeypatch.setenv("OMS_TLS_KEY_FILE", "/nonexistent/server-key.pem")
    with pytest.raises(ConfigurationError, match="OMS_TLS_CERT_FILE: .*cannot read"):
        load_settings()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_metrics_over_https_answer_a_client_trusting_the_ca_and_no_plaintext_one(tmp_path: Path) -> None:
    tls.ensure_certificates(tmp_path)
    files = tls.files(tmp_path)
    settings = TlsSettings(ca_file=files.ca_cert, cert_file=files.server_cert, key_file=files.server_key, metrics=True)
    port = _free_port()
    endpoints = serve_process_endpoints(port, "oms.test", {}, ssl_context=server_context(settings))
    assert endpoints is not None
    try:
        with urllib.request.urlopen(
            f"https://127.0.0.1:{port}/health/live", timeout=5, context=client_context(settings)
        ) as answer:
            assert answer.status == 200
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live", timeout=5)
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(
                f"https://127.0.0.1:{port}/health/live", timeout=5, context=ssl.create_default_context()
            )
    finally:
        endpoints.stop()
