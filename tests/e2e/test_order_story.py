"""``oms decision --wait`` and ``oms order show`` against the whole pipeline (every worker and the venue)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import case, func, select

from common import jsonutil
from common.settings import REPO_ROOT
from common.store import tables
from tests.e2e.conftest import RunningSystem
from tests.support.api import new_account
from tests.support.polling import wait_until

pytestmark = pytest.mark.e2e
PIPELINE = "pipeline_with_venue"
D = Decimal


def oms(running: RunningSystem, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``./oms ARGS`` as a process of its own, pointed at the sandbox's database and vhost."""
    env = {**os.environ, "OMS_DATABASE_URL": running.database_url, "OMS_AMQP_URL": running.amqp_url}
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def decision(running: RunningSystem, account: str, *terms: str, wait: float) -> tuple[str, Any]:
    """Send a decision with ``--wait``: its id and the finished process."""
    decision_id = str(uuid.uuid4())
    result = oms(
        running,
        "decision",
        "--account",
        account,
        "--side",
        "BUY",
        "--decision-id",
        decision_id,
        *terms,
        "--wait",
        "--timeout",
        str(wait),
        timeout=wait + 60,
    )
    return decision_id, result


def order_of(running: RunningSystem, account: str, decision_id: str) -> Any:
    with running.engine.connect() as connection:
        return connection.execute(
            select(tables.orders).where(
                tables.orders.c.account_id == account, tables.orders.c.client_order_id == decision_id
            )
        ).one()


def confirmed(running: RunningSystem, order_id: str) -> Decimal:
    """The order's confirmations net of reversals."""
    confirmations = tables.trade_confirmations
    signed = case((confirmations.c.reversal, -confirmations.c.quantity), else_=confirmations.c.quantity)
    with running.engine.connect() as connection:
        net: Decimal = connection.execute(
            select(func.coalesce(func.sum(signed), 0)).where(confirmations.c.order_id == order_id)
        ).scalar_one()
    return net


def test_wait_prints_the_order_and_its_final_status_then_show_tells_its_story(
    pipeline_with_venue: RunningSystem,
) -> None:
    running = pipeline_with_venue
    account = new_account(running.engine)
    decision_id, result = decision(
        running, account, "--symbol", "AAPL", "--type", "MARKET", "--quantity", "10", "--tif", "GTC", wait=60
    )
    assert result.returncode == 0, result.stderr
    order = order_of(running, account, decision_id)
    assert order.state == "FILLED"
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"decision {decision_id} published (message id ")
    assert lines[1:] == [f"order {order.id} booked", f"order {order.id} FILLED, filled 10"]

    # Settlement follows the fill asynchronously: wait for its confirmations before reading the story.
    wait_until(lambda: confirmed(running, order.id) == D(10), timeout=30, message="the order's confirmations")
    shown = oms(running, "order", "show", order.id, "--json")
    assert shown.returncode == 0, shown.stderr
    story = jsonutil.loads(shown.stdout)
    assert story["order"]["id"] == order.id and story["order"]["status"] == "FILLED"
    events = story["events"]
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    types = [e["type"] for e in events]
    assert types[0] == "ORDER_CREATED" and "RISK_APPROVED" in types and "ORDER_ROUTED" in types
    assert types[-1] == "ORDER_FILLED"
    # The venue fills in two slices (VENUE_ENV): two fills, two confirmations, two instructions.
    fills = [r for r in story["execution_reports"] if r["exec_type"] in ("PARTIAL_FILL", "FILL")]
    assert len(fills) == 2
    assert sum(c["quantity"] for c in story["trade_confirmations"]) == 10
    assert len(story["settlement_instructions"]) == len(story["trade_confirmations"]) == 2
    assert story["position_effect"]["quantity"] == 10
    assert story["position_effect"]["position_now"] == 10  # the account is the test's own

    text = oms(running, "order", "show", order.id)
    assert text.returncode == 0, text.stderr
    assert f"this order: +10 AAPL in {account}; position now 10" in text.stdout


def test_wait_reports_a_rejection_as_a_final_state(pipeline_with_venue: RunningSystem) -> None:
    running = pipeline_with_venue
    account = new_account(running.engine)
    # The venue rejects ESZ6 (VENUE_ENV): the order ends REJECTED, which is an answer, so exit 0.
    decision_id, result = decision(running, account, "--symbol", "ESZ6", "--quantity", "1", wait=60)
    assert result.returncode == 0, result.stderr
    order = order_of(running, account, decision_id)
    assert result.stdout.splitlines()[-1] == f"order {order.id} REJECTED, filled 0"


def test_wait_times_out_on_an_order_that_rests(pipeline_with_venue: RunningSystem) -> None:
    running = pipeline_with_venue
    account = new_account(running.engine)
    # A GTC buy far below the market rests OPEN at the venue: never final while the test runs.
    decision_id, result = decision(
        running,
        account,
        "--symbol",
        "AAPL",
        "--type",
        "LIMIT",
        "--price",
        "100",
        "--quantity",
        "5",
        "--tif",
        "GTC",
        wait=10,
    )
    assert result.returncode == 1
    order = order_of(running, account, decision_id)
    assert f"order {order.id} booked" in result.stdout
    assert "oms decision: order" in result.stderr and "is still " in result.stderr and "after 10 s" in result.stderr
    assert "Traceback" not in result.stderr
