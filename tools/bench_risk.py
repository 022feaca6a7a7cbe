"""``oms bench-risk``: what the risk checks cost per order, against the real database.

Sets up an account of its own with every limit on (so every rule runs), some positions and open orders, and
N NEW orders; then, in transactions that are rolled back (the orders stay NEW for the next run), times
batches of orders the way the stage sees them:

- baseline: lock the batch's orders and load each one (what any stage does before its handler);
- checks: the same, plus the gate's batch preparation (account locks and its queries) and every rule;
- handler: the whole stage handler (checks, plus approving, the audit event, the order update and the
  hand-over to the router).

Prints the median of the runs per order, the cost of the checks (checks - baseline) and the ratio. Removes
what it set up unless ``--keep``.

    ./oms bench-risk [--orders 1000] [--batch 200] [--runs 5] [--url URL]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, delete, insert, inspect

from common.messages.catalogue import RISK_CHECK
from common.messaging.envelope import Envelope
from common.risk import admin
from common.settings import load_settings
from common.store import tables
from common.store.db import make_engine
from common.store.tables import reference_prices, risk_limit_changes, risk_limits
from common.store.uow import UnitOfWork
from services.risk_gate.handlers import handle_risk_check, prepare, prepare_checks
from services.risk_gate.rules import RULE_NAMES, OrderTerms, evaluate

D = Decimal
SYMBOL_COUNT = 5
OPEN_ORDERS = 50
# Every limit on, wide enough that every order passes every rule (a rejection would stop the rules early).
LIMITS = {
    "max_order_quantity": "1000000",
    "max_order_notional": "1000000000",
    "price_collar_percent": "50",
    "max_position_quantity": "100000000",
    "max_gross_exposure": "100000000000",
    "max_open_orders": "1000000",
    "max_orders_per_second": "1000000",
    "max_strategy_orders_per_second": "1000000",
    "duplicate_window_seconds": "1",
    "enforce_trading_session": "true",
}


@dataclass(frozen=True)
class Setup:
    """What the benchmark made (removed at the end)."""

    account_id: str
    symbols: list[str]
    strategy_id: str
    order_ids: list[str]
    background_ids: list[str]


def _order_row(
    setup_account: str, symbol: str, strategy: str, quantity: Decimal, price: Decimal, state: str
) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "id": str(uuid.uuid4()),
        "account_id": setup_account,
        "symbol": symbol,
        "side": "BUY",
        "type": "LIMIT",
        "status": "PENDING",
        "quantity": quantity,
        "filled_quantity": D(0),
        "price": price,
        "time_in_force": "DAY",
        "strategy_id": strategy,
        "created_at": now,
        "updated_at": now,
        "state": state,
        "fees": D(0),
        "overfilled": False,
        "version": 1,
    }


def set_up(engine: Engine, orders: int) -> Setup:
    """An account with every limit on, positions and open orders in a few symbols, and ``orders`` NEW orders.

    Rows are inserted directly (no outbox rows): a running system must not pick the benchmark's orders up.
    """
    tag = uuid.uuid4().hex[:8].upper()
    account_id, strategy = f"BENCH-RISK-{tag}", f"bench-{tag}"
    symbols = [f"BR{tag}{i}" for i in range(SYMBOL_COUNT)]
    now = datetime.now(UTC)
    with engine.begin() as connection:
        connection.execute(
            insert(tables.accounts).values(
                id=account_id,
                name="risk benchmark",
                account_type="CASH",
                base_currency="USD",
                cash_balance=D("1000000000"),
                active=True,
                created_at=now,
            )
        )
        for symbol in symbols:
            connection.execute(
                insert(tables.instruments).values(
                    symbol=symbol,
                    name="risk benchmark",
                    asset_class="EQUITY",
                    currency="USD",
                    tick_size=D("0.01"),
                    lot_size=D("1"),
                    tradable=True,
                    reference_price=D("100"),
                    created_at=now,
                )
            )
            connection.execute(
                insert(reference_prices).values(
                    symbol=symbol, price=D("100"), source="bench", as_of=now + timedelta(hours=1), received_at=now
                )
            )
            connection.execute(
                insert(tables.positions).values(
                    account_id=account_id,
                    symbol=symbol,
                    quantity=D("1000"),
                    average_cost=D("95"),
                    realized_pnl=D(0),
                    updated_at=now,
                )
            )
        admin.set_limits(connection, account_id, LIMITS, by="oms bench-risk")
        background = [
            _order_row(account_id, symbols[i % SYMBOL_COUNT], strategy, D("10"), D("99"), "OPEN")
            for i in range(OPEN_ORDERS)
        ]
        # Distinct quantities: no order is a duplicate of another.
        pending = [
            _order_row(account_id, symbols[i % SYMBOL_COUNT], strategy, D(i + 1), D("101"), "NEW")
            for i in range(orders)
        ]
        for i, row in enumerate(pending):
            row["created_at"] = now - timedelta(seconds=orders - i)  # spread: the order-rate window stays small
        connection.execute(insert(tables.orders), background + pending)
    return Setup(account_id, symbols, strategy, [r["id"] for r in pending], [r["id"] for r in background])


def tear_down(engine: Engine, setup: Setup) -> None:
    """Remove everything ``set_up`` made."""
    ids = setup.order_ids + setup.background_ids
    with engine.begin() as connection:
        connection.execute(delete(tables.order_events).where(tables.order_events.c.order_id.in_(ids)))
        connection.execute(delete(tables.orders).where(tables.orders.c.id.in_(ids)))
        connection.execute(delete(tables.positions).where(tables.positions.c.account_id == setup.account_id))
        connection.execute(delete(risk_limits).where(risk_limits.c.account_id == setup.account_id))
        connection.execute(delete(risk_limit_changes).where(risk_limit_changes.c.account_id == setup.account_id))
        connection.execute(delete(reference_prices).where(reference_prices.c.symbol.in_(setup.symbols)))
        connection.execute(delete(tables.instruments).where(tables.instruments.c.symbol.in_(setup.symbols)))
        connection.execute(delete(tables.accounts).where(tables.accounts.c.id == setup.account_id))


def _batches(ids: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


@contextmanager
def _rolled_back(engine: Engine) -> Iterator[UnitOfWork]:
    with UnitOfWork(engine, claim_outbox=True) as uow:
        yield uow
        uow.rollback()


def baseline(engine: Engine, batch: list[str]) -> int:
    """Lock and load the batch's orders: the work before any stage's handler."""
    with _rolled_back(engine) as uow:
        uow.orders.lock(batch)
        for order_id in batch:
            assert uow.orders.get(order_id, for_update=True) is not None
    return 0


def checks(engine: Engine, batch: list[str]) -> int:
    """The baseline plus the gate's batch preparation and every rule; returns how many were approved."""
    passed = 0
    with _rolled_back(engine) as uow:
        uow.orders.lock(batch)
        prepared = prepare(uow, batch)
        for order_id in batch:
            order = uow.orders.get(order_id, for_update=True)
            assert order is not None
            terms = OrderTerms.of(order)
            decision = evaluate(prepared.input_for(terms, datetime.now(UTC)))
            if decision.approved:
                prepared.record_approval(terms, decision.quote)
                passed += 1
    return passed


