"""``oms bench``: end-to-end throughput of the pipeline, batched against one message per transaction.

Each configuration runs the whole system (every stage worker, the relay and the simulated venue, each its own
process, co-located on this machine) on a database and vhost of its own. A run publishes N trade decisions
with confirms and times until every order is FILLED and every fill is settled. The figure is the median over
the runs; the baseline is the same pipeline with batches of one (one transaction and one confirm round trip per
message), measured in the same invocation, so the ratio holds on a noisy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from decimal import Decimal

from sqlalchemy import text

from common import jsonutil
from common.messaging.connection import connect
from common.messaging.publisher import Publisher
from common.messaging.topology import OMS_EXCHANGE, declare_topology
from common.store.outbox import OutboxMessage
from tools import infra
from tools.sandbox import Sandbox, sandbox

_SETTLED = text(
    "SELECT (SELECT count(*) FROM orders WHERE strategy_id = :run AND state = 'FILLED'), "
    "(SELECT count(*) FROM trade_confirmations c JOIN orders o ON o.id = c.order_id WHERE o.strategy_id = :run)"
)


def _decisions(run: str, count: int) -> list[OutboxMessage]:
    symbols = ("AAPL", "MSFT", "SPY")
    messages = []
    for i in range(count):
        decision_id = str(uuid.uuid4())
        body = {
            "decisionId": decision_id,
            "accountId": "ACC-001" if i % 2 else "ACC-002",
            "symbol": symbols[i % len(symbols)],
            "side": "BUY" if i % 3 else "SELL",
            "type": "MARKET",
            "quantity": Decimal(1 + i % 5),
            "timeInForce": "DAY",
            "strategyId": run,
        }
        messages.append(
            OutboxMessage(
                str(uuid.uuid4()), OMS_EXCHANGE, "intake.decision", "TradeDecision", decision_id, jsonutil.dumps(body)
            )
        )
    return messages


async def _one_run(box: Sandbox, orders: int, timeout: float) -> tuple[float, float]:
    """Publish ``orders`` decisions; returns (seconds to publish, seconds until all settled)."""
    run = f"bench-{uuid.uuid4().hex[:12]}"
    messages = _decisions(run, orders)
    connection = await connect(box.amqp_url, "oms.bench")
    try:
        await declare_topology(await connection.channel(), 5)
        publisher = Publisher(connection)
        started = time.perf_counter()
        for i in range(0, len(messages), 500):
            confirmed = await publisher.publish(messages[i : i + 500])
            if len(confirmed) != len(messages[i : i + 500]):
                raise RuntimeError("decisions not confirmed by the broker")
        published = time.perf_counter() - started
        deadline = started + timeout
        while True:
            with box.engine.connect() as db:
                filled, settled = db.execute(_SETTLED, {"run": run}).one()
            if filled == orders and settled >= orders:
                return published, time.perf_counter() - started
            if time.perf_counter() > deadline:
                raise RuntimeError(f"run {run}: {filled}/{orders} filled, {settled} settled after {timeout}s")
            await asyncio.sleep(0.05)  # polling the database for the end of the run
    finally:
        await connection.close()


def _measure(batch_size: int, orders: int, repeats: int, timeout: float) -> list[float]:
    env = {
        "OMS_BATCH_SIZE": str(batch_size),
        "OMS_VENUE_PARTIAL_FILLS": "1",
        "OMS_VENUE_LATENCY_MS": "0",
        "OMS_LOG_LEVEL": "WARNING",
    }
    rates = []
    with sandbox(infra.ensure_started(), with_venue=True, env=env, label="oms_bench") as box:
        asyncio.run(_one_run(box, min(orders, 200), timeout))  # warm-up: connections, prepared statements
        for _ in range(repeats):
            published, settled = asyncio.run(_one_run(box, orders, timeout))
            rates.append(orders / settled)
            print(
                f"  batch {batch_size:>4}: {orders} orders published in {published:.2f}s, "
                f"settled in {settled:.2f}s -> {orders / settled:.0f} orders/s"
            )
    return rates


def main(argv: list[str]) -> int:
    """Entry point of ``oms bench``."""
    parser = argparse.ArgumentParser(prog="oms bench", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--orders", type=int, default=2000, help="orders per run (default 2000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration (default 3)")
    parser.add_argument("--batch", type=int, default=200, help="batch size under test (default 200)")
    parser.add_argument("--baseline-orders", type=int, default=500, help="orders per baseline run (default 500)")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)

    print("baseline: batches of 1 (one transaction per message per stage)")
    baseline = statistics.median(_measure(1, args.baseline_orders, args.repeats, args.timeout))
    print(f"batched: batches of up to {args.batch}")
    batched = statistics.median(_measure(args.batch, args.orders, args.repeats, args.timeout))
    print(
        f"\nmedian end-to-end throughput (decision -> FILLED -> settled, all processes on this machine):\n"
        f"  batch 1:            {baseline:8.0f} orders/s\n"
        f"  batch {args.batch:<4}         {batched:8.0f} orders/s\n"
        f"  ratio:              {batched / baseline:8.1f} x"
    )
    return 0
