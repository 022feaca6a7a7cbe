"""The risk gate's rule set on the real database, through the stage handler and worker.

Every rule at its boundary (just inside passes, just outside rejects, with the reason a user reads), concurrent
orders against one limit, limit and kill-switch changes applied by a running worker, the operations API and
command, and the reference price feed. Each test makes accounts and instruments of its own.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import aio_pika
import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine, delete, insert, select, update

from common import jsonutil
from common.contracts import FillBookedSchema, RiskCheckSchema, RouteReplaceSchema
from common.messaging.envelope import Envelope
from common.orders.commands import cancel_order, modify_order
from common.risk import admin
from common.runtime.stage import StageWorker
from common.settings import InfraSettings, Settings
from common.store import tables
from common.store.tables import reference_prices, risk_limit_changes
from common.store.uow import UnitOfWork
from services.risk_gate.handlers import check_order, check_replace_terms, handle_risk_check, prepare
from services.risk_gate.prices import FeedPrice, NoPriceBehaviour, PriceSettings, ReferencePriceConsumer, store_prices
from services.risk_gate.spec import SPEC
from services.router.handlers import handle_route_replace
from services.settlement.spec import handle_fill_booked
from tests.support.api import ALL_SCOPES, bearer, store_order
from tests.support.api import new_account as new_test_account
from tests.support.orders import (
    envelope_of,
    handle,
    last_event,
    order_row,
    outbox_bodies,
    outbox_of,
    request_row,
    risk_check,
    submit_new,
)
from tests.support.polling import async_wait_until
from tools import risk as risk_command

pytestmark = pytest.mark.integration

D = Decimal


# ------------------------------------------------------------------------------------------------ helpers


OPERATOR = {"Authorization": bearer(scopes=ALL_SCOPES, subject="ops-anna")}


def js(response: Any) -> Any:
    """A response's JSON body (there must be one)."""
    data = response.get_json()
    assert data is not None, response
    return data


def new_account(engine: Engine, account_type: str = "MARGIN", cash: Decimal = D("1000000")) -> str:
    return new_test_account(engine, prefix="RG-", account_type=account_type, cash=cash)


def new_instrument(engine: Engine, reference_price: Decimal | None = D("100"), **extra: Any) -> str:
    symbol = f"RG{uuid.uuid4().hex[:8].upper()}"
    values: dict[str, Any] = {
        "symbol": symbol,
        "name": f"risk test {symbol}",
        "asset_class": "EQUITY",
        "currency": "USD",
        "tick_size": D("0.01"),
        "lot_size": D("1"),
        "tradable": True,
        "settlement_days": 0,
        "reference_price": reference_price,
        "created_at": datetime.now(UTC),
        **extra,
    }
    with engine.begin() as connection:
        connection.execute(insert(tables.instruments).values(**values))
    return symbol


def set_limits(engine: Engine, account_id: str | None, **values: Any) -> None:
    with engine.begin() as connection:
        admin.set_limits(connection, account_id, values, by="tester", reason="test")


def feed(engine: Engine, symbol: str, price: Decimal, age: timedelta = timedelta(0)) -> None:
    with engine.begin() as connection:
        connection.execute(delete(reference_prices).where(reference_prices.c.symbol == symbol))
    store_prices(engine, {symbol: FeedPrice(symbol, price, datetime.now(UTC) - age)}, datetime.now(UTC))


def submit(engine: Engine, account_id: str, symbol: str, **fields: Any) -> tuple[str, int]:
    return submit_new(engine, **{"account_id": account_id, "symbol": symbol, "price": D("100"), **fields})


def check(engine: Engine, order_id: str, version: int) -> dict[str, Any]:
    """Run the stage handler on the order's RiskCheck; the order row afterwards."""
    handle(engine, handle_risk_check, risk_check(order_id, version))
    return order_row(engine, order_id)


def place(engine: Engine, account_id: str, symbol: str, **fields: Any) -> dict[str, Any]:
    """Submit an order and run the gate on it."""
    return check(engine, *submit(engine, account_id, symbol, **fields))


def approved(row: dict[str, Any]) -> bool:
    assert row["state"] in ("APPROVED", "REJECTED"), row["state"]
    return bool(row["state"] == "APPROVED")


def rejection(row: dict[str, Any]) -> tuple[str, str]:
    assert row["state"] == "REJECTED", row
    return row["rejection_code"], row["rejection_reason"]


def set_created_at(engine: Engine, order_id: str, when: datetime) -> None:
    with engine.begin() as connection:
        connection.execute(update(tables.orders).where(tables.orders.c.id == order_id).values(created_at=when))