def handler(engine: Engine, batch: list[str]) -> int:
    """The stage handler itself (checks, approve, events, order update, hand-over), rolled back."""
    with _rolled_back(engine) as uow:
        uow.orders.lock(batch)
        envelopes = [
            Envelope(str(uuid.uuid4()), RISK_CHECK.routing_key, {"order_id": order_id, "version": 1}, order_id)
            for order_id in batch
        ]
        prepare_checks(uow, envelopes)  # as the stage runtime does, once per batch
        for env in envelopes:
            handle_risk_check(uow, env)
    return len(batch)


def _time(step: Callable[[Engine, list[str]], int], engine: Engine, ids: list[str], size: int) -> tuple[float, int]:
    started = time.perf_counter()
    result = sum(step(engine, batch) for batch in _batches(ids, size))
    return time.perf_counter() - started, result


def main(argv: list[str]) -> int:
    """Entry point of ``oms bench-risk``."""
    parser = argparse.ArgumentParser(prog="oms bench-risk", description="cost of the risk checks per order")
    parser.add_argument("--url", default=None, help="database URL (default: OMS_DATABASE_URL)")
    parser.add_argument("--orders", type=int, default=1000, help="orders per run (default 1000)")
    parser.add_argument("--batch", type=int, default=200, help="orders per transaction, as the stage (default 200)")
    parser.add_argument("--runs", type=int, default=5, help="runs; the median is reported (default 5)")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark's account and orders")
    args = parser.parse_args(argv)
    if args.orders < 1 or args.batch < 1 or args.runs < 1:
        parser.error("--orders, --batch and --runs must be positive")
    engine = make_engine(args.url or load_settings().infra.database_url)
    try:
        if not inspect(engine).has_table("risk_limits"):
            print("oms bench-risk: the database lacks the risk tables; run ./oms migrate first", file=sys.stderr)
            return 1
        setup = set_up(engine, args.orders)
        try:
            return _measure(engine, setup, args.batch, args.runs)
        finally:
            if not args.keep:
                tear_down(engine, setup)
    finally:
        engine.dispose()


def _measure(engine: Engine, setup: Setup, size: int, runs: int) -> int:
    ids = setup.order_ids
    steps = {"baseline": baseline, "checks": checks, "handler": handler}
    _time(checks, engine, ids[:size], size)  # warm-up: connections, statement caches
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for run in range(runs):
        # Alternate the order so drift (autovacuum, caches) does not favour one step.
        order = list(steps) if run % 2 == 0 else list(reversed(steps))
        for name in order:
            elapsed, result = _time(steps[name], engine, ids, size)
            seconds[name].append(elapsed)
            if name == "checks" and result != len(ids):
                print(f"oms bench-risk: only {result} of {len(ids)} orders passed; the rules stopped early")
                return 1
    per_order = {name: statistics.median(values) / len(ids) * 1e6 for name, values in seconds.items()}
    cost = per_order["checks"] - per_order["baseline"]
    print(
        f"risk checks: {len(ids)} orders x {runs} runs, batches of {size}, {len(RULE_NAMES)} rules on,"
        f" {OPEN_ORDERS} open orders and {SYMBOL_COUNT} positions in the account (median per order)"
    )
    print(f"  baseline (lock + load the order)        {per_order['baseline']:9.1f} us")
    print(f"  with the checks                          {per_order['checks']:9.1f} us")
    print(f"  the whole handler (approve, save, route) {per_order['handler']:9.1f} us")
    print(f"  cost of the checks                       {cost:9.1f} us per order")
    print(f"  ratio checks / baseline                  {per_order['checks'] / per_order['baseline']:9.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
