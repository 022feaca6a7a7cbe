"""Settlement on a real database, through the stage runtime's transaction: confirmations, instructions,
positions, and what is published to the portfolio exchange."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from marshmallow import ValidationError
from sqlalchemy import Engine, insert, select

from common import jsonutil
from common.config import Settings
from common.contracts import FillBookedSchema
from common.domain import OrderType, Side
from common.messaging.envelope import Envelope
from common.runtime.stage import StageSpec, StageWorker
from common.store import tables
from common.store.settlement_repo import Position
from services.settlement.calendar import SettlementCalendar
from services.settlement.handlers import handle, position_after
from services.settlement.worker import SPEC
from tests.support.api import new_account
from tests.support.db import open_engine
from tests.support.orders import create_order, mark_routed, store

pytestmark = pytest.mark.integration

D = Decimal
CALENDAR = SettlementCalendar(equity_days=1)
WEDNESDAY = "2026-11-25T15:00:00+00:00"
FRIDAY = "2026-11-27T15:00:00+00:00"
SATURDAY = "2026-11-28T15:00:00+00:00"


@pytest.fixture(scope="module")
def engine(database_url: str) -> Iterator[Engine]:
    with open_engine(database_url) as engine:
        with engine.begin() as connection:
            for symbol, asset_class, days in (("EURUSD", "FX", None), ("T2EQ", "EQUITY", 2)):
                if connection.execute(
                    select(tables.instruments.c.symbol).where(tables.instruments.c.symbol == symbol)
                ).first():
                    continue
                connection.execute(
                    insert(tables.instruments).values(
                        symbol=symbol,
                        name=symbol,
                        asset_class=asset_class,
                        currency="USD",
                        tick_size=D("0.0001"),
                        lot_size=D(1),
                        tradable=True,
                        settlement_days=days,
                        created_at=datetime.now(UTC),
                    )
                )
        yield engine


@pytest.fixture
def worker(engine: Engine, database_url: str) -> StageWorker:
    # The stage as deployed, with a calendar fixed by the test instead of read from the environment.
    spec = StageSpec(
        stage=SPEC.stage,
        schemas=SPEC.schemas,
        handler=lambda uow, env: handle(uow, env, calendar=CALENDAR),
        order_id_of=SPEC.order_id_of,
    )
    return StageWorker(spec, Settings(database_url=database_url), engine)


@pytest.fixture
def account(engine: Engine) -> str:
    """An account of the test's own, so positions start flat."""
    return new_account(engine)


def order_for(engine: Engine, account_id: str, symbol: str, side: Side) -> str:
    order = create_order(
        account_id=account_id, symbol=symbol, side=side, type=OrderType.MARKET, quantity=D(1000), price=None
    )
    return store(engine, order)


class Book:
    """Books FillBooked messages for one account through the stage."""

    def __init__(self, engine: Engine, worker: StageWorker, account_id: str) -> None:
        self.engine, self.worker, self.account_id = engine, worker, account_id

    def fill(
        self,
        side: Side,
        quantity: str,
        price: str,
        fees: str = "0",
        symbol: str = "AAPL",
        timestamp: str = WEDNESDAY,
        execution_id: str | None = None,
        reversal: bool = False,
        order_id: str | None = None,
        message_id: str | None = None,
    ) -> dict[str, Any]:
        body = {
            "orderId": order_id or order_for(self.engine, self.account_id, symbol, side),
            "executionId": execution_id or str(uuid.uuid4()),
            "accountId": self.account_id,
            "symbol": symbol,
            "side": side.value,
            "quantity": D(quantity),
            "price": D(price),
            "fees": D(fees),
            "venue": "SIM",
            "timestamp": timestamp,
            "reversal": reversal,
        }
        self.deliver(body, message_id)
        return body

    def deliver(self, body: dict[str, Any], message_id: str | None = None) -> Any:
        env = Envelope(
            message_id=message_id or str(uuid.uuid4()),
            routing_key="settlement.fill",
            body=FillBookedSchema().load(jsonutil.loads(jsonutil.dumps(body))),
            correlation_id=body["orderId"],
            type="FillBooked",
        )
        outcome = self.worker.process([env])
        assert not outcome.failed, outcome.failed
        return outcome

    def reverse(self, original: dict[str, Any]) -> dict[str, Any]:
        body = {**original, "reversal": True, "timestamp": datetime.now(UTC).isoformat()}
        self.deliver(body)
        return body

    def position(self, symbol: str = "AAPL") -> Position:
        p = tables.positions.c
        with self.engine.connect() as connection:
            row = (
                connection.execute(
                    select(p.quantity, p.average_cost, p.realized_pnl).where(
                        p.account_id == self.account_id, p.symbol == symbol
                    )
                )
                .mappings()
                .one()
            )
        return Position(**row)

    def confirmations(self) -> list[Any]:
        c = tables.trade_confirmations.c
        with self.engine.connect() as connection:
            return list(
                connection.execute(
                    select(tables.trade_confirmations).where(c.account_id == self.account_id).order_by(c.created_at)
                ).mappings()
            )

    def instructions(self) -> list[Any]:
        s = tables.settlement_instructions.c
        with self.engine.connect() as connection:
            return list(
                connection.execute(
                    select(tables.settlement_instructions).where(s.account_id == self.account_id).order_by(s.created_at)
                ).mappings()
            )

    def published(self, routing_key: str) -> list[dict[str, Any]]:
        o = tables.outbox.c
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(o.exchange, o.type, o.body).where(o.routing_key == routing_key).order_by(o.id)
            ).mappings()
            bodies = []
            for row in rows:
                body = jsonutil.loads(row["body"])
                if body.get("accountId") == self.account_id:
                    assert row["exchange"] == "portfolio"
                    bodies.append({"_type": row["type"], **body})
            return bodies


