"""Fixtures most integration modules share; a module with a set-up of its own defines its own fixture instead."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.support.api import rest_app
from tests.support.db import open_engine

if TYPE_CHECKING:
    from flask import Flask
    from flask.testing import FlaskClient
    from sqlalchemy import Engine


@pytest.fixture(scope="module")
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on the session's database, the demo data seeded."""
    with open_engine(database_url) as engine:
        yield engine


@pytest.fixture(scope="module")
def app(engine: Engine, database_url: str, amqp_url: str) -> Flask:
    """The REST app."""
    return rest_app(engine, database_url, amqp_url)


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()
