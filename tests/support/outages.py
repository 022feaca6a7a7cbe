"""Broker and database outages for tests, without stopping the servers other test sessions share.

A broker outage is the broker force-closing a process's connections (what a broker restart looks like to a
client), through the management API. A database outage is the database refusing new connections and
terminating the ones it has (``ALTER DATABASE ... ALLOW_CONNECTIONS``): only the test session's own database.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Iterator
from typing import Any

import psycopg
import requests
from psycopg import sql
from sqlalchemy.engine import make_url

from tools.infra.tls import verify_for

AUTH = ("guest", "guest")


def quote(vhost: str) -> str:
    """A vhost as a management API path segment."""
    return urllib.parse.quote(vhost, safe="")


def vhost_of(amqp_url: str) -> str:
    """The vhost an AMQP URL names."""
    return urllib.parse.unquote(urllib.parse.urlparse(amqp_url).path.lstrip("/")) or "/"


def connections(management_url: str, vhost: str, name: str) -> list[dict[str, Any]]:
    """The broker's connections on ``vhost`` whose client named itself ``name``."""
    base = management_url.rstrip("/")
    answer = requests.get(
        f"{base}/api/vhosts/{urllib.parse.quote(vhost, safe='')}/connections",
        auth=AUTH,
        timeout=5,
        verify=verify_for(base),
    )
    answer.raise_for_status()
    return [
        c
        for c in answer.json()
        if (c.get("client_properties") or {}).get("connection_name") == name and c.get("vhost") == vhost
    ]


def kill_connections(management_url: str, vhost: str, name: str) -> list[str]:
    """Force-close the named client's connections (as a broker restart would); returns the closed ones."""
    base = management_url.rstrip("/")
    closed = []
    for connection in connections(management_url, vhost, name):
        answer = requests.delete(
            f"{base}/api/connections/{urllib.parse.quote(connection['name'], safe='')}",
            auth=AUTH,
            headers={"X-Reason": "test: simulated broker restart"},
            timeout=5,
            verify=verify_for(base),
        )
        if answer.status_code in (200, 204, 404):
            closed.append(str(connection["name"]))
    return closed


def _libpq(url: str, database: str | None = None) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def terminate_backends(database_url: str) -> int:
    """Terminate every other connection to the database (a database restart, as its clients see it)."""
    name = make_url(database_url).database
    with psycopg.connect(_libpq(database_url, "postgres"), autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchone()
    return int(row[0]) if row else 0


@contextlib.contextmanager
def database_down(database_url: str) -> Iterator[None]:
    """While inside: the database refuses connections and has dropped those it had."""
    name = make_url(database_url).database
    assert name is not None
    with psycopg.connect(_libpq(database_url, "postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
        try:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            yield
        finally:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name)))


def kill_all_connections(management_url: str, vhost: str, keep: frozenset[str] = frozenset()) -> list[str]:
    """Force-close every connection on the vhost but those whose client name is in ``keep``: a broker restart
    as the processes of a sandbox see it."""
    base = management_url.rstrip("/")
    answer = requests.get(
        f"{base}/api/vhosts/{quote(vhost)}/connections", auth=AUTH, timeout=5, verify=verify_for(base)
    )
    answer.raise_for_status()
    closed = []
    for connection in answer.json():
        if (connection.get("client_properties") or {}).get("connection_name") in keep:
            continue
        response = requests.delete(
            f"{base}/api/connections/{urllib.parse.quote(connection['name'], safe='')}",
            auth=AUTH,
            headers={"X-Reason": "test: simulated broker restart"},
            timeout=5,
            verify=verify_for(base),
        )
        if response.status_code in (200, 204, 404):
            closed.append(str(connection["name"]))
    return closed
