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
from common.contracts import FillBookedSchema
from common.domain import OrderType, Side
from common.messages.catalogue import FILL_BOOKED
from common.messaging.envelope import Envelope
from common.orders.records import Position
from common.runtime.stage import StageSpec, StageWorker
from common.settings import InfraSettings, Settings, StageSettings
from common.settlement_calendar import SettlementCalendar
from common.store import tables
from services.settlement.handlers import book_fill, position_after
from services.settlement.spec import SPEC
from tests.support.api import new_account
from tests.support.db import open_engine, statements
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
        handlers={FILL_BOOKED: lambda uow, env: book_fill(uow, env, calendar=CALENDAR)},
        order_id_of=SPEC.order_id_of,
        prepare=SPEC.prepare,
    )
    return StageWorker(spec, Settings(infra=InfraSettings(database_url=database_url)), engine)


@pytest.fixture
def account(engine: Engine) -> str:
    """An account of the test's own, so positions start flat."""
    return new_account(engine)


def order_for(engine: Engine, account_id: str, symbol: str, side: Side) -> str:
    order = create_order(
        account_id=account_id, symbol=symbol, side=side, type=OrderType.MARKET, quantity=D(1000), price=None
    )
    return store(engine, order)


def envelope(body: dict[str, Any], message_id: str | None = None) -> Envelope:
    return Envelope(
        message_id=message_id or str(uuid.uuid4()),
        routing_key="settlement.fill",
        body=FillBookedSchema().load(jsonutil.loads(jsonutil.dumps(body))),
        correlation_id=body["orderId"],
        type="FillBooked",
    )


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

    def body(
        self,
        side: Side,
        quantity: str,
        price: str,
        fees: str = "0",
        symbol: str = "AAPL",
        execution_id: str | None = None,
        order_id: str | None = None,
        reversal: bool = False,
    ) -> dict[str, Any]:
        """A FillBooked body for this account (not delivered)."""
        return {
            "orderId": order_id or order_for(self.engine, self.account_id, symbol, side),
            "executionId": execution_id or str(uuid.uuid4()),
            "accountId": self.account_id,
            "symbol": symbol,
            "side": side.value,
            "quantity": D(quantity),
            "price": D(price),
            "fees": D(fees),
            "venue": "SIM",
            "timestamp": WEDNESDAY,
            "reversal": reversal,
        }

    def deliver(self, body: dict[str, Any], message_id: str | None = None) -> Any:
        outcome = self.worker.process([envelope(body, message_id)])
        assert not outcome.failed, outcome.failed
        return outcome

    def deliver_batch(self, bodies: list[dict[str, Any]]) -> Any:
        """All in one batch: one transaction, one ``prepare``."""
        outcome = self.worker.process([envelope(body) for body in bodies])
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

    # One message per fill: the position update, carrying the confirmation and the instruction.
    assert book.published("trades.confirmation") == []
    assert book.published("settlement.instruction") == []
    (pu,) = book.published("positions.update")
    assert pu["_type"] == "PositionUpdate"
    assert (pu["quantity"], pu["delta"], pu["averageCost"], pu["realizedPnl"]) == (D(100), D(100), D("190.50"), D(0))
    assert (pu["executionId"], pu["orderId"], pu["symbol"], pu["reversal"]) == (
        fill["executionId"],
        fill["orderId"],
        "AAPL",
        False,
    )
    assert pu["confirmation"] == {
        "confirmationId": conf["id"],
        "orderId": fill["orderId"],
        "executionId": fill["executionId"],
        "accountId": book.account_id,
        "symbol": "AAPL",
        "side": "BUY",
        "quantity": D(100),
        "price": D("190.50"),
        "grossAmount": D("19050.00"),
        "fees": D("9.525"),
        "netAmount": D("19059.525"),
        "currency": "USD",
        "venue": "SIM",
        "tradeDate": "2026-11-25",
        "settlementDate": "2026-11-26",
        "reversal": False,
    }
    assert pu["instruction"] == {
        "instructionId": instruction["id"],
        "confirmationId": conf["id"],
        "orderId": fill["orderId"],
        "executionId": fill["executionId"],
        "accountId": book.account_id,
        "symbol": "AAPL",
        "securitiesDirection": "RECEIVE",
        "quantity": D(100),
        "cashDirection": "PAY",
        "cashAmount": D("-19059.525"),
        "currency": "USD",
        "settlementDate": "2026-11-26",
        "status": "PENDING",
        "reversal": False,
    }
    assert datetime.fromisoformat(pu["timestamp"]) == datetime.fromisoformat(WEDNESDAY)


