"""End-to-end fixtures: the whole pipeline, every worker its own process, on a database and vhost of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest
from aio_pika.abc import AbstractRobustConnection

from common.messaging.connection import connect
from common.messaging.topology import declare_topology
from tests.support.invariants import assert_invariants_hold
from tools.sandbox import Sandbox, sandbox

if TYPE_CHECKING:
    from tools.infra import InfraUrls

RunningSystem = Sandbox

VENUE_ENV = {"OMS_VENUE_PARTIAL_FILLS": "2", "OMS_VENUE_REJECT_SYMBOLS": "ESZ6", "OMS_VENUE_FEE_RATE": "0.001"}
# Short enough that the crash tests see the relay pick up a dead worker's unsent rows quickly.
E2E_ENV = {"OMS_OUTBOX_GRACE_SECONDS": "2", "OMS_OUTBOX_POLL_SECONDS": "0.5", "OMS_LOG_LEVEL": "INFO"}


@pytest.fixture(scope="module")
def pipeline_with_venue(infra_urls: InfraUrls) -> Iterator[Sandbox]:
    """Every stage, the relay and the simulated venue (fills in two partials; ESZ6 rejected by the venue)."""
    with sandbox(infra_urls, with_venue=True, env={**E2E_ENV, **VENUE_ENV}, label="oms_e2e") as running:
        yield running
        assert_invariants_hold(running.engine)  # every module's run ends with `oms check` clean


@pytest.fixture(scope="module")
def pipeline_without_venue(infra_urls: InfraUrls) -> Iterator[Sandbox]:
    """Every stage and the relay; the test plays the broker on the ``broker`` exchange."""
    with sandbox(infra_urls, with_venue=False, env=E2E_ENV, label="oms_e2e") as running:
        yield running
        assert_invariants_hold(running.engine)  # every module's run ends with `oms check` clean


@pytest.fixture
async def amqp(request: pytest.FixtureRequest) -> AsyncIterator[AbstractRobustConnection]:
    """An AMQP connection to the system under test (whichever pipeline fixture the module uses)."""
    running: Sandbox = request.getfixturevalue(request.module.PIPELINE)
    connection = await connect(running.amqp_url, "oms.e2e-test")
    channel = await connection.channel()
    await declare_topology(channel, 5)
    yield connection
    await connection.close()
