"""One suite, every backend: each contract test runs on the Postgres unit of work and on the in-memory fake.

``uow_factory`` opens a unit of work on the backend (a context manager: what is not committed is rolled back);
``backend`` also gives what a test needs around it (a fresh account, the committed events of an order). The
Postgres variant works on the session's test database and is marked ``integration``, so
``-m "not integration"`` runs the fake's half alone, without servers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.contract.backends import Backend, FakeBackend, PostgresBackend, UowFactory

if TYPE_CHECKING:
    from sqlalchemy import Engine


@pytest.fixture(scope="module")
def contract_engine(database_url: str) -> Iterator[Engine]:
    """An engine on the session's database, the demo data seeded (only the Postgres variant asks for it)."""
    from tests.support.db import open_engine

    with open_engine(database_url) as engine:
        yield engine


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.integration), "fake"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each backend in turn."""
    if request.param == "postgres":
        return PostgresBackend(request.getfixturevalue("contract_engine"))
    return FakeBackend()


@pytest.fixture()
def uow_factory(backend: Backend) -> UowFactory:
    """Opens a unit of work on the backend under test."""
    return backend.unit_of_work
