"""Broker down: orders accepted over REST while RabbitMQ is stopped wait in the outbox and flow when it returns.

The pipeline (every stage, the outbox relay, the simulated venue, each its own process) runs on a RabbitMQ node
the test owns (its own ports, node name and data folder: the shared dev broker is never touched) and on a
database of its own on the shared Postgres. The REST app takes the orders in the test process. The node is
stopped for real (``rabbitmqctl stop``), not just its connections closed; orders are posted and accepted
meanwhile; the node is started again, and every one of those orders must end FILLED, each fill booked once,
the outbox drained, and no process having exited.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import text

from common import jsonutil
from tests.e2e.conftest import E2E_ENV, VENUE_ENV
from tests.e2e.support import count
from tests.fault.harness import free_ports
from tests.support.api import bearer, rest_app
from tests.support.polling import wait_until
from tools import infra
from tools.infra import rabbitmq
from tools.sandbox import Sandbox, sandbox

if TYPE_CHECKING:
    from tools.infra import InfraUrls

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ACCOUNT, SYMBOL, QUANTITY = "ACC-002", "SPY", Decimal("10")
BEFORE, DURING = 5, 40


def _has_rabbitmq() -> bool:
    return bool(shutil.which("rabbitmq-server") or Path("/usr/sbin/rabbitmq-server").exists())


@pytest.fixture(scope="module")
def own_broker() -> Iterator[infra.ServerSettings]:
    """A RabbitMQ node of the test's own, stopped and removed at the end."""
    if not _has_rabbitmq():
        pytest.skip("needs rabbitmq-server installed locally (the test stops a node of its own)")
    run = uuid.uuid4().hex[:8]
    amqp, management, dist = free_ports(3)
    default = infra.ServerSettings.from_env()
    settings = infra.ServerSettings(
        # Beside the machine's data folder, which the infra keeps where the rabbitmq user can reach.
        data_dir=default.data_dir / f"broker-down-{run}",
        pg_port=default.pg_port,
        amqp_port=amqp,
        management_port=management,
        dist_port=dist,
        nodename=f"oms-broker-down-{run}@localhost",
        timeout=default.timeout,
        # The sandbox's processes log in with the machine's passwords (tools/sandbox.py), so the node keeps those
        # users across its restart.
        secrets_dir=rabbitmq.secrets_dir(default),
    )
    try:
        rabbitmq.start(settings)
        yield settings
    finally:
        with contextlib.suppress(Exception):
            rabbitmq.stop(settings)
        shutil.rmtree(settings.data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def pipeline(infra_urls: InfraUrls, own_broker: infra.ServerSettings) -> Iterator[Sandbox]:
    """Every stage, the relay and the venue on the test's own broker (and a database of their own)."""
    urls = infra.InfraUrls(infra_urls.database_url, own_broker.urls.amqp_url, own_broker.urls.management_url)
    with sandbox(urls, with_venue=True, env={**E2E_ENV, **VENUE_ENV}, label="oms_brokerdown") as running:
        yield running


def _post_orders(running: Sandbox, strategy: str, how_many: int) -> list[str]:
    """MARKET buys posted to the REST app; the ids of the orders it accepted (201, every one)."""
    client = rest_app(running.engine, running.database_url, running.amqp_url).test_client()
    headers = {"Authorization": bearer()}
    accepted = []
    for _ in range(how_many):
        body = {
            "accountId": ACCOUNT,
            "symbol": SYMBOL,
            "side": "BUY",
            "type": "MARKET",
            "quantity": QUANTITY,
            "timeInForce": "DAY",
            "strategyId": strategy,
        }
        answer = client.post("/orders", data=jsonutil.dumps(body), content_type="application/json", headers=headers)
        assert answer.status_code == 201, answer.get_data(as_text=True)
        accepted.append(str(jsonutil.loads(answer.get_data())["id"]))
    return accepted


def _states(running: Sandbox, ids: list[str]) -> dict[str, int]:
    """How many of the orders are in each state."""
    with running.engine.connect() as connection:
        rows = connection.execute(
            text("SELECT state, count(*) FROM orders WHERE id = ANY(:ids) GROUP BY state"), {"ids": ids}
        )
        return {str(state): int(n) for state, n in rows}


def _all_filled(running: Sandbox, ids: list[str]) -> bool:
    return _states(running, ids) == {"FILLED": len(ids)}


def test_orders_accepted_while_the_broker_is_stopped_flow_when_it_returns(
    pipeline: Sandbox, own_broker: infra.ServerSettings
) -> None:
    running = pipeline
    strategy = f"broker-down-{uuid.uuid4().hex[:8]}"

    before = _post_orders(running, strategy, BEFORE)
    wait_until(lambda: _all_filled(running, before), timeout=120, message=lambda: f"before: {_states(running, before)}")

    rabbitmq.stop(own_broker)
    assert not rabbitmq.status(own_broker).running
    during = _post_orders(running, strategy, DURING)  # accepted: the API needs only the database
    # They wait in the outbox: each order NEW, its RiskCheck unsent.
    assert _states(running, during) == {"NEW": DURING}
    waiting = count(
        running.engine,
        "SELECT count(*) FROM outbox WHERE routing_key LIKE 'risk.check%' AND sent_at IS NULL"
        " AND CAST(body AS jsonb) ->> 'orderId' = ANY(:ids)",
        ids=during,
    )
    assert waiting == DURING

    rabbitmq.start(own_broker)
    wait_until(
        lambda: _all_filled(running, during),
        timeout=240,
        interval=0.5,
        message=lambda: f"orders accepted while the broker was down: {_states(running, during)}",
    )
    fills = count(
        running.engine,
        "SELECT count(*) FROM execution_reports WHERE order_id = ANY(:ids) AND exec_type IN ('PARTIAL_FILL', 'FILL')",
        ids=during,
    )
    assert fills == DURING * 2  # the venue fills each in two partials (VENUE_ENV), each booked once
    wait_until(
        lambda: count(running.engine, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0,
        timeout=60,
        message="the outbox drained",
    )
    assert running.supervisor.dead() == [], [r.spec.name for r in running.supervisor.dead()]
    print(f"broker down: {DURING} orders accepted over REST while RabbitMQ was stopped, all FILLED once it returned")
