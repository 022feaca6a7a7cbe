"""A pooled connection is checked as it is taken (``make_engine(pre_ping=True)``, the front end's engines): a dead
one is replaced before the caller uses it, a live one used a moment ago costs no round trip, one idle for
longer is pinged, and one the server spoke to unasked (but is alive) is pinged and kept."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text

from common.store import db
from common.store.db import _may_be_dead, make_engine
from tests.support.polling import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture()
def one_connection(database_url: str) -> Iterator[tuple[Engine, list[int]]]:
    """An engine of one pooled connection, and the pings its dialect sends (counted)."""
    engine = make_engine(database_url, pool_size=1)
    pings: list[int] = []
    real_ping = engine.dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        pings.append(1)
        return bool(real_ping(dbapi_connection))

    engine.dialect.do_ping = counted  # type: ignore[method-assign]
    try:
        yield engine, pings
    finally:
        engine.dispose()


def _backend(engine: Engine) -> tuple[int, Any]:
    """The pooled connection's server process id, and the psycopg connection under it (to watch its socket
    while it is back in the pool, where taking it would run the check)."""
    with engine.connect() as connection:
        pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        connection.commit()
        assert isinstance(pid, int)
        return pid, connection.connection.dbapi_connection


def _admin(database_url: str, statement: str, **values: object) -> None:
    admin = make_engine(database_url, pool_size=1, pre_ping=False)
    try:
        with admin.connect() as connection:
            connection.execute(text(statement), values)
            connection.commit()
    finally:
        admin.dispose()


def test_a_live_pooled_connection_is_taken_without_a_ping(one_connection: tuple[Engine, list[int]]) -> None:
    engine, pings = one_connection
    first, _ = _backend(engine)
    assert [_backend(engine)[0] for _ in range(5)] == [first] * 5
    assert pings == []


def test_a_connection_idle_for_longer_is_pinged(
    one_connection: tuple[Engine, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, pings = one_connection
    first, _ = _backend(engine)
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.0)  # every connection counts as idle long enough
    assert [_backend(engine)[0] for _ in range(3)] == [first] * 3
    assert pings == [1, 1, 1]


def test_a_terminated_connection_is_replaced_before_the_caller_uses_it(
    one_connection: tuple[Engine, list[int]], database_url: str
) -> None:
    engine, pings = one_connection
    doomed, pooled = _backend(engine)
    _admin(database_url, "SELECT pg_terminate_backend(:pid)", pid=doomed)
    # The server sends its FATAL message and closes: the pooled socket reads as such once it has arrived.
    wait_until(lambda: _may_be_dead(pooled), timeout=10, message="the end of the terminated connection")
    replacement, _ = _backend(engine)  # no error: the dead connection never reached the caller
    assert replacement != doomed
    assert pings == [1]  # its socket said so, and the ping found it dead


def test_a_live_connection_the_server_spoke_to_is_pinged_and_kept(
    one_connection: tuple[Engine, list[int]], database_url: str
) -> None:
    engine, pings = one_connection
    with engine.connect() as connection:
        connection.execute(text("LISTEN checkout_check"))
        connection.commit()
    pid, pooled = _backend(engine)
    assert not _may_be_dead(pooled) and pings == []
    _admin(database_url, "SELECT pg_notify('checkout_check', 'x')")  # unasked, on a live connection
    wait_until(lambda: _may_be_dead(pooled), timeout=10, message="the notification on the pooled socket")
    assert _backend(engine)[0] == pid  # pinged, alive, kept
    assert pings == [1]