@pytest.fixture
def book(engine: Engine, worker: StageWorker, account: str) -> Book:
    return Book(engine, worker, account)


def test_a_buy_is_confirmed_and_instructed(book: Book) -> None:
    fill = book.fill(Side.BUY, "100", "190.50", fees="9.525")
    (conf,) = book.confirmations()
    assert (conf["execution_id"], conf["order_id"], conf["side"], conf["reversal"]) == (
        fill["executionId"],
        fill["orderId"],
        "BUY",
        False,
    )
    assert (conf["quantity"], conf["price"], conf["gross_amount"], conf["fees"], conf["net_amount"]) == (
        D(100),
        D("190.50"),
        D("19050.00"),
        D("9.525"),
        D("19059.525"),
    )
    assert (conf["currency"], conf["venue"]) == ("USD", "SIM")
    assert (conf["trade_date"], conf["settlement_date"]) == (date(2026, 11, 25), date(2026, 11, 26))

    (instruction,) = book.instructions()
    assert instruction["confirmation_id"] == conf["id"]
    assert (instruction["securities_direction"], instruction["quantity"], instruction["cash_amount"]) == (
        "RECEIVE",
        D(100),
        D("-19059.525"),
    )
    assert (instruction["settlement_date"], instruction["status"]) == (date(2026, 11, 26), "PENDING")

    (tc,) = book.published("trades.confirmation")
    assert tc["_type"] == "TradeConfirmation"
    assert (tc["confirmationId"], tc["netAmount"], tc["settlementDate"], tc["reversal"]) == (
        conf["id"],
        D("19059.525"),
        "2026-11-26",
        False,
    )
    (si,) = book.published("settlement.instruction")
    assert si["_type"] == "SettlementInstruction"
    assert (si["securitiesDirection"], si["cashDirection"], si["cashAmount"]) == ("RECEIVE", "PAY", D("-19059.525"))
    (pu,) = book.published("positions.update")
    assert pu["_type"] == "PositionUpdate"
    assert (pu["quantity"], pu["delta"], pu["averageCost"], pu["realizedPnl"]) == (D(100), D(100), D("190.50"), D(0))
    assert (pu["executionId"], pu["orderId"], pu["symbol"]) == (fill["executionId"], fill["orderId"], "AAPL")
    assert pu["timestamp"] == WEDNESDAY


def test_a_sell_delivers_and_receives_cash_net_of_fees(book: Book) -> None:
    book.fill(Side.SELL, "50", "200.00", fees="5.00", symbol="VOD")
    (conf,) = book.confirmations()
    assert (conf["gross_amount"], conf["net_amount"], conf["currency"]) == (D("10000.00"), D("9995.00"), "GBP")
    (instruction,) = book.instructions()
    assert (instruction["securities_direction"], instruction["cash_amount"]) == ("DELIVER", D("9995.00"))
    (si,) = book.published("settlement.instruction")
    assert si["cashDirection"] == "RECEIVE"
    assert book.position("VOD") == Position(D(-50), D("200.00"), D(0))


@pytest.mark.parametrize(
    ("symbol", "timestamp", "trade_date", "settlement_date"),
    [
        ("AAPL", FRIDAY, date(2026, 11, 27), date(2026, 11, 30)),  # EQUITY T+1 over the weekend
        ("SPY", FRIDAY, date(2026, 11, 27), date(2026, 11, 30)),  # ETF T+1
        ("EURUSD", FRIDAY, date(2026, 11, 27), date(2026, 12, 1)),  # FX T+2
        ("T2EQ", FRIDAY, date(2026, 11, 27), date(2026, 12, 1)),  # the instrument's own T+2
        ("ESZ6", FRIDAY, date(2026, 11, 27), date(2026, 11, 27)),  # FUTURE T+0
        ("BTCUSD", SATURDAY, date(2026, 11, 28), date(2026, 11, 28)),  # CRYPTO T+0, on a Saturday
        ("AAPL", "2026-11-27T20:00:00-05:00", date(2026, 11, 28), date(2026, 11, 30)),  # Saturday in UTC
    ],
)
def test_settlement_date_per_asset_class(
    book: Book, symbol: str, timestamp: str, trade_date: date, settlement_date: date
) -> None:
    book.fill(Side.BUY, "1", "100", symbol=symbol, timestamp=timestamp)
    (conf,) = book.confirmations()
    assert (conf["trade_date"], conf["settlement_date"]) == (trade_date, settlement_date)
    assert book.instructions()[0]["settlement_date"] == settlement_date


