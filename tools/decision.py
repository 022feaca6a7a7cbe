"""``oms decision``: publish a trade decision on the ``oms`` exchange, as the strategy service does.

``--wait`` then follows it in the database (``OMS_DATABASE_URL`` or ``--url``): intake books the decision as
the order whose client order id is the decision id, in the decision's account; the command prints that order's
id once it exists and its final status once it has one (FILLED, CANCELED, REJECTED; an EXPIRED order is
CANCELED publicly, and its internal state is printed too). Exit 0 when it reached a final state, 1 when
``--timeout`` passed first.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Engine, select

from common.domain.enums import TERMINAL_STATES
from common.messages.catalogue import TRADE_DECISION
from common.messages.headers import ACCOUNT_HEADER
from common.messaging.connection import AmqpUrls, connect
from common.messaging.publisher import Publisher
from common.messaging.topology import declare_topology
from common.settings import load_settings
from common.store import tables
from common.store.db import make_engine
from tools.figures import number

_TERMINAL = frozenset(state.value for state in TERMINAL_STATES)
POLL_SECONDS = 0.2


def decimal_arg(text: str) -> Decimal:
    """argparse ``type=`` for a number: a finite decimal, or a usage error that says so."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_seconds(text: str) -> float:
    """argparse ``type=`` for a timeout in seconds (more than 0)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: the timeout must be more than 0 seconds")
    return value


async def publish_decision(amqp_url: AmqpUrls, body: dict[str, Any]) -> str:
    """Publish one decision with confirm; returns its message id."""
    # A person is waiting: a few tries, then the error (exit 1), rather than a worker's endless retrying.
    connection = await connect(amqp_url, "oms.decision-cli", attempts=3)
    try:
        channel = await connection.channel()
        await declare_topology(channel, load_settings().stage.delivery_limit)
        return await Publisher(connection).publish_json(
            TRADE_DECISION.exchange,
            TRADE_DECISION.routing_key,
            TRADE_DECISION.type,
            body,
            correlation_id=body["decisionId"],
            headers={ACCOUNT_HEADER: str(body["accountId"])},  # intake's partition: one account's decisions in order
        )
    finally:
        await connection.close()


def _order_of(engine: Engine, account_id: str, decision_id: str) -> dict[str, Any] | None:
    orders = tables.orders
    with engine.connect() as connection:
        row = (
            connection.execute(
                select(orders.c.id, orders.c.status, orders.c.state, orders.c.filled_quantity).where(
                    orders.c.account_id == account_id, orders.c.client_order_id == decision_id
                )
            )
            .mappings()
            .first()
        )
    return dict(row) if row is not None else None


def wait_for_final(engine: Engine, account_id: str, decision_id: str, timeout: float) -> dict[str, Any] | None:
    """Poll until the decision's order is done; prints its id once it exists. The order (last seen) or None."""
    deadline = time.monotonic() + timeout
    order: dict[str, Any] | None = None
    announced = False
    while True:
        order = _order_of(engine, account_id, decision_id)
        if order is not None and not announced:
            print(f"order {order['id']} booked", flush=True)
            announced = True
        if order is not None and order["state"] in _TERMINAL:
            return order
        if time.monotonic() >= deadline:
            return order
        time.sleep(POLL_SECONDS)  # polling the database, with a deadline


def _status(order: dict[str, Any]) -> str:
    return order["status"] if order["status"] == order["state"] else f"{order['status']} (state {order['state']})"


def main(argv: list[str]) -> int:
    """Entry point of ``oms decision``."""
    parser = argparse.ArgumentParser(prog="oms decision", description="send a trade decision to the OMS")
    parser.add_argument("--account", required=True)
    parser.add_argument("--symbol", required=True)
    parser.add_argument("--side", required=True, choices=["BUY", "SELL"])
    parser.add_argument("--type", default="MARKET", choices=["MARKET", "LIMIT", "STOP", "STOP_LIMIT"])
    parser.add_argument("--quantity", required=True, type=decimal_arg)
    parser.add_argument("--price", type=decimal_arg)
    parser.add_argument("--stop-price", type=decimal_arg)
    parser.add_argument("--tif", default="DAY", choices=["DAY", "GTC", "IOC", "FOK"])
    parser.add_argument("--strategy")
    parser.add_argument("--decision-id", default=None, help="idempotency key (default: a new UUID)")
    parser.add_argument(
        "--wait", action="store_true", help="wait for the order it becomes to be done; print its id and status"
    )
    parser.add_argument(
        "--timeout", type=positive_seconds, default=30.0, help="seconds --wait waits (default 30); exit 1 after"
    )
    parser.add_argument("--url", default=None, help="database URL for --wait (default: OMS_DATABASE_URL)")
    args = parser.parse_args(argv)
    body: dict[str, Any] = {
        "decisionId": args.decision_id or str(uuid.uuid4()),
        "accountId": args.account,
        "symbol": args.symbol,
        "side": args.side,
        "type": args.type,
        "quantity": args.quantity,
        "timeInForce": args.tif,
    }
    for key, value in (("price", args.price), ("stopPrice", args.stop_price), ("strategyId", args.strategy)):
        if value is not None:
            body[key] = value
    settings = load_settings()
    message_id = asyncio.run(publish_decision(settings.infra.amqp_urls, body))
    print(f"decision {body['decisionId']} published (message id {message_id})", flush=True)
    if not args.wait:
        return 0
    engine = make_engine(args.url or settings.infra.database_url, pool_size=1)
    try:
        order = wait_for_final(engine, args.account, body["decisionId"], args.timeout)
    finally:
        engine.dispose()
    if order is None:
        print(f"oms decision: no order for decision {body['decisionId']} after {args.timeout:g} s", file=sys.stderr)
        return 1
    if order["state"] not in _TERMINAL:
        print(f"oms decision: order {order['id']} is still {_status(order)} after {args.timeout:g} s", file=sys.stderr)
        return 1
    print(f"order {order['id']} {_status(order)}, filled {number(order['filled_quantity'])}")
    return 0