def test_a_sell_delivers_and_receives_cash_net_of_fees(book: Book) -> None:
    book.fill(Side.SELL, "50", "200.00", fees="5.00", symbol="VOD")
    (conf,) = book.confirmations()
    assert (conf["gross_amount"], conf["net_amount"], conf["currency"]) == (D("10000.00"), D("9995.00"), "GBP")
    (instruction,) = book.instructions()
    assert (instruction["securities_direction"], instruction["cash_amount"]) == ("DELIVER", D("9995.00"))
    (pu,) = book.published("positions.update")
    assert (pu["instruction"]["securitiesDirection"], pu["instruction"]["cashDirection"]) == ("DELIVER", "RECEIVE")
    assert pu["instruction"]["cashAmount"] == D("9995.00")
    assert (pu["confirmation"]["side"], pu["confirmation"]["netAmount"]) == ("SELL", D("9995.00"))
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
    (pu,) = book.published("positions.update")
    assert pu["confirmation"]["confirmationId"] == book.confirmations()[0]["id"]


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
    assert (update["confirmation"]["confirmationId"], update["confirmation"]["reversal"]) == (reversal["id"], True)
    assert (update["confirmation"]["netAmount"], update["confirmation"]["settlementDate"]) == (D(1002), "2026-11-26")
    assert (update["instruction"]["instructionId"], update["instruction"]["cashDirection"]) == (
        deliver_back["id"],
        "RECEIVE",
    )
    assert (update["instruction"]["securitiesDirection"], update["instruction"]["cashAmount"]) == ("DELIVER", D(1002))

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
    from services.execution_handler.spec import SPEC as EXECUTION_SPEC
    from tests.support.polling import async_wait_until

    settings = Settings(
        infra=InfraSettings(database_url=database_url, amqp_url=amqp_url), stage=StageSettings(batch_size=10)
    )
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


def _statements_for_a_batch(engine: Engine, book: Book, fills: int) -> list[str]:
    symbols = ("AAPL", "MSFT", "SPY", "VOD")
    bodies = [book.body(Side.BUY, "1", "10", symbol=symbols[i % len(symbols)]) for i in range(fills)]
    with statements(engine) as sent:
        book.deliver_batch(bodies)
    return sent


def test_a_batch_costs_the_same_statements_whatever_its_size(engine: Engine, worker: StageWorker) -> None:
    small = _statements_for_a_batch(engine, Book(engine, worker, new_account(engine)), 4)
    large = _statements_for_a_batch(engine, Book(engine, worker, new_account(engine)), 40)
    print(f"statements: {len(small)} for 4 fills, {len(large)} for 40 fills")
    assert len(large) == len(small), large