def test_position_through_buys_a_partial_sell_and_a_sell_through_zero(book: Book) -> None:
    book.fill(Side.BUY, "100", "10")
    assert book.position() == Position(D(100), D(10), D(0))
    book.fill(Side.BUY, "50", "13")
    assert book.position() == Position(D(150), D(11), D(0))
    book.fill(Side.SELL, "60", "12", fees="1.00")  # fees do not enter cost or P&L
    assert book.position() == Position(D(90), D(11), D(60))
    book.fill(Side.SELL, "140", "9")  # closes 90 at a loss of 2 each, opens a short of 50 at 9
    assert book.position() == Position(D(-50), D(9), D(-120))
    book.fill(Side.BUY, "50", "8")  # covering the short at 8 gains 1 each
    assert book.position() == Position(D(0), D(0), D(-70))

    updates = book.published("positions.update")
    assert [(u["quantity"], u["delta"], u["averageCost"], u["realizedPnl"]) for u in updates] == [
        (D(100), D(100), D(10), D(0)),
        (D(150), D(50), D(11), D(0)),
        (D(90), D(-60), D(11), D(60)),
        (D(-50), D(-140), D(9), D(-120)),
        (D(0), D(50), D(0), D(-70)),
    ]


def test_the_same_fill_twice_books_once(book: Book) -> None:
    fill = book.fill(Side.BUY, "100", "10", fees="1")
    message_id = str(uuid.uuid4())
    book.deliver(fill, message_id)  # the same execution under another message id
    book.deliver(fill, message_id)  # and that message redelivered
    assert len(book.confirmations()) == 1
    assert len(book.instructions()) == 1
    assert book.position() == Position(D(100), D(10), D(0))
    assert len(book.published("positions.update")) == 1
    assert len(book.published("trades.confirmation")) == 1


def test_a_reversal_undoes_the_position(book: Book) -> None:
    only = book.fill(Side.BUY, "100", "10", fees="2")
    book.reverse(only)
    assert book.position() == Position(D(0), D(0), D(0))
    original, reversal = book.confirmations()
    assert (reversal["execution_id"], reversal["reversal"]) == (only["executionId"], True)
    assert (reversal["net_amount"], reversal["settlement_date"]) == (
        original["net_amount"],
        original["settlement_date"],
    )
    receive, deliver_back = book.instructions()
    assert (receive["securities_direction"], receive["cash_amount"]) == ("RECEIVE", D(-1002))
    assert (deliver_back["securities_direction"], deliver_back["cash_amount"]) == ("DELIVER", D(1002))
    update = book.published("positions.update")[-1]
    assert (update["delta"], update["quantity"], update["reversal"]) == (D(-100), D(0), True)

    book.reverse(only)  # reversed once only
    assert len(book.confirmations()) == 2


def test_a_reversal_restores_cost_and_pnl_around_later_trades(book: Book) -> None:
    book.fill(Side.BUY, "100", "10")
    busted = book.fill(Side.BUY, "100", "12")
    book.fill(Side.SELL, "50", "13")
    assert book.position() == Position(D(150), D(11), D(100))
    book.reverse(busted)
    # As if the busted trade never happened: 100 at 10, then 50 sold at 13.
    assert book.position() == Position(D(50), D(10), D(150))
    assert book.published("positions.update")[-1]["delta"] == D(-100)


def test_a_reversal_that_overtakes_its_trade_nets_out(book: Book) -> None:
    book.fill(Side.BUY, "10", "10")
    late = {
        "orderId": order_for(book.engine, book.account_id, "AAPL", Side.BUY),
        "executionId": str(uuid.uuid4()),
        "accountId": book.account_id,
        "symbol": "AAPL",
        "side": "BUY",
        "quantity": D(5),
        "price": D(11),
        "fees": D(0),
        "venue": "SIM",
        "timestamp": WEDNESDAY,
    }
    book.deliver({**late, "reversal": True})
    assert book.position() == Position(D(10), D(10), D(0))
    book.deliver({**late, "reversal": False})
    assert book.position() == Position(D(10), D(10), D(0))
    assert len(book.confirmations()) == 3


