"""TLS of the OMS's own listeners and clients, from the settings (``TlsSettings``; SECURITY.md, TLS).

- servers: :func:`server_context` (the workers' /metrics), :func:`grpc_server_credentials` (gRPC); gunicorn
  takes the certificate and key files itself (services/api/__main__.py);
- clients: :func:`client_context` (HTTPS), :func:`grpc_channel_credentials` (gRPC), each trusting
  ``OMS_TLS_CA_FILE``; :func:`pika_broker_options` for dramatiq's pika, which cannot read the ``cafile`` that
  aio-pika (aiormq) takes from an ``amqps://`` URL. Postgres needs nothing here: libpq reads ``sslmode`` and
  ``sslrootcert`` from the URL.

A handshake happens once per connection, and every connection here is long-lived (pools, the robust AMQP
connection, gRPC channels), so TLS costs the per-order path only the symmetric encryption of its bytes.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from common.settings import TlsSettings

if TYPE_CHECKING:
    import grpc

# The URL parameters aiormq reads for TLS (an amqps:// URL); pika refuses any it does not know.
_AIORMQ_TLS_PARAMETERS = ("cafile", "capath", "cadata", "keyfile", "certfile", "no_verify_ssl")
# What pika.ConnectionParameters takes, read back from the URL's parameters.
_PIKA_PARAMETERS = (
    "host",
    "port",
    "virtual_host",
    "credentials",
    "channel_max",
    "frame_max",
    "heartbeat",
    "ssl_options",
    "connection_attempts",
    "retry_delay",
    "socket_timeout",
    "stack_timeout",
    "locale",
    "blocked_connection_timeout",
    "client_properties",
    "tcp_options",
)


def _server_files(tls: TlsSettings) -> tuple[str, str]:
    if tls.cert_file is None or tls.key_file is None:
        raise ValueError("a TLS listener needs OMS_TLS_CERT_FILE and OMS_TLS_KEY_FILE")
    return str(tls.cert_file), str(tls.key_file)


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    """A server's context presenting ``OMS_TLS_CERT_FILE`` with its key; TLS 1.2 or newer."""
    cert, key = _server_files(tls)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def client_context(tls: TlsSettings) -> ssl.SSLContext:
    """A client's context that verifies the server's certificate and name against ``OMS_TLS_CA_FILE`` (the
    system's trust store when unset)."""
    return ssl.create_default_context(cafile=None if tls.ca_file is None else str(tls.ca_file))


def grpc_server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    """The gRPC server's TLS credentials (no client certificate asked: callers prove who they are by token)."""
    import grpc

    cert, key = _server_files(tls)
    with open(key, "rb") as key_file, open(cert, "rb") as cert_file:
        return grpc.ssl_server_credentials([(key_file.read(), cert_file.read())])


def grpc_channel_credentials(tls: TlsSettings) -> grpc.ChannelCredentials:
    """A gRPC client's TLS credentials trusting ``OMS_TLS_CA_FILE`` (gRPC's own roots when unset)."""
    import grpc

    return grpc.ssl_channel_credentials(root_certificates=None if tls.ca_file is None else tls.ca_file.read_bytes())


def _pika_parameters(url: str) -> dict[str, Any]:
    import pika  # type: ignore[import-untyped]  # pika ships no types

    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    tls_query = {name: query.pop(name) for name in _AIORMQ_TLS_PARAMETERS if name in query}
    plain = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))
    parameters = pika.URLParameters(plain)
    if parts.scheme == "amqps":
        context = ssl.create_default_context(cafile=tls_query.get("cafile"), capath=tls_query.get("capath"))
        if "certfile" in tls_query:
            context.load_cert_chain(tls_query["certfile"], tls_query.get("keyfile"))
        # The host name is checked against the certificate, as aiormq does (pika checks none without it).
        parameters.ssl_options = pika.SSLOptions(context, server_hostname=parts.hostname)
    return {name: getattr(parameters, name) for name in _PIKA_PARAMETERS}


def pika_broker_options(url: str) -> dict[str, Any]:
    """The connection arguments of dramatiq's ``RabbitmqBroker`` for ``url`` (``;``-separated URLs, as
    dramatiq takes them, for several nodes): the URL itself when it is plain AMQP, else pika parameters with
    the TLS context that the URL's ``cafile`` names (pika refuses aiormq's URL parameters)."""
    urls = [part for part in url.split(";") if part]
    if not any(urlsplit(part).scheme == "amqps" for part in urls):
        return {"url": url}
    return {"parameters": [_pika_parameters(part) for part in urls]}