def test_a_batch_books_each_fill_once_and_chains_fills_of_one_position(book: Book) -> None:
    booked_before = book.fill(Side.BUY, "7", "20", symbol="SPY")
    aapl = [
        book.body(Side.BUY, "100", "10"),
        book.body(Side.BUY, "50", "13"),
        book.body(Side.SELL, "60", "12", fees="1.00"),
        book.body(Side.SELL, "140", "9"),
        book.body(Side.BUY, "50", "8"),
    ]
    msft = [book.body(Side.BUY, "10", "100", symbol="MSFT"), book.body(Side.SELL, "4", "110", symbol="MSFT")]
    batch = [aapl[0], msft[0], aapl[1], aapl[0], aapl[2], booked_before, msft[1], aapl[3], msft[0], aapl[4]]
    book.deliver_batch(batch)  # duplicates (in the batch, and booked before it) under other message ids

    assert book.position("AAPL") == Position(D(0), D(0), D(-70))
    assert book.position("MSFT") == Position(D(6), D(100), D(40))
    assert book.position("SPY") == Position(D(7), D(20), D(0))
    confirmations = book.confirmations()
    assert sorted(c["execution_id"] for c in confirmations) == sorted(
        b["executionId"] for b in [*aapl, *msft, booked_before]
    )
    # Booked in message order: created_at orders them as the batch did (what a reversal replays by).
    assert [c["execution_id"] for c in confirmations if c["symbol"] == "AAPL"] == [b["executionId"] for b in aapl]
    assert len(book.instructions()) == len(confirmations)
    updates = book.published("positions.update")
    assert [(u["executionId"], u["quantity"], u["delta"], u["averageCost"], u["realizedPnl"]) for u in updates] == [
        (booked_before["executionId"], D(7), D(7), D(20), D(0)),
        (aapl[0]["executionId"], D(100), D(100), D(10), D(0)),
        (msft[0]["executionId"], D(10), D(10), D(100), D(0)),
        (aapl[1]["executionId"], D(150), D(50), D(11), D(0)),
        (aapl[2]["executionId"], D(90), D(-60), D(11), D(60)),
        (msft[1]["executionId"], D(6), D(-4), D(100), D(40)),
        (aapl[3]["executionId"], D(-50), D(-140), D(9), D(-120)),
        (aapl[4]["executionId"], D(0), D(50), D(0), D(-70)),
    ]
    by_id = {c["id"]: c for c in confirmations}
    for update in updates:
        assert by_id[update["confirmation"]["confirmationId"]]["execution_id"] == update["executionId"]


def test_a_reversal_in_a_batch_sees_the_fills_booked_before_it(book: Book) -> None:
    first = book.body(Side.BUY, "100", "10")
    busted = book.body(Side.BUY, "100", "12")
    sold = book.body(Side.SELL, "50", "13")
    late = book.body(Side.BUY, "10", "20")
    book.deliver_batch([first, busted, sold, {**busted, "reversal": True}, late, {**busted, "reversal": True}])
    # As if the busted trade never happened: 100 at 10, 50 sold at 13, then 10 bought at 20.
    assert book.position() == Position(D(60), D("11.66666667"), D(150))
    reversal = [c for c in book.confirmations() if c["reversal"]]
    assert [(c["execution_id"], c["quantity"], c["price"]) for c in reversal] == [
        (busted["executionId"], D(100), D(12))
    ]
    updates = book.published("positions.update")
    assert [(u["delta"], u["reversal"]) for u in updates] == [
        (D(100), False),
        (D(100), False),
        (D(-50), False),
        (D(-100), True),
        (D(10), False),
    ]


def test_a_dead_letter_in_a_batch_fails_only_its_own_message(book: Book) -> None:
    good = [book.body(Side.BUY, "10", "10"), book.body(Side.BUY, "5", "16")]
    unknown = {**book.body(Side.BUY, "1", "1"), "symbol": "NOSUCH"}
    outcome = book.worker.process([envelope(good[0]), envelope(unknown), envelope(good[1])])
    # The batch rolled back and went again message by message: prepare with each message alone.
    assert not outcome.failed
    assert list(outcome.dead.values()) == ["DeadLetter: unknown instrument NOSUCH"]
    assert book.position() == Position(D(15), D(12), D(0))
    assert len(book.confirmations()) == 2
    with book.engine.connect() as connection:
        p = tables.positions.c
        assert connection.execute(select(p.symbol).where(p.symbol == "NOSUCH")).first() is None