def test_a_non_positive_quantity_is_dead_lettered(book: Book, engine: Engine) -> None:
    body = {
        "orderId": order_for(engine, book.account_id, "AAPL", Side.BUY),
        "executionId": str(uuid.uuid4()),
        "accountId": book.account_id,
        "symbol": "AAPL",
        "side": "BUY",
        "quantity": D(-5),
        "price": D(10),
        "fees": D(0),
        "venue": "SIM",
        "timestamp": WEDNESDAY,
        "reversal": True,
    }
    # Refused at the contract, so the runtime dead-letters it at once with the reason; nothing is booked.
    with pytest.raises(ValidationError, match="quantity"):
        FillBookedSchema().load(jsonutil.loads(jsonutil.dumps(body)))
    assert book.confirmations() == []


@pytest.mark.parametrize(
    ("start", "trade", "expected"),
    [
        (Position(), (D(10), D(5)), Position(D(10), D(5), D(0))),
        (Position(D(-10), D(5), D(0)), (D(-10), D(8)), Position(D(-20), D("6.5"), D(0))),
        (Position(D(-10), D(5), D(0)), (D(4), D(8)), Position(D(-6), D(5), D(-12))),
        (Position(D(-10), D(5), D(0)), (D(15), D(4)), Position(D(5), D(4), D(10))),
        (Position(D(3), D(1), D(0)), (D(3), D(2)), Position(D(6), D("1.5"), D(0))),
        (Position(D(3), D(1), D(0)), (D(0), D(2)), Position(D(3), D(1), D(0))),
        (Position(D(3), D(1), D(0)), (D(6), D(2)), Position(D(9), D("1.66666667"), D(0))),
    ],
)
def test_position_arithmetic(start: Position, trade: tuple[Decimal, Decimal], expected: Position) -> None:
    assert position_after(start, *trade) == expected


async def test_a_fill_travels_from_the_venue_report_to_the_position(
    engine: Engine, account: str, database_url: str, amqp_url: str
) -> None:
    """Both stages as deployed, on the broker: execution.report -> FillBooked -> position and confirmation."""
    import asyncio

    import aio_pika

    from common.messaging.publisher import Publisher
    from common.store.outbox import OutboxMessage
    from services.execution_handler.worker import SPEC as EXECUTION_SPEC
    from tests.support.polling import async_wait_until

    settings = Settings(database_url=database_url, amqp_url=amqp_url, batch_size=10)
    workers = [StageWorker(spec, settings, engine) for spec in (EXECUTION_SPEC, SPEC)]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    connection = await aio_pika.connect_robust(amqp_url)
    try:

        async def consuming() -> bool:
            for task in tasks:
                if task.done():
                    task.result()  # a worker that died says why
            for name in ("oms.execution_handler", "oms.settlement"):
                # A passive declare of a missing queue closes its channel: one channel per look.
                async with connection.channel() as channel:
                    try:
                        queue = await channel.declare_queue(name, passive=True)
                    except aio_pika.exceptions.ChannelClosed:
                        return False
                    if not queue.declaration_result.consumer_count:
                        return False
            return True

        ready: bool = await async_wait_until(consuming, timeout=30, message="both stages consuming")
        assert ready
        now = datetime.now(UTC)
        order = create_order(
            account_id=account, symbol="MSFT", side=Side.BUY, type=OrderType.MARKET, quantity=D(30), price=None, now=now
        )
        store(engine, mark_routed(order, now, checks=[]))
        report = {
            "executionId": str(uuid.uuid4()),
            "orderId": order.id,
            "brokerOrderId": "BRK-X",
            "execType": "FILL",
            "lastQty": D(30),
            "lastPx": D("410.25"),
            "cumQty": D(30),
            "leavesQty": D(0),
            "avgPx": D("410.25"),
            "fees": D("6.15"),
            "venue": "SIM",
            "timestamp": now.isoformat(),
        }
        message_id = str(uuid.uuid4())
        confirmed = await Publisher(connection).publish(
            [OutboxMessage(message_id, "oms", "execution.report", "ExecutionReport", order.id, jsonutil.dumps(report))]
        )
        assert confirmed == [message_id]

        book = Book(engine, workers[1], account)

        def settled() -> bool:
            p = tables.positions.c
            with engine.connect() as conn:
                row = conn.execute(
                    select(p.quantity).where(p.account_id == account, p.symbol == "MSFT")
                ).scalar_one_or_none()
            return row == D(30)

        await async_wait_until(settled, timeout=30, message="the position booked by settlement")
        (conf,) = book.confirmations()
        assert (conf["execution_id"], conf["net_amount"]) == (report["executionId"], D("12313.65"))
        assert book.position("MSFT") == Position(D(30), D("410.25"), D(0))
    finally:
        for worker in workers:
            worker.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        await connection.close()
