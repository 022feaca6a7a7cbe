"""What a tool left on the servers: vhosts and databases by the prefix of their names."""

from __future__ import annotations

import requests
from sqlalchemy import text

from common.store.db import make_engine
from tests.support.outages import AUTH
from tools.infra.tls import verify_for


def vhosts_named(management_url: str, prefix: str) -> set[str]:
    """The broker's vhosts whose names start with ``prefix``."""
    base = management_url.rstrip("/")
    answer = requests.get(f"{base}/api/vhosts", auth=AUTH, timeout=5, verify=verify_for(base))
    answer.raise_for_status()
    return {v["name"] for v in answer.json() if v["name"].startswith(prefix)}


def databases_named(database_url: str, prefix: str) -> set[str]:
    """The server's databases whose names start with ``prefix`` (no pattern characters in it)."""
    engine = make_engine(database_url, pool_size=1, pre_ping=False)
    try:
        with engine.connect() as connection:
            names = connection.execute(
                text("SELECT datname FROM pg_database WHERE starts_with(datname, :prefix)"), {"prefix": prefix}
            )
            return {str(n) for n in names.scalars()}
    finally:
        engine.dispose()