def test_a_handler_without_prepare_books_alike(engine: Engine, database_url: str, account: str) -> None:
    # A spec that does not prepare (other tests build their own): the repository reads what it was not handed.
    spec = StageSpec(
        stage=SPEC.stage,
        handlers={FILL_BOOKED: lambda uow, env: book_fill(uow, env, calendar=CALENDAR)},
        order_id_of=SPEC.order_id_of,
    )
    unprepared = Book(
        engine, StageWorker(spec, Settings(infra=InfraSettings(database_url=database_url)), engine), account
    )
    first, second = unprepared.body(Side.BUY, "10", "10"), unprepared.body(Side.SELL, "4", "12")
    first["venue"] = second["venue"] = None  # a column of NULLs only
    unprepared.deliver_batch([first, second, first])
    unprepared.reverse(second)
    assert unprepared.position() == Position(D(10), D(10), D(0))
    assert [c["venue"] for c in unprepared.confirmations()] == [None, None, None]


def test_overlapping_batches_queue_instead_of_deadlocking(engine: Engine, worker: StageWorker) -> None:
    from concurrent.futures import ThreadPoolExecutor

    books = [Book(engine, worker, new_account(engine)) for _ in range(3)]
    symbols = ("AAPL", "MSFT", "SPY")
    rounds = 5
    batches = []
    for _ in range(rounds):
        forward = [b.body(Side.BUY, "1", "10", symbol=s) for b in books for s in symbols]
        backward = [b.body(Side.BUY, "2", "10", symbol=s) for b in reversed(books) for s in reversed(symbols)]
        batches += [forward, backward]
    with ThreadPoolExecutor(max_workers=2) as pool:
        # process() raises a deadlock (an infrastructure error) instead of retrying it.
        for outcome in pool.map(lambda bodies: worker.process([envelope(b) for b in bodies]), batches):
            assert not outcome.failed and not outcome.dead
    for b in books:
        for s in symbols:
            assert b.position(s) == Position(D(3 * rounds), D(10), D(0))


def test_a_batch_locks_its_positions_in_sorted_order(engine: Engine, worker: StageWorker) -> None:
    """Whatever the order of its messages, a batch takes its position locks in (account, symbol) order: held up on
    the first, it has not taken the second yet (which is what keeps overlapping batches from deadlocking)."""
    import threading

    from sqlalchemy import text

    from tests.support.polling import wait_until

    book = Book(engine, worker, new_account(engine))
    book.fill(Side.BUY, "1", "10", symbol="AAPL")
    book.fill(Side.BUY, "1", "10", symbol="MSFT")  # both rows exist: AAPL < MSFT
    lock = "SELECT 1 FROM positions WHERE account_id = :a AND symbol = :s FOR UPDATE"
    outcome: list[Any] = []
    with engine.connect() as holder:
        holder.execute(text(lock), {"a": book.account_id, "s": "AAPL"})
        batch = [book.body(Side.BUY, "1", "10", symbol="MSFT"), book.body(Side.BUY, "1", "10", symbol="AAPL")]
        thread = threading.Thread(target=lambda: outcome.append(worker.process([envelope(b) for b in batch])))
        thread.start()
        try:

            def waiting() -> bool:
                with engine.connect() as connection:
                    return bool(
                        connection.execute(
                            text(
                                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                "AND datname = current_database() AND query LIKE '%FOR UPDATE OF p%'"
                            )
                        ).scalar()
                    )

            assert wait_until(waiting, timeout=10, message="the batch waiting for the AAPL lock")
            with engine.connect() as other:
                other.execute(text("SET lock_timeout = '1s'"))
                # MSFT comes after AAPL: not locked yet.
                other.execute(text(lock + " NOWAIT"), {"a": book.account_id, "s": "MSFT"})
                other.rollback()
        finally:
            holder.rollback()
            thread.join(10)
    assert outcome and not outcome[0].failed
    assert book.position("AAPL") == book.position("MSFT") == Position(D(2), D(10), D(0))
