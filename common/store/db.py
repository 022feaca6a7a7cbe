"""The SQLAlchemy engine: one per process, JSON through the Decimal-exact serialiser."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine

from common import jsonutil


def make_engine(url: str, pool_size: int = 5) -> Engine:
    """Create the process's engine (psycopg 3, pre-ping so a restarted database is survived)."""
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        json_serializer=jsonutil.dumps,
        json_deserializer=jsonutil.loads,
    )
