"""A local certificate authority and the servers' certificate: what ``./oms infra start --tls`` and
``./oms up --tls`` encrypt every connection with (``./oms tls init | show``).

The files, in ``<OMS_DATA_DIR>/tls/`` (never in the repository; the keys mode 600):

- ``ca.pem``, ``ca-key.pem``: the CA (ECDSA P-256, ten years), made once per data folder;
- ``server.pem``, ``server-key.pem``: ``localhost``, ``127.0.0.1`` and ``::1`` (DNS and IP names) signed by
  the CA (one year): Postgres, RabbitMQ (AMQPS and its management API), and the OMS's own REST, gRPC and
  /metrics listeners all present it;
- ``enabled``: present while this instance runs with TLS. The mode is remembered: ``./oms infra start`` or
  ``./oms up`` without a flag keeps the instance as it was started; ``--no-tls`` turns it off, and a change of
  mode while a server runs is refused (stop the servers first), so TLS is never dropped silently.

Both are reused while valid and made again within 30 days of their end (a new CA also means a new server
certificate). The servers run as their own users (root runs them as ``postgres`` and ``rabbitmq``): each gets
its own copy of the certificate and key, owned by it, mode 600, under its folder.

A client trusts the CA, never "any certificate": Postgres URLs carry ``sslmode=verify-full&sslrootcert=<ca>``,
AMQP URLs are ``amqps://...?cafile=<ca>``, gRPC and HTTPS clients read ``OMS_TLS_CA_FILE``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import ipaddress
import os
import shutil
import socket
import ssl
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tools.infra.settings import (
    HOST,
    TLS_CA_FILE,
    TLS_ENABLED_FILE,
    InfraError,
    ServerSettings,
    tls_folder,
)
from tools.infra.system import is_root, prepare_dir

CA_DAYS = 3650
SERVER_DAYS = 365
RENEW_BEFORE = dt.timedelta(days=30)
# Clocks of the machine's processes agree, but a certificate valid "from now" is refused for a moment by a
# client whose clock runs a little behind.
BACKDATE = dt.timedelta(minutes=5)
DNS_NAMES = ("localhost",)
IP_ADDRESSES = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class TlsFiles:
    """A folder of the certificate files (the data folder's, or a server's own copy)."""

    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / TLS_CA_FILE

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca-key.pem"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server-key.pem"


def files(data_dir: Path) -> TlsFiles:
    """The certificate files of the instance whose data folder is ``data_dir``."""
    return TlsFiles(tls_folder(data_dir))


# ---- the mode ----------------------------------------------------------------------------------------------


def enabled(data_dir: Path) -> bool:
    """Whether the instance of ``data_dir`` runs with TLS (``infra start --tls`` remembered it)."""
    return (tls_folder(data_dir) / TLS_ENABLED_FILE).exists()


def remember(data_dir: Path, on: bool) -> None:
    """Record the instance's TLS mode, for the next start without a flag."""
    marker = tls_folder(data_dir) / TLS_ENABLED_FILE
    if on:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("TLS on: written by `./oms infra start --tls`; `--no-tls` removes it\n")
    else:
        marker.unlink(missing_ok=True)


# ---- making and checking the certificates ------------------------------------------------------------------


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One writer at a time (two terminals, a test beside `oms up`)."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)  # the servers' users only traverse it to their own copies' folders, never read here
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    return key if isinstance(key, ec.EllipticCurvePrivateKey) else None


