"""The pipeline runs with a broker user per kind of process, as `./oms up` runs it: an order sent by the strategy's
own user is filled and settled, every process's connection is its kind's user (none is guest), and no process
was refused anything on the way.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any

import pytest
import requests

from common.messaging.connection import connect
from tests.e2e.conftest import RunningSystem
from tests.e2e.support import send_decision, wait_for_order, wait_for_state
from tests.support.orders import trade_decision
from tools import infra
from tools.infra import brokerusers

pytestmark = pytest.mark.e2e
PIPELINE = "pipeline_with_venue"
# Connection names (common/messaging/connection.py callers) -> the process they belong to.
CONNECTIONS = {
    **{f"oms.{stage}": stage for stage in ("intake", "risk_gate", "router", "execution_handler", "settlement")},
    "oms.risk_gate.prices": "risk_gate",
    "oms.outbox_relay": "outbox_relay",
    "oms.venue_sim": "venue_sim",
}


def _connections(running: RunningSystem) -> list[dict[str, Any]]:
    vhost = urllib.parse.quote(running.vhost, safe="")
    answer = requests.get(
        f"{running.management_url.rstrip('/')}/api/vhosts/{vhost}/connections", auth=("guest", "guest"), timeout=10
    )
    answer.raise_for_status()
    connections: list[dict[str, Any]] = answer.json()
    return connections


async def test_an_order_goes_through_with_a_user_per_process(pipeline_with_venue: RunningSystem) -> None:
    running = pipeline_with_venue
    strategy = brokerusers.BY_KIND["strategy"]
    password = brokerusers.passwords(infra.secrets_dir())[strategy.name]
    url = infra.amqp_url_for_vhost(running.amqp_url, running.vhost)
    parts = urllib.parse.urlsplit(url)
    login = f"{strategy.name}:{urllib.parse.quote(password, safe='')}@{parts.netloc.rpartition('@')[2]}"
    connection = await connect(urllib.parse.urlunsplit(parts._replace(netloc=login)), "tests.strategy", attempts=3)
    try:
        body = trade_decision(quantity=10)
        decision = await send_decision(connection, body)
    finally:
        await connection.close()
    order = await wait_for_order(running.engine, body["accountId"], decision)
    await wait_for_state(running.engine, order.id, "FILLED")

    by_name: dict[str, set[str]] = {}
    for found in await asyncio.to_thread(_connections, running):
        name = (found.get("client_properties") or {}).get("connection_name", "")
        by_name.setdefault(name, set()).add(found["user"])
    for name, process in CONNECTIONS.items():
        assert by_name.get(name) == {brokerusers.BY_PROCESS[process].name}, (name, by_name.get(name))
    process_connections = {n: users for n, users in by_name.items() if n.startswith("oms.")}
    assert not any("guest" in users for users in process_connections.values()), process_connections

    for process, log in ((r.spec.name, r.log_path) for r in running.supervisor.running.values()):
        text = log.read_text(errors="replace")
        assert "ACCESS_REFUSED" not in text and "NOT_FOUND" not in text, (process, log)
