"""The database engine the integration tests work on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy import Engine

from common.store.db import make_engine
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
