"""``oms decision``: publish a trade decision on the ``oms`` exchange, as the strategy service does."""

from __future__ import annotations

import argparse
import asyncio
import uuid
from decimal import Decimal
from typing import Any

from common.config import load_settings
from common.messaging.connection import connect
from common.messaging.publisher import Publisher
from common.messaging.topology import OMS_EXCHANGE, declare_topology


async def publish_decision(amqp_url: str, body: dict[str, Any]) -> str:
    """Publish one decision with confirm; returns its message id."""
    connection = await connect(amqp_url, "oms.decision-cli")
    try:
        channel = await connection.channel()
        await declare_topology(channel, load_settings().delivery_limit)
        return await Publisher(connection).publish_json(
            OMS_EXCHANGE, "intake.decision", "TradeDecision", body, correlation_id=body["decisionId"]
        )
    finally:
        await connection.close()


def main(argv: list[str]) -> int:
    """Entry point of ``oms decision``."""
    parser = argparse.ArgumentParser(prog="oms decision", description="send a trade decision to the OMS")
    parser.add_argument("--account", required=True)
    parser.add_argument("--symbol", required=True)
    parser.add_argument("--side", required=True, choices=["BUY", "SELL"])
    parser.add_argument("--type", default="MARKET", choices=["MARKET", "LIMIT", "STOP", "STOP_LIMIT"])
    parser.add_argument("--quantity", required=True, type=Decimal)
    parser.add_argument("--price", type=Decimal)
    parser.add_argument("--stop-price", type=Decimal)
    parser.add_argument("--tif", default="DAY", choices=["DAY", "GTC", "IOC", "FOK"])
    parser.add_argument("--strategy")
    parser.add_argument("--decision-id", default=None, help="idempotency key (default: a new UUID)")
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
    message_id = asyncio.run(publish_decision(load_settings().amqp_url, body))
    print(f"decision {body['decisionId']} published (message id {message_id})")
    return 0