def book_fill(
    engine: Engine, order_id: str, account_id: str, symbol: str, side: str, quantity: str, price: str
) -> None:
    """Book an execution through the settlement stage's handler, as the pipeline does after a fill."""
    body = FillBookedSchema().load(
        {
            "orderId": order_id,
            "executionId": str(uuid.uuid4()),
            "accountId": account_id,
            "symbol": symbol,
            "side": side,
            "quantity": quantity,
            "price": price,
            "fees": "0",
            "venue": "SIM",
            "timestamp": datetime.now(UTC).isoformat(),
            "reversal": False,
        }
    )
    handle(engine, handle_fill_booked, Envelope(str(uuid.uuid4()), "settlement.fill", body, order_id, "FillBooked"))


# ------------------------------------------------------------------------------------------------ boundaries


PER_ORDER_CASES = [
    pytest.param(
        {"max_order_quantity": "100"},
        {"quantity": D("100")},
        {"quantity": D("101")},
        "MARGIN",
        ("MAX_ORDER_QUANTITY_EXCEEDED", "quantity 101 exceeds the maximum order quantity 100"),
        id="max_order_quantity",
    ),
    pytest.param(
        {"max_order_notional": "10000"},
        {"price": D("100")},
        {"price": D("100.01")},
        "MARGIN",
        ("MAX_NOTIONAL_EXCEEDED", "notional 10001 (100 at 100.01) exceeds the maximum order notional 10000"),
        id="max_order_notional",
    ),
    pytest.param(
        {"price_collar_percent": "10"},
        {"price": D("110")},
        {"price": D("110.01")},
        "MARGIN",
        ("PRICE_COLLAR_BREACHED", "price 110.01 is 10.01% from the reference price 100 (feed); the collar is 10%"),
        id="price_collar",
    ),
    pytest.param(
        {"max_gross_exposure": "10000"},
        {"quantity": D("100"), "price": D("90")},  # valued at the reference price: 100 x 100
        {"quantity": D("101"), "price": D("90")},
        "MARGIN",
        ("MAX_GROSS_EXPOSURE_EXCEEDED", "to 10100 (now 0); the limit is 10000"),
        id="max_gross_exposure",
    ),
    pytest.param(
        {},
        {"quantity": D("100"), "price": D("100")},
        {"quantity": D("100"), "price": D("100.01")},
        "CASH",
        ("INSUFFICIENT_BUYING_POWER", "the order costs 10001 (100 at 100.01) but cash account"),
        id="buying_power",
    ),
]


@pytest.mark.parametrize(("limits", "inside", "outside", "account_type", "expected"), PER_ORDER_CASES)
def test_a_per_order_rule_at_its_boundary(
    engine: Engine,
    limits: dict[str, str],
    inside: dict[str, Any],
    outside: dict[str, Any],
    account_type: str,
    expected: tuple[str, str],
) -> None:
    symbol = new_instrument(engine)
    feed(engine, symbol, D("100"))
    accounts = [new_account(engine, account_type, cash=D("10000")) for _ in range(2)]
    for account_id in accounts:
        set_limits(engine, account_id, **limits)

    assert approved(place(engine, accounts[0], symbol, **inside))
    code, reason = rejection(place(engine, accounts[1], symbol, **outside))
    assert code == expected[0]
    assert expected[1] in reason


def test_a_rejection_records_the_rule_and_its_figures(engine: Engine) -> None:
    account_id, symbol = new_account(engine), new_instrument(engine)
    set_limits(engine, account_id, max_order_notional="10000")
    order_id, version = submit(engine, account_id, symbol, price=D("100.01"))
    check(engine, order_id, version)
    event = last_event(engine, order_id)
    assert event["type"] == "ORDER_REJECTED"
    payload = event["payload"]
    assert (payload["code"], payload["rule"], payload["field"]) == (
        "MAX_NOTIONAL_EXCEEDED",
        "max_order_notional",
        "quantity",
    )
    assert payload["figures"] == {"limit": 10000, "value": D("10001"), "price": D("100.01")}
    assert payload["checks"][-1] == "max_order_notional"


def test_an_approval_records_the_checks_the_limits_and_the_reference_price(engine: Engine) -> None:
    account_id, symbol = new_account(engine), new_instrument(engine)
    feed(engine, symbol, D("101.5"))
    set_limits(engine, account_id, price_collar_percent="5", max_open_orders="10")
    order_id, version = submit(engine, account_id, symbol)
    assert approved(check(engine, order_id, version))
    payload = last_event(engine, order_id)["payload"]
    assert payload["checks"] == [
        "account_active",
        "kill_switch",
        "instrument_tradable",
        "restricted_symbol",
        "max_open_orders",
        "reference_price",
        "max_order_quantity",
        "max_order_notional",
        "price_collar",
    ]
    assert (payload["reference_price"]["price"], payload["reference_price"]["source"]) == (D("101.5"), "feed")
    assert payload["limits"]["price_collar_percent"] == 5 and payload["limits"]["max_open_orders"] == 10


