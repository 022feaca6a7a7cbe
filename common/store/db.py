"""The SQLAlchemy engine: one per process, JSON through the Decimal-exact serialiser."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine

from common import jsonutil


def make_engine(url: str, pool_size: int = 5, pre_ping: bool = True) -> Engine:
    """Create the process's engine (psycopg 3).

    ``pre_ping`` tests each connection as it is taken from the pool, so a restarted database costs a caller
    nothing: for request handlers. A stage worker does without (a round trip per batch): its batch fails on the
    dead connection, which invalidates the whole pool, and its retry runs on new connections.
    """
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=pre_ping,
        json_serializer=jsonutil.dumps,
        json_deserializer=jsonutil.loads,
    )