def _fresh(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now and cert.not_valid_after_utc - now > RENEW_BEFORE


def _pairs(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    return cert.public_key() == key.public_key()


def _wanted_names() -> set[str]:
    return set(DNS_NAMES) | {str(ipaddress.ip_address(ip)) for ip in IP_ADDRESSES}


def _names(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return set(san.get_values_for_type(x509.DNSName)) | {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def _usable_ca(tls: TlsFiles, now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    cert, key = _load_cert(tls.ca_cert), _load_key(tls.ca_key)
    if cert is None or key is None or not _fresh(cert, now) or not _pairs(cert, key):
        return None
    return cert, key


def _usable_server(tls: TlsFiles, ca: x509.Certificate, now: dt.datetime) -> bool:
    cert, key = _load_cert(tls.server_cert), _load_key(tls.server_key)
    if cert is None or key is None or not _fresh(cert, now) or not _pairs(cert, key):
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return _wanted_names() <= _names(cert)


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: every client and server here takes it (OpenSSL, BoringSSL in gRPC, Erlang's ssl), and its
    # handshakes cost a fraction of RSA's.
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # The traditional "EC PRIVATE KEY" form: Erlang's ssl (RabbitMQ) reads it as surely as OpenSSL does.
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


def _make_ca(now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OMS local development"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"OMS local CA ({socket.gethostname()[:40]})"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(signs_certificates=True),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """Signatures only (an ECDSA key), and certificates and CRLs for the CA."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def add_tls_arguments(parser: argparse.ArgumentParser, tls_help: str) -> None:
    """``--tls`` and ``--no-tls`` (``args.tls``: True, False, or None when neither is given: as remembered)."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--tls", dest="tls", action="store_true", default=None, help=tls_help)
    mode.add_argument("--no-tls", dest="tls", action="store_false", help="without TLS (remembered)")


def _make_server(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in DNS_NAMES]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in IP_ADDRESSES]
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DNS_NAMES[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + dt.timedelta(days=SERVER_DAYS), ca.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(signs_certificates=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` whole with ``mode`` from its first byte (a key is never readable by others, not even
    for a moment), replacing what was there."""
    temporary = path.with_name(path.name + ".new")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.chmod(temporary, mode)  # whatever the umask took away
    os.replace(temporary, path)


def ensure_certificates(data_dir: Path) -> list[str]:
    """The CA and the server certificate of ``data_dir`` exist and are valid for 30 days more: reused when
    they are, made (again) when not. Returns what was done, one line each (empty: all reused)."""
    tls = files(data_dir)
    done: list[str] = []
    with _locked(tls.folder):
        now = _now()
        ca = _usable_ca(tls, now)
        if ca is None:
            ca = _make_ca(now)
            _write(tls.ca_key, _key_pem(ca[1]), 0o600)
            _write(tls.ca_cert, ca[0].public_bytes(serialization.Encoding.PEM), 0o644)
            done.append(f"made the CA {tls.ca_cert} (until {ca[0].not_valid_after_utc:%Y-%m-%d})")
        if not _usable_server(tls, ca[0], now):
            cert, key = _make_server(ca[0], ca[1], now)
            _write(tls.server_key, _key_pem(key), 0o600)
            _write(tls.server_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
            done.append(f"made the server certificate {tls.server_cert} (until {cert.not_valid_after_utc:%Y-%m-%d})")
    return done


def install(source: TlsFiles, folder: Path, owner: str | None) -> tuple[TlsFiles, bool]:
    """A server's own copy of the CA, the certificate and its key in ``folder`` (mode 700), each owned by
    ``owner`` when we are root, mode 600 (Postgres refuses a key others may read); True when a file changed."""
    prepare_dir(folder, owner)
    folder.chmod(0o700)
    copy = TlsFiles(folder)
    changed = False
    for src, dst in (
        (source.ca_cert, copy.ca_cert),
        (source.server_cert, copy.server_cert),
        (source.server_key, copy.server_key),
    ):
        data = src.read_bytes()
        if not dst.exists() or dst.read_bytes() != data:
            _write(dst, data, 0o600)
            changed = True
        if owner and is_root():
            shutil.chown(dst, owner, owner)
    return copy, changed


# ---- what clients need -------------------------------------------------------------------------------------


def speaks_tls(port: int, host: str = HOST, timeout: float = 2.0) -> bool:
    """Whether the server on ``port`` completes a TLS handshake (a plaintext AMQP listener does not)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Only "does it speak TLS at all": the certificate is checked by every real client, not by this probe.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, context.wrap_socket(raw):
            return True
    except (OSError, ssl.SSLError):
        return False


def verify_for(url: str, settings: ServerSettings | None = None) -> str | bool:
    """What ``requests`` should verify an ``https`` URL of the local servers with (their management API): this
    instance's CA when it has one, else the system's store (True)."""
    if urlsplit(url).scheme != "https":
        return True
    ca = files((settings or ServerSettings.from_env()).data_dir).ca_cert
    return str(ca) if ca.exists() else True


def client_env(data_dir: Path) -> dict[str, str]:
    """The variables that make an OMS process of this instance serve REST, gRPC and /metrics over TLS and trust
    the CA (``./oms up`` with TLS on); the database and AMQP URLs carry their own (``ServerSettings.urls``)."""
    tls = files(data_dir)
    return {
        "OMS_TLS_CA_FILE": str(tls.ca_cert),
        "OMS_TLS_CERT_FILE": str(tls.server_cert),
        "OMS_TLS_KEY_FILE": str(tls.server_key),
        "OMS_REST_TLS": "true",
        "OMS_GRPC_TLS": "true",
        "OMS_METRICS_TLS": "true",
    }


def tool_defaults(environ: Mapping[str, str]) -> dict[str, str]:
    """For an ``./oms`` tool run against a local instance with TLS on: its URLs with TLS (``sslmode``,
    ``amqps``) and the CA, for each variable the environment does not set itself. Empty otherwise, and with
    docker compose (whose servers have no TLS)."""
    if environ.get("OMS_INFRA", "").lower() == "docker":
        return {}
    try:
        settings = ServerSettings.from_env()
    except InfraError:
        return {}  # a bad port variable: the command itself reports it
    if not settings.tls:
        return {}
    urls = settings.urls
    wanted = {
        "OMS_DATABASE_URL": urls.database_url,
        "OMS_AMQP_URL": urls.amqp_url,
        "OMS_TLS_CA_FILE": str(files(settings.data_dir).ca_cert),
    }
    return {name: value for name, value in wanted.items() if not environ.get(name, "").strip()}


# ---- ./oms tls -----------------------------------------------------------------------------------------------


def describe(data_dir: Path) -> list[str]:
    """The files of ``data_dir``'s CA and server certificate, each with its names and validity."""
    tls = files(data_dir)
    now = _now()
    lines = [f"TLS mode of this instance: {'on' if enabled(data_dir) else 'off'} ({tls.folder})"]
    for what, path in (("CA", tls.ca_cert), ("server", tls.server_cert)):
        cert = _load_cert(path)
        if cert is None:
            lines.append(f"  {what:<7} {path}: none (./oms tls init makes it)")
            continue
        left = (cert.not_valid_after_utc - now).days
        names = ", ".join(sorted(_names(cert))) or "-"
        fingerprint = cert.fingerprint(hashes.SHA256()).hex(":")[:47]
        lines.append(
            f"  {what:<7} {path}\n"
            f"          subject {cert.subject.rfc4514_string()}; names {names}\n"
            f"          valid until {cert.not_valid_after_utc:%Y-%m-%d} ({left} days); sha256 {fingerprint}..."
        )
    for path in (tls.ca_key, tls.server_key):
        if path.exists():
            lines.append(f"  key     {path} (mode {path.stat().st_mode & 0o777:o})")
    return lines


def main(argv: list[str]) -> int:
    """``oms tls init | show``: make (or renew) the local CA and server certificate, or describe them."""
    parser = argparse.ArgumentParser(
        prog="oms tls",
        description="the local CA and server certificate that `./oms infra start --tls` and `./oms up --tls` use",
    )
    parser.add_argument("action", choices=["init", "show"], help="init: make or renew them; show: describe them")
    args = parser.parse_args(argv)
    try:
        settings = ServerSettings.from_env()
        if args.action == "init":
            done = ensure_certificates(settings.data_dir)
            print("\n".join(done) if done else "the CA and the server certificate are valid: kept as they are")
    except InfraError as exc:
        print(f"oms tls: {exc}", file=sys.stderr)
        return 1
    print("\n".join(describe(settings.data_dir)))
    return 0