def test_max_position_counts_the_fills_settlement_booked_and_the_open_orders(engine: Engine) -> None:
    account_id, symbol = new_account(engine), new_instrument(engine)
    set_limits(engine, account_id, max_position_quantity="1000")
    filled = store_order(
        engine, account_id, symbol, quantity=D("500"), price=D("100"), status="FILLED", fill_price=D("100")
    )
    book_fill(engine, filled, account_id, symbol, "BUY", "500", "100")

    assert approved(place(engine, account_id, symbol, quantity=D("300")))  # 500 + 300
    assert approved(place(engine, account_id, symbol, quantity=D("200")))  # 500 + 500 = the limit
    code, reason = rejection(place(engine, account_id, symbol, quantity=D("1")))
    assert code == "MAX_POSITION_EXCEEDED"
    assert reason == f"BUY 1 {symbol} could take the position to 1001 (position 500, open buys 500); the limit is 1000"
    # Selling reduces the long side: it passes however full the buy side is.
    assert approved(place(engine, account_id, symbol, side="SELL", quantity=D("1500")))
    code, reason = rejection(place(engine, account_id, symbol, side="SELL", quantity=D("1")))
    assert "could take the position to -1001 (position 500, open sells 1500)" in reason


def test_buying_power_counts_unsettled_trades_and_open_buys(engine: Engine) -> None:
    account_id, symbol = new_account(engine, "CASH", cash=D("10000")), new_instrument(engine)
    filled = store_order(
        engine, account_id, symbol, quantity=D("50"), price=D("100"), status="FILLED", fill_price=D("100")
    )
    book_fill(engine, filled, account_id, symbol, "BUY", "50", "100")  # 5000 owed at settlement

    assert approved(place(engine, account_id, symbol, quantity=D("30")))  # 3000 of the 5000 left
    assert approved(place(engine, account_id, symbol, quantity=D("20")))  # the last 2000
    code, reason = rejection(place(engine, account_id, symbol, quantity=D("1"), price=D("0.01")))
    assert code == "INSUFFICIENT_BUYING_POWER"
    assert reason == (
        f"the order costs 0.01 (1 at 0.01) but cash account {account_id} can spend 0"
        " (cash 10000, unsettled -5000, open buys 5000)"
    )
    assert approved(place(engine, account_id, symbol, side="SELL", quantity=D("10")))


def test_open_market_buys_of_a_cash_account_cost_their_leaves_at_the_reference_price(engine: Engine) -> None:
    account_id, symbol = new_account(engine, "CASH", cash=D("10000")), new_instrument(engine, D("100"))
    assert approved(place(engine, account_id, symbol, type="MARKET", price=None, quantity=D("60")))
    code, reason = rejection(place(engine, account_id, symbol, quantity=D("41")))
    assert code == "INSUFFICIENT_BUYING_POWER" and reason.endswith("(cash 10000, unsettled 0, open buys 6000)")
    assert approved(place(engine, account_id, symbol, quantity=D("40")))


def test_max_open_orders_at_its_limit_and_a_cancel_frees_a_place(engine: Engine) -> None:
    account_id, symbol = new_account(engine), new_instrument(engine)
    set_limits(engine, account_id, max_open_orders="2")
    first = place(engine, account_id, symbol, price=D("99"))
    assert approved(first)
    assert approved(place(engine, account_id, symbol, price=D("98")))
    code, reason = rejection(place(engine, account_id, symbol, price=D("97")))
    assert (code, reason) == ("MAX_OPEN_ORDERS_EXCEEDED", f"account {account_id} already has 2 open orders (limit 2)")
    with UnitOfWork(engine) as uow:
        cancel_order(uow, first["id"], reason="make room", user_id="trader")
        uow.commit()
    assert approved(place(engine, account_id, symbol, price=D("96")))


def test_the_account_order_rate_at_its_limit(engine: Engine) -> None:
    account_id, symbol = new_account(engine), new_instrument(engine)
    set_limits(engine, account_id, max_orders_per_second="2")
    moment = datetime.now(UTC).replace(microsecond=0)
    orders = [submit(engine, account_id, symbol, price=D(f"9{i}")) for i in range(4)]
    for (order_id, _), when in zip(orders, [moment, moment, moment, moment + timedelta(seconds=1)], strict=True):
        set_created_at(engine, order_id, when)

    assert approved(check(engine, *orders[0]))
    assert approved(check(engine, *orders[1]))
    code, reason = rejection(check(engine, *orders[2]))
    assert (code, reason) == (
        "ORDER_RATE_EXCEEDED",
        f"account {account_id} already sent 2 orders in the last second (limit 2 per second)",
    )
    # A second later the window has moved past the first two.
    assert approved(check(engine, *orders[3]))


