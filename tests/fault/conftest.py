"""Fixtures every fault test shares; each module brings its own ``instance`` (the system it runs)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from common.store.db import make_engine
from tests.fault.harness import Instance


@pytest.fixture(scope="module")
def engine(instance: Instance) -> Iterator[Engine]:
    """The instance's database, as its owner (checks and the stream's bookkeeping)."""
    engine = make_engine(instance.urls.database_url, pool_size=2)
    yield engine
    engine.dispose()
