"""The SQLAlchemy engine: one per process, JSON through the Decimal-exact serialiser."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine, event

from common import jsonutil


def make_engine(
    url: str,
    pool_size: int = 5,
    pre_ping: bool = True,
    *,
    connect_args: Mapping[str, Any] | None = None,
    connect_deadline: float | None = None,
    pool_timeout: float = 30.0,
) -> Engine:
    """Create the process's engine (psycopg 3).

    ``pre_ping`` tests each connection as it is taken from the pool, so a restarted database costs a caller
    nothing: for request handlers. A stage worker does without (a round trip per batch): its batch fails on the
    dead connection, which invalidates the whole pool, and its retry runs on new connections.

    ``connect_args``: libpq parameters for every connection (``connect_timeout``, ``tcp_user_timeout``,
    ``options``...). ``connect_deadline``: seconds after which opening a connection is given up with
    ``psycopg.errors.ConnectionTimeout`` (below libpq's 2-second floor: see :func:`_connect_within`).
    ``pool_timeout``: seconds a caller waits for a pooled connection when all are taken.
    """
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=pre_ping,
        pool_timeout=pool_timeout,
        connect_args=dict(connect_args or {}),
        json_serializer=jsonutil.dumps,
        json_deserializer=jsonutil.loads,
    )
    if connect_deadline is not None:
        deadline = connect_deadline

        @event.listens_for(engine, "do_connect")
        def _bounded_connect(dialect: Any, record: Any, cargs: list[Any], cparams: dict[str, Any]) -> Any:
            return _connect_within(deadline, lambda: dialect.connect(*cargs, **cparams))

    return engine


def _connect_within(deadline: float, connect: Any) -> Any:
    """``connect()``, or ConnectionTimeout after ``deadline`` seconds.

    libpq (and psycopg after it) will not wait less than 2 s for a connection (``connect_timeout`` is whole
    seconds, at least 2), and without it a server that accepts TCP but never answers (stopped, overloaded)
    holds the caller 130 s. The attempt runs in a thread of its own, only when the pool opens a connection
    (not per query); one given up finishes in that thread within its own ``connect_timeout`` and is closed.
    """
    done = threading.Event()
    outcome: dict[str, Any] = {}
    lock = threading.Lock()

    def attempt() -> None:
        try:
            connection = connect()
        except BaseException as exc:  # handed to the caller, whatever it is
            outcome["error"] = exc
        else:
            with lock:
                if outcome.get("abandoned"):
                    connection.close()  # the caller has gone: nobody else will close it
                    return
                outcome["connection"] = connection
        done.set()

    threading.Thread(target=attempt, name="db-connect", daemon=True).start()
    if not done.wait(deadline):
        with lock:
            if "connection" not in outcome:
                outcome["abandoned"] = True
                raise psycopg.errors.ConnectionTimeout(f"no database connection within {deadline:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["connection"]