def test_the_strategy_order_rate_counts_every_account_of_the_strategy(engine: Engine) -> None:
    symbol, strategy = new_instrument(engine), f"strat-{uuid.uuid4().hex[:8]}"
    accounts = [new_account(engine) for _ in range(2)]
    for account_id in accounts:
        set_limits(engine, account_id, max_strategy_orders_per_second="1")
    moment = datetime.now(UTC)
    first = submit(engine, accounts[0], symbol, strategy_id=strategy)
    second = submit(engine, accounts[1], symbol, strategy_id=strategy)
    later = submit(engine, accounts[1], symbol, strategy_id=strategy, price=D("99"))
    set_created_at(engine, first[0], moment)
    set_created_at(engine, second[0], moment + timedelta(milliseconds=999))
    set_created_at(engine, later[0], moment + timedelta(seconds=1))

    assert approved(check(engine, *first))
    code, reason = rejection(check(engine, *second))
    assert (code, reason) == (
        "STRATEGY_ORDER_RATE_EXCEEDED",
        f"strategy {strategy} already sent 1 orders in the last second (limit 1 per second)",
    )
    assert approved(check(engine, *later))


def test_a_duplicate_inside_the_window_is_rejected_and_one_just_outside_passes(engine: Engine) -> None:
    account_id, symbol = new_account(engine), new_instrument(engine)
    set_limits(engine, account_id, duplicate_window_seconds="2")
    moment = datetime.now(UTC)
    orders = [submit(engine, account_id, symbol) for _ in range(3)]
    for (order_id, _), offset in zip(orders, ["0", "2", "2.001"], strict=True):
        set_created_at(engine, order_id, moment + timedelta(seconds=float(offset)))

    assert approved(check(engine, *orders[0]))
    code, reason = rejection(check(engine, *orders[1]))
    assert code == "DUPLICATE_ORDER"
    assert reason == (
        f"duplicate of order {orders[0][0]}: BUY 100 {symbol} at 100 for account {account_id} 2s apart (window 2s)"
    )
    assert approved(check(engine, *orders[2]))  # 2.001s after the first; the second was rejected
    assert approved(place(engine, account_id, symbol, quantity=D("101")))  # a different quantity


def test_restricted_symbols_per_account_and_for_everyone(engine: Engine) -> None:
    symbol = new_instrument(engine)
    restricted, other = new_account(engine), new_account(engine)
    with engine.begin() as connection:
        assert admin.restrict(connection, restricted, symbol, by="tester", reason="insider list")
    code, reason = rejection(place(engine, restricted, symbol))
    assert (code, reason) == ("SYMBOL_RESTRICTED", f"{symbol} is restricted for account {restricted}: insider list")
    assert approved(place(engine, other, symbol))

    with engine.begin() as connection:
        assert admin.restrict(connection, None, symbol, by="tester", reason=None)
    assert rejection(place(engine, other, symbol)) == ("SYMBOL_RESTRICTED", f"{symbol} is restricted for all accounts")
    with engine.begin() as connection:
        assert admin.unrestrict(connection, None, symbol, by="tester", reason=None)
        assert admin.unrestrict(connection, restricted, symbol, by="tester", reason=None)
    assert approved(place(engine, restricted, symbol))


def test_an_instrument_suspended_after_intake_is_rejected(engine: Engine) -> None:
    account_id, symbol = new_account(engine), new_instrument(engine)
    order = submit(engine, account_id, symbol)
    with engine.begin() as connection:
        connection.execute(
            update(tables.instruments).where(tables.instruments.c.symbol == symbol).values(tradable=False)
        )
    assert rejection(check(engine, *order)) == ("INSTRUMENT_NOT_TRADABLE", f"instrument {symbol} is not tradable")


def test_outside_the_trading_session_is_rejected_when_sessions_are_enforced(engine: Engine) -> None:
    now = datetime.now(UTC)
    # A UTC session that closed a minute ago (minute precision keeps it clear of midnight).
    start = (now - timedelta(hours=2)).time().replace(second=0, microsecond=0)
    end = (now - timedelta(minutes=1)).time().replace(second=0, microsecond=0)
    if end <= start:
        pytest.skip("too close to midnight UTC for a same-day session window")
    symbol = new_instrument(engine, session_open=start, session_close=end, session_timezone="UTC")
    lenient, strict = new_account(engine), new_account(engine)
    set_limits(engine, strict, enforce_trading_session="true")
    assert approved(place(engine, lenient, symbol))
    code, reason = rejection(place(engine, strict, symbol))
    assert code == "OUTSIDE_TRADING_SESSION"
    assert reason.startswith(f"{symbol} trades {start:%H:%M}-{end:%H:%M} UTC on weekdays; it is ")

    open_now = new_instrument(engine, session_open=time(0, 0), session_close=time(23, 59, 59), session_timezone="UTC")
    if now.weekday() < 5 and now.time() < time(23, 59):
        assert approved(place(engine, strict, open_now))


