"""The SQLAlchemy engine: one per process, JSON through the Decimal-exact serialiser."""

from __future__ import annotations

import math
import select
import threading
import time
from collections.abc import Mapping
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import InvalidatePoolError

from common import jsonutil


def make_engine(
    url: str,
    pool_size: int = 5,
    pre_ping: bool = True,
    *,
    connect_args: Mapping[str, Any] | None = None,
    connect_deadline: float | None = None,
    pool_timeout: float = 30.0,
    plan_cache_mode: str | None = None,
) -> Engine:
    """Create the process's engine (psycopg 3).

    ``pre_ping`` tests each connection as it is taken from the pool, so a restarted database costs a caller
    nothing: for request handlers (:func:`_check_on_checkout`: no round trip for a connection in use a moment
    ago whose socket says the server has not spoken since). A stage worker does without: its batch fails on
    the dead connection, which invalidates the whole pool, and its retry runs on new connections.

    ``connect_args``: libpq parameters for every connection (``connect_timeout``, ``tcp_user_timeout``,
    ``options``...). ``connect_deadline``: seconds after which opening a connection is given up with
    ``psycopg.errors.ConnectionTimeout`` (below libpq's 2-second floor: see :func:`_connect_within`).
    ``pool_timeout``: seconds a caller waits for a pooled connection when all are taken. ``plan_cache_mode``:
    Postgres's setting for every connection (None: the server's).
    """
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=False,  # pre_ping: _check_on_checkout, SQLAlchemy's ping only when it is needed
        pool_timeout=pool_timeout,
        connect_args=dict(connect_args or {}),
        json_serializer=jsonutil.dumps,
        json_deserializer=jsonutil.loads,
    )
    if pre_ping:
        dialect = engine.dialect

        @event.listens_for(engine, "connect")
        @event.listens_for(engine, "checkin")
        def _note_last_use(dbapi_connection: Any, record: Any) -> None:
            record.info[_LAST_USED] = time.monotonic()

        @event.listens_for(engine, "checkout")
        def _pre_ping(dbapi_connection: Any, record: Any, proxy: Any) -> None:
            _check_on_checkout(dialect, dbapi_connection, record.info.get(_LAST_USED))

    if plan_cache_mode is not None:
        mode = plan_cache_mode

        @event.listens_for(engine, "connect", insert=True)
        def _set_plan_cache_mode(dbapi_connection: Any, record: Any) -> None:
            # Outside a transaction, so the session keeps it (SQLAlchemy's recipe for session settings).
            autocommit = dbapi_connection.autocommit
            dbapi_connection.autocommit = True
            dbapi_connection.execute("SELECT set_config('plan_cache_mode', %s, false)", (mode,))
            dbapi_connection.autocommit = autocommit

    if connect_deadline is not None:
        deadline = connect_deadline

        @event.listens_for(engine, "do_connect")
        def _bounded_connect(dialect: Any, record: Any, cargs: list[Any], cparams: dict[str, Any]) -> Any:
            return _connect_within(deadline, lambda: dialect.connect(*cargs, **cparams))

    return engine


# A connection back in the pool for less than this is handed out without a ping unless its socket has something to
# read (pgbouncer's server_check_delay, 30 s by default, is the same idea).
PING_AFTER_IDLE_SECONDS = 1.0
_LAST_USED = "oms_last_used"


# libpq's connect_timeout is whole seconds and at least 2: the backstop of the helper thread that
# ``connect_deadline`` gives up on, so that thread ends soon after.
_LIBPQ_CONNECT_TIMEOUT = 2


def bounded_connect_args(
    timeout_seconds: float, statement_timeout_seconds: float, *, keepalives: bool = False
) -> dict[str, object]:
    """libpq parameters that bound a connection's waits: opening it (with ``make_engine``'s ``connect_deadline``
    for less than libpq's 2 s), data sent and never acknowledged (``tcp_user_timeout``), a statement, lock waits
    included (``statement_timeout``) and, with ``keepalives``, a peer gone silent while a query's answer is
    awaited (TCP keepalives, probing after half the timeout)."""
    args: dict[str, object] = {
        "connect_timeout": max(_LIBPQ_CONNECT_TIMEOUT, math.ceil(timeout_seconds)),
        "tcp_user_timeout": max(1, round(timeout_seconds * 1000)),
        "options": f"-c statement_timeout={max(1, round(statement_timeout_seconds * 1000))}",
    }
    if keepalives:
        args.update(
            keepalives=1,
            keepalives_idle=max(1, math.ceil(timeout_seconds / 2)),
            keepalives_interval=max(1, math.ceil(timeout_seconds / 4)),
            keepalives_count=2,
        )
    return args


def _check_on_checkout(dialect: Any, dbapi_connection: Any, last_used: float | None) -> None:
    """SQLAlchemy's pre-ping, sent only when the connection may be dead: idle for more than
    ``PING_AFTER_IDLE_SECONDS``, closed, or its socket readable.

    A pooled connection is idle: the server sends it nothing unasked unless it is going away (a restart, a
    fast or immediate shutdown, ``pg_terminate_backend``, a failover that stops the old primary: an error
    message, then end of file) or, rarely, a parameter's new value. So a connection in use a moment ago whose
    socket has nothing to read is live as far as a ping could tell, and the round trip (a wake-up of the server
    on every request) is saved. What only a ping finds, a host gone silent (powered off, cut off), it finds on
    every connection idle for longer; a connection used within the last second meets it in its query, whose
    bounded waits turn it into an error (503) and invalidate the pool, so the next request connects afresh.
    A ping that fails on a disconnect invalidates the pool, as ``pool_pre_ping`` does.
    """
    recent = last_used is not None and time.monotonic() - last_used <= PING_AFTER_IDLE_SECONDS
    if recent and not _may_be_dead(dbapi_connection):
        return
    try:
        dialect.do_ping(dbapi_connection)
    except dialect.loaded_dbapi.Error as error:
        if dialect.is_disconnect(error, dbapi_connection, None):
            raise InvalidatePoolError() from error
        raise


def _may_be_dead(dbapi_connection: Any) -> bool:
    """Closed, lost, or its socket has something to read (or has hung up)."""
    if dbapi_connection.closed:
        return True
    try:
        fd = dbapi_connection.pgconn.socket
    except psycopg.OperationalError:  # libpq has no socket for it any more
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


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


_PLAN_CACHE_MODE = "oms_plan_cache_mode"
PLAN_CACHE_MODE_STATEMENT = "SELECT set_config('plan_cache_mode', %(mode)s, false)"


def use_plan_cache_mode(connection: Connection, mode: str) -> None:
    """Postgres's ``plan_cache_mode`` for the connection's session from now on; call it between transactions.

    Only a change costs anything (three round trips: it is committed, so a later rollback cannot undo it behind
    the record kept in the connection's ``info``, which the pool clears with the connection when it is lost).
    """
    info = connection.info
    if info.get(_PLAN_CACHE_MODE) == mode:
        return
    connection.exec_driver_sql(PLAN_CACHE_MODE_STATEMENT, {"mode": mode})
    connection.commit()
    info[_PLAN_CACHE_MODE] = mode
