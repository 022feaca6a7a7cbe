"""End-to-end fixtures: the whole pipeline, every worker its own process, on a database and vhost of its own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from aio_pika.abc import AbstractRobustConnection
from sqlalchemy import Engine

from common.config import REPO_ROOT
from common.messaging.connection import connect
from common.messaging.topology import declare_topology
from common.store.db import make_engine
from tests.e2e.support import consumers_ready
from tools import infra, migrate
from tools.processes import STAGES, ProcessSpec, Supervisor, system
from tools.seed import seed_demo

if TYPE_CHECKING:
    from tools.infra import InfraUrls

# Short enough that the crash tests see the relay pick up a dead worker's unsent rows quickly.
VENUE_ENV = {"OMS_VENUE_PARTIAL_FILLS": "2", "OMS_VENUE_REJECT_SYMBOLS": "ESZ6", "OMS_VENUE_FEE_RATE": "0.001"}
E2E_ENV = {"OMS_OUTBOX_GRACE_SECONDS": "2", "OMS_OUTBOX_POLL_SECONDS": "0.5", "OMS_LOG_LEVEL": "INFO"}


@dataclass
class RunningSystem:
    """A running pipeline and how to reach it."""

    database_url: str
    amqp_url: str
    management_url: str
    vhost: str
    supervisor: Supervisor
    engine: Engine
    specs: list[ProcessSpec]


def _start(infra_urls: InfraUrls, with_venue: bool, venue_env: dict[str, str] | None = None) -> Iterator[RunningSystem]:
    name = f"oms_e2e_{uuid.uuid4().hex[:10]}"
    database_url = infra.create_database(name, infra_urls.database_url)
    infra.create_vhost(name, infra_urls.management_url)
    amqp_url = infra.amqp_url_for_vhost(infra_urls.amqp_url, name)
    migrate.upgrade(database_url)
    engine = make_engine(database_url)
    with engine.begin() as connection:
        seed_demo(connection)
    env = {"OMS_DATABASE_URL": database_url, "OMS_AMQP_URL": amqp_url, **E2E_ENV, **(venue_env or {})}
    supervisor = Supervisor(env, REPO_ROOT / ".data" / "logs" / name, REPO_ROOT)
    specs = system(with_venue=with_venue, with_api=False)
    supervisor.start_all(specs)
    try:
        missing = consumers_ready(infra_urls.management_url, name, [f"oms.{s}" for s in STAGES], timeout=90)
        if missing or supervisor.dead():
            logs = "\n".join(f"--- {r.spec.name}\n{supervisor.tail(r.spec.name)}" for r in supervisor.dead())
            pytest.fail(f"pipeline did not start: no consumer on {missing}\n{logs}")
        yield RunningSystem(database_url, amqp_url, infra_urls.management_url, name, supervisor, engine, specs)
    finally:
        supervisor.stop_all()
        engine.dispose()
        infra.delete_vhost(name, infra_urls.management_url)
        infra.drop_database(name, infra_urls.database_url)


@pytest.fixture(scope="module")
def pipeline_with_venue(infra_urls: InfraUrls) -> Iterator[RunningSystem]:
    """Every stage, the relay and the simulated venue (fills in two partials; ESZ6 rejected by the venue)."""
    yield from _start(infra_urls, with_venue=True, venue_env=VENUE_ENV)


@pytest.fixture(scope="module")
def pipeline_without_venue(infra_urls: InfraUrls) -> Iterator[RunningSystem]:
    """Every stage and the relay; the test plays the broker on the ``broker`` exchange."""
    yield from _start(infra_urls, with_venue=False)


@pytest.fixture
async def amqp(request: pytest.FixtureRequest) -> AsyncIterator[AbstractRobustConnection]:
    """An AMQP connection to the system under test (whichever pipeline fixture the module uses)."""
    running: RunningSystem = request.getfixturevalue(request.module.PIPELINE)
    connection = await connect(running.amqp_url, "oms.e2e-test")
    channel = await connection.channel()
    await declare_topology(channel, 5)
    yield connection
    await connection.close()