def test_the_kill_switch_halts_new_orders_but_not_cancels(engine: Engine) -> None:
    account_id, symbol = new_account(engine), new_instrument(engine)
    working = store_order(engine, account_id, symbol, quantity=D("10"), price=D("100"), status="OPEN")
    unchecked = submit(engine, account_id, symbol, price=D("99"))
    with engine.begin() as connection:
        halt, new = admin.halt(connection, account_id, by="ops-anna", reason="runaway strategy")
    assert new

    code, reason = rejection(place(engine, account_id, symbol))
    assert code == "TRADING_HALTED"
    assert reason == (
        f"new orders are halted for account {account_id} since {halt.since.isoformat(timespec='seconds')}"
        " by ops-anna: runaway strategy"
    )
    with UnitOfWork(engine) as uow:
        canceled_here = cancel_order(uow, unchecked[0], reason="flatten", user_id="trader")
        at_venue = cancel_order(uow, working, reason="flatten", user_id="trader")
        uow.commit()
    assert canceled_here.state == "CANCELED"
    assert at_venue.pending_request is not None and at_venue.pending_request.kind == "CANCEL"

    with engine.begin() as connection:
        assert admin.resume(connection, account_id, by="ops-anna", reason="fixed")
    assert approved(place(engine, account_id, symbol))


def test_a_global_halt_stops_every_account(engine: Engine) -> None:
    symbol = new_instrument(engine)
    accounts = [new_account(engine) for _ in range(2)]
    try:
        with engine.begin() as connection:
            admin.halt(connection, None, by="ops-anna", reason="venue outage")
        for account_id in accounts:
            code, reason = rejection(place(engine, account_id, symbol))
            assert code == "TRADING_HALTED" and "halted for all accounts" in reason
    finally:
        with engine.begin() as connection:
            admin.resume(connection, None, by="ops-anna", reason="venue back")
    assert approved(place(engine, accounts[0], symbol))


# ------------------------------------------------------------------------------------------------ prices


def _check_with(engine: Engine, order: tuple[str, int], settings: PriceSettings) -> dict[str, Any]:
    with UnitOfWork(engine, claim_outbox=True) as uow:
        check_order(uow, risk_check(*order), prepare(uow, [order[0]], settings))
        uow.commit()
    return order_row(engine, order[0])


def test_reference_prices_go_stale_and_the_configured_fallback_applies(engine: Engine) -> None:
    account_id, symbol = new_account(engine), new_instrument(engine, reference_price=D("100"))
    set_limits(engine, account_id, price_collar_percent="10")
    settings = PriceSettings(staleness=timedelta(seconds=30))
    rejecting = PriceSettings(staleness=timedelta(seconds=30), no_price=NoPriceBehaviour.REJECT)

    feed(engine, symbol, D("120"), age=timedelta(seconds=29))
    assert approved(_check_with(engine, submit(engine, account_id, symbol, price=D("130")), settings))

    feed(engine, symbol, D("120"), age=timedelta(seconds=31))  # stale: the instrument's 100 applies
    row = _check_with(engine, submit(engine, account_id, symbol, price=D("110")), settings)
    assert approved(row)
    reference = last_event(engine, row["id"])["payload"]["reference_price"]
    assert (reference["price"], reference["source"]) == (100, "instrument")
    assert reference["note"].startswith(f"the feed price of {symbol} is 31")

    code, reason = rejection(_check_with(engine, submit(engine, account_id, symbol, price=D("110")), rejecting))
    assert code == "NO_REFERENCE_PRICE"
    assert reason.startswith(f"no fresh reference price: the feed price of {symbol} is 31")
    assert reason.endswith("old (limit 30s), and the configured behaviour is to reject")


async def test_the_feed_consumer_stores_the_latest_prices(engine: Engine, amqp_url: str) -> None:
    symbol = new_instrument(engine)
    consumer = ReferencePriceConsumer(engine, amqp_url, flush_seconds=0.05)
    task = asyncio.create_task(consumer.run())
    try:
        await consumer.wait_ready(10)
        connection = await aio_pika.connect_robust(amqp_url)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange("marketdata")
            stamp = datetime.now(UTC)
            for price, offset in (("101.25", 0), ("101.50", 1), ("99.00", -5)):  # the last one is older
                body = {"symbol": symbol, "price": D(price), "timestamp": stamp + timedelta(seconds=offset)}
                await exchange.publish(aio_pika.Message(jsonutil.dumps(body).encode()), routing_key=f"prices.{symbol}")

            def stored() -> Decimal | None:
                with engine.connect() as db:
                    return db.execute(
                        select(reference_prices.c.price).where(reference_prices.c.symbol == symbol)
                    ).scalar()

            assert await async_wait_until(lambda: stored() == D("101.50"), timeout=60)
    finally:
        consumer.stop()
        await task


# ------------------------------------------------------------------------------------------------ modify


def test_a_modify_is_checked_again_on_its_new_terms(engine: Engine) -> None:
    account_id, symbol = new_account(engine), new_instrument(engine)
    set_limits(engine, account_id, max_order_quantity="100")
    order_id, version = submit(engine, account_id, symbol)
    assert approved(check(engine, order_id, version))
    with UnitOfWork(engine) as uow:
        modified = modify_order(
            uow, order_id, quantity=D("101"), price=None, stop_price=None, notes=None, user_id="trader"
        )
        uow.commit()
    assert rejection(check(engine, order_id, modified.version))[0] == "MAX_ORDER_QUANTITY_EXCEEDED"


