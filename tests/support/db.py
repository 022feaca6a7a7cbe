"""The database engine the integration tests work on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, event, text

from common.store.db import PLAN_CACHE_MODE_STATEMENT, make_engine
from tools.seed import seed_demo


@contextlib.contextmanager
def open_engine(database_url: str, *, demo_data: bool = True) -> Iterator[Engine]:
    """An engine on the test session's database, with the demo accounts and instruments seeded unless told not to;
    disposed at the end."""
    engine = make_engine(database_url)
    try:
        if demo_data:
            with engine.begin() as connection:
                seed_demo(connection)
        yield engine
    finally:
        engine.dispose()


@contextlib.contextmanager
def statements(engine: Engine, *, session_settings: bool = False) -> Iterator[list[str]]:
    """The SQL statements sent on ``engine`` while the block runs (an executemany counts once: one round trip).

    Without ``session_settings``, leaves out a stage connection's switch of its plan cache mode
    (``common.store.db.use_plan_cache_mode``): sent when a connection first meets a batch, or one of another size
    class, it is not a statement of the batch, and counting it would make a batch's count depend on the batch
    before it."""
    sent: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if session_settings or statement != PLAN_CACHE_MODE_STATEMENT:
            sent.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", count)


def waiting_for_a_lock(engine: Engine) -> bool:
    """Whether a session of ``engine``'s database is waiting for a lock (a writer queued behind another)."""
    with engine.connect() as connection:
        waiting = connection.execute(
            text(
                "select count(*) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'"
            )
        ).scalar_one()
    return int(waiting) > 0