def test_replace_terms_count_instead_of_the_old_ones(engine: Engine) -> None:
    account_id, symbol = new_account(engine), new_instrument(engine)
    set_limits(engine, account_id, max_position_quantity="1000")
    working = store_order(engine, account_id, symbol, quantity=D("800"), price=D("100"), status="OPEN")
    with UnitOfWork(engine) as uow:
        order = uow.orders.get(working)
        assert order is not None
        assert check_replace_terms(uow, order, D("1000"), D("100"), None).approved
        decision = check_replace_terms(uow, order, D("1001"), D("100"), None)
    assert decision.violation is not None and decision.violation.code == "MAX_POSITION_EXCEEDED"


def replace_check(engine: Engine, order_id: str, quantity: Decimal) -> tuple[str, dict[str, Any]]:
    """Modify an order at the venue and run the gate on the replace's RiskCheck; the request id and its row."""
    with UnitOfWork(engine) as uow:
        modify_order(uow, order_id, quantity=quantity, price=None, stop_price=None, notes=None, user_id="trader")
        uow.commit()
    row = outbox_of(engine, order_id, "risk.check")[-1]
    env = envelope_of(row, RiskCheckSchema().load(row["body"]), as_sent=False)
    handle(engine, handle_risk_check, env)
    request_id = env.body["request_id"]
    return request_id, request_row(engine, request_id)


def test_a_replace_that_breaks_a_limit_is_rejected_and_the_order_keeps_its_terms(engine: Engine) -> None:
    account_id, symbol = new_account(engine), new_instrument(engine)
    set_limits(engine, account_id, max_order_quantity="1000")
    order_id = store_order(engine, account_id, symbol, quantity=D("800"), price=D("100"), status="OPEN")

    request_id, request = replace_check(engine, order_id, D("1001"))
    assert request["status"] == "REJECTED"
    assert request["reason"].startswith("MAX_ORDER_QUANTITY_EXCEEDED: ")
    order = order_row(engine, order_id)
    assert (order["state"], order["quantity"], order["pending_request"]) == ("OPEN", D("800"), None)
    assert (order["rejection_code"], order["rejection_reason"]) == (None, None)  # the order itself stands
    event = last_event(engine, order_id)
    assert event["type"] == "REPLACE_REJECTED"
    payload = event["payload"]
    assert (payload["request_id"], payload["code"], payload["source"]) == (
        request_id,
        "MAX_ORDER_QUANTITY_EXCEEDED",
        "risk",
    )
    assert payload["reason"] == request["reason"].removeprefix("MAX_ORDER_QUANTITY_EXCEEDED: ")
    assert (payload["rule"], payload["field"]) == ("max_order_quantity", "quantity")
    assert D(str(payload["figures"]["limit"])) == D("1000")
    assert outbox_bodies(engine, order_id, "router.replace") == []

    # Refused, the replace is forgotten: the user may ask again, within the limit.
    request_id, request = replace_check(engine, order_id, D("1000"))
    assert request["status"] == "PENDING"
    assert outbox_bodies(engine, order_id, "router.replace") == [{"orderId": order_id, "requestId": request_id}]


def test_a_replace_within_the_limits_passes_and_reaches_the_router(engine: Engine) -> None:
    account_id, symbol = new_account(engine), new_instrument(engine)
    set_limits(engine, account_id, max_position_quantity="1000")
    order_id = store_order(engine, account_id, symbol, quantity=D("800"), price=D("100"), status="OPEN")

    # 1001 would take the position past the limit; 1000 fits because it counts instead of the 800, not beside.
    assert replace_check(engine, order_id, D("1001"))[1]["status"] == "REJECTED"
    request_id, request = replace_check(engine, order_id, D("1000"))
    assert request["status"] == "PENDING"
    approval = last_event(engine, order_id)
    assert (approval["type"], approval["payload"]["request_id"]) == ("RISK_APPROVED", request_id)
    assert "max_position" in approval["payload"]["checks"]
    assert approval["payload"]["limits"]["max_position_quantity"] is not None
    [route] = outbox_bodies(engine, order_id, "router.replace")
    assert route == {"orderId": order_id, "requestId": request_id}

    with UnitOfWork(engine, claim_outbox=True) as uow:
        handle_route_replace(
            uow, Envelope(str(uuid.uuid4()), "router.replace", RouteReplaceSchema().load(route), order_id)
        )
        uow.commit()
    [sent] = outbox_bodies(engine, order_id, "orders.replace")
    assert (sent["requestId"], D(str(sent["quantity"])), D(str(sent["price"]))) == (request_id, D("1000"), D("100"))
    order = order_row(engine, order_id)
    assert (order["quantity"], order["pending_request"]["requestId"]) == (D("800"), request_id)  # until confirmed


# ------------------------------------------------------------------------------------------------ concurrency


def test_concurrent_orders_against_one_position_limit_pass_exactly_as_many_as_fit(
    engine: Engine, database_url: str, amqp_url: str
) -> None:
    account_id, symbol = new_account(engine), new_instrument(engine)
    set_limits(engine, account_id, max_position_quantity="1000")
    orders = [submit(engine, account_id, symbol, quantity=D("200"), price=D(f"{90 + i}")) for i in range(10)]
    settings = Settings(infra=InfraSettings(database_url=database_url, amqp_url=amqp_url))
    workers = [StageWorker(SPEC, settings, engine) for _ in range(2)]
    start = threading.Barrier(2)

    def run(worker: StageWorker, batch: list[tuple[str, int]]) -> None:
        start.wait()
        outcome = worker.process([risk_check(*order) for order in batch])
        assert not outcome.failed and not outcome.dead

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(run, workers[0], orders[0::2]), pool.submit(run, workers[1], orders[1::2])]
        for future in futures:
            future.result()

    states = [order_row(engine, order_id)["state"] for order_id, _ in orders]
    assert states.count("APPROVED") == 5 and states.count("REJECTED") == 5
    codes = {order_row(engine, order_id)["rejection_code"] for order_id, _ in orders} - {None}
    assert codes == {"MAX_POSITION_EXCEEDED"}


def test_orders_of_one_account_in_one_batch_see_each_other(engine: Engine, database_url: str, amqp_url: str) -> None:
    account_id, symbol = new_account(engine), new_instrument(engine)
    set_limits(engine, account_id, max_open_orders="3")
    orders = [submit(engine, account_id, symbol, price=D(f"{90 + i}")) for i in range(5)]
    worker = StageWorker(SPEC, Settings(infra=InfraSettings(database_url=database_url, amqp_url=amqp_url)), engine)
    worker.process([risk_check(*order) for order in orders])
    assert [order_row(engine, order_id)["state"] for order_id, _ in orders] == ["APPROVED"] * 3 + ["REJECTED"] * 2


# ------------------------------------------------------------------------------------------------ live changes


def test_limit_and_kill_switch_changes_apply_to_a_running_worker(
    engine: Engine, client: FlaskClient, database_url: str, amqp_url: str
) -> None:
    account_id, symbol = new_account(engine), new_instrument(engine)
    worker = StageWorker(SPEC, Settings(infra=InfraSettings(database_url=database_url, amqp_url=amqp_url)), engine)

    def through_worker(**fields: Any) -> dict[str, Any]:
        order = submit(engine, account_id, symbol, **fields)
        worker.process([risk_check(*order)])
        return order_row(engine, order[0])

    assert approved(through_worker(quantity=D("500")))
    response = client.put(f"/risk/limits/{account_id}", json={"limits": {"maxOrderQuantity": 400}}, headers=OPERATOR)
    assert response.status_code == 200, response.json
    assert rejection(through_worker(quantity=D("401")))[0] == "MAX_ORDER_QUANTITY_EXCEEDED"
    assert approved(through_worker(quantity=D("400")))

    response = client.post("/risk/halts", json={"accountId": account_id, "reason": "drill"}, headers=OPERATOR)
    assert response.status_code == 201, response.json
    assert rejection(through_worker(quantity=D("1")))[0] == "TRADING_HALTED"
    assert client.delete(f"/risk/halts?accountId={account_id}", headers=OPERATOR).status_code == 204
    assert approved(through_worker(quantity=D("2")))


# ------------------------------------------------------------------------------------------------ API, command


def test_the_risk_api_needs_the_operations_scope(client: FlaskClient) -> None:
    assert client.get("/risk/limits").status_code == 401
    trader = {"Authorization": bearer(scopes=("orders:read", "orders:write"))}
    response = client.put("/risk/limits", json={"limits": {"maxOpenOrders": 1}}, headers=trader)
    assert response.status_code == 403
    assert js(response) == {"message": "this token lacks the scope operations", "code": "FORBIDDEN"}
    assert client.post("/risk/halts", json={"reason": "x"}, headers=trader).status_code == 403


def test_the_risk_api_is_documented_with_the_orders(client: FlaskClient) -> None:
    document = js(client.get("/openapi.json"))
    assert {"/risk/limits", "/risk/limits/{accountId}", "/risk/halts", "/risk/restricted-symbols"} <= set(
        document["paths"]
    )
    assert document["paths"]["/risk/halts"]["post"]["operationId"] == "haltTrading"
    assert "Risk" in {tag["name"] for tag in document["tags"]}


def test_account_limits_over_the_api_inherit_and_are_audited(engine: Engine, client: FlaskClient) -> None:
    account_id = new_account(engine)
    body = {"limits": {"maxOpenOrders": 7, "priceCollarPercent": 2.5, "enforceTradingSession": True}, "reason": "desk"}
    response = client.put(f"/risk/limits/{account_id}", json=body, headers=OPERATOR)
    assert response.status_code == 200, response.json
    view = js(response)
    assert view["accountId"] == account_id
    assert (view["limits"]["maxOpenOrders"], view["limits"]["priceCollarPercent"]) == (7, 2.5)
    assert view["effective"]["maxOrderQuantity"] == 1000000  # inherited from the global row
    assert view["sources"]["max_order_quantity"] == "global" and view["sources"]["max_open_orders"] == "account"
    assert view["updatedBy"] == "ops-anna"

    cleared = client.put(f"/risk/limits/{account_id}", json={"limits": {"maxOpenOrders": None}}, headers=OPERATOR)
    assert js(cleared)["limits"]["maxOpenOrders"] is None
    assert js(client.get(f"/risk/limits/{account_id}", headers=OPERATOR))["limits"]["priceCollarPercent"] == 2.5

    bad = client.put(f"/risk/limits/{account_id}", json={"limits": {"maxOpenOrders": -1}}, headers=OPERATOR)
    assert bad.status_code == 400
    assert js(bad)["errors"] == [{"field": "limits", "message": "max_open_orders must be at least 0, got -1"}]
    assert client.get("/risk/limits/NO-SUCH-ACCOUNT", headers=OPERATOR).status_code == 404

    with engine.connect() as connection:
        rows = connection.execute(
            select(risk_limit_changes)
            .where(risk_limit_changes.c.account_id == account_id)
            .order_by(risk_limit_changes.c.id)
        ).mappings()
        audit = [(r["changed_by"], r["item"], r["old_value"], r["new_value"], r["reason"]) for r in rows]
    assert audit == [
        ("ops-anna", "price_collar_percent", None, D("2.5"), "desk"),
        ("ops-anna", "max_open_orders", None, 7, "desk"),
        ("ops-anna", "enforce_trading_session", None, True, "desk"),
        ("ops-anna", "max_open_orders", 7, None, None),
    ]


def test_halts_and_restrictions_over_the_api(engine: Engine, client: FlaskClient) -> None:
    account_id, symbol = new_account(engine), new_instrument(engine)
    first = client.post("/risk/halts", json={"accountId": account_id, "reason": "review"}, headers=OPERATOR)
    again = client.post("/risk/halts", json={"accountId": account_id, "reason": "again"}, headers=OPERATOR)
    assert (first.status_code, again.status_code) == (201, 200)
    assert js(again)["reason"] == "review" and js(again)["haltedBy"] == "ops-anna"
    halts = js(client.get("/risk/halts", headers=OPERATOR))["halts"]
    assert [h["accountId"] for h in halts if h["accountId"] == account_id] == [account_id]
    assert client.delete(f"/risk/halts?accountId={account_id}", headers=OPERATOR).status_code == 204
    assert client.delete(f"/risk/halts?accountId={account_id}", headers=OPERATOR).status_code == 404

    body = {"symbol": symbol, "accountId": account_id, "reason": "watch list"}
    assert client.post("/risk/restricted-symbols", json=body, headers=OPERATOR).status_code == 201
    assert client.post("/risk/restricted-symbols", json=body, headers=OPERATOR).status_code == 200
    listed = js(client.get("/risk/restricted-symbols", headers=OPERATOR))["restrictedSymbols"]
    assert {"symbol": symbol, "accountId": account_id, "reason": "watch list"} in listed
    assert rejection(place(engine, account_id, symbol))[0] == "SYMBOL_RESTRICTED"
    unknown = client.post("/risk/restricted-symbols", json={"symbol": "NO-SUCH"}, headers=OPERATOR)
    assert unknown.status_code == 404
    query = f"/risk/restricted-symbols?symbol={symbol}&accountId={account_id}"
    assert client.delete(query, headers=OPERATOR).status_code == 204
    assert approved(place(engine, account_id, symbol))


def test_the_risk_command(engine: Engine, database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    account_id, symbol = new_account(engine), new_instrument(engine)
    url = ["--url", database_url]
    assert risk_command.main([*url, "set", "--account", account_id, "max_open_orders=1", "--by", "ops-ben"]) == 0
    assert f"account {account_id}: max_open_orders - -> 1" in capsys.readouterr().out
    assert approved(place(engine, account_id, symbol))
    assert rejection(place(engine, account_id, symbol, price=D("99")))[0] == "MAX_OPEN_ORDERS_EXCEEDED"

    assert risk_command.main([*url, "halt", "--account", account_id, "--reason", "drill", "--by", "ops-ben"]) == 0
    assert risk_command.main([*url, "show", "--account", account_id]) == 0
    shown = capsys.readouterr().out
    assert "max_open_orders" in shown and "account " in shown and f"account {account_id} since" in shown
    assert risk_command.main([*url, "resume", "--account", account_id, "--by", "ops-ben"]) == 0
    assert "resumed" in capsys.readouterr().out

    assert risk_command.main([*url, "set", "--account", account_id, "max_open_orders=lots"]) == 2
    assert "max_open_orders takes a number" in capsys.readouterr().err
    assert risk_command.main([*url, "restrict", "NO-SUCH", "--global"]) == 2
