"""Settlement's handler on the in-memory store: confirmations, instructions, positions and the position update
that carries them; fills booked once, reversals replayed, overtaken, in batches; bad fills dead-lettered.

The Postgres side of the same paths: tests/integration/test_settlement_stage.py.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterable
from dataclasses import replace
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pytest

from common.domain import Side
from common.logging import json_handler
from common.messages.catalogue import FILL_BOOKED, POSITION_UPDATE
from common.messaging.envelope import Envelope
from common.orders.records import Position
from common.runtime.stage import DeadLetter
from services.settlement.handlers import prepare
from services.settlement.spec import SPEC
from tests.support.fake_stages import envelope, run_batch, sent
from tests.support.fake_store import FakeMessage, FakeStore
from tests.support.observing import log_lines
from tests.support.orders import create_order

D = Decimal
WEDNESDAY = "2026-11-25T15:00:00+00:00"
FRIDAY = "2026-11-27T15:00:00+00:00"
LOGGER = "services.settlement.handlers"


class Book:
    """Books FillBooked messages for one account of its own on a fake store."""

    def __init__(self) -> None:
        self.store = FakeStore.with_demo_data()
        self.account_id = self.store.add_account(f"T-{uuid.uuid4().hex[:8]}").id
        self._orders: dict[tuple[str, str], str] = {}

    def order_for(self, symbol: str, side: Side) -> str:
        """An order of the account (confirmations name one), one per symbol and side."""
        key = (symbol, side.value)
        if key not in self._orders:
            order = create_order(account_id=self.account_id, symbol=symbol, side=side)
            with self.store.unit_of_work() as uow:
                uow.orders.add(order, correlation_id=None, message_id=None)
                uow.commit()
            self._orders[key] = order.id
        return self._orders[key]

    def body(
        self, side: Side, quantity: str, price: str, fees: str = "0", symbol: str = "AAPL", timestamp: str = WEDNESDAY
    ) -> dict[str, Any]:
        """A FillBooked body (camelCase, as the execution handler sends it)."""
        return {
            "orderId": self.order_for(symbol, side),
            "executionId": str(uuid.uuid4()),
            "accountId": self.account_id,
            "symbol": symbol,
            "side": side.value,
            "quantity": D(quantity),
            "price": D(price),
            "fees": D(fees),
            "venue": "SIM",
            "timestamp": timestamp,
            "reversal": False,
        }

    def deliver(self, *bodies: dict[str, Any]) -> list[FakeMessage]:
        """The fills in one batch; the position updates it publishes."""
        return sent(run_batch(self.store, SPEC, *(self.envelope(body) for body in bodies)), POSITION_UPDATE)

    def envelope(self, body: dict[str, Any]) -> Envelope:
        return envelope(FILL_BOOKED, body, correlation_id=body["orderId"])

    def fill(self, side: Side, quantity: str, price: str, **fields: Any) -> dict[str, Any]:
        body = self.body(side, quantity, price, **fields)
        self.deliver(body)
        return body

    def position(self, symbol: str = "AAPL") -> Position:
        return self.store.positions[(self.account_id, symbol)]

    def confirmations(self) -> list[dict[str, Any]]:
        return [c for c in self.store.confirmations if c["account_id"] == self.account_id]

    def instructions(self) -> list[dict[str, Any]]:
        return [i for i in self.store.instructions if i["account_id"] == self.account_id]


@pytest.fixture()
def book() -> Book:
    return Book()


def test_a_buy_is_confirmed_instructed_and_published_in_one_update(book: Book) -> None:
    fill = book.body(Side.BUY, "100", "190.50", fees="9.525")
    [update] = book.deliver(fill)

    [conf] = book.confirmations()
    assert (conf["execution_id"], conf["order_id"], conf["side"], conf["reversal"]) == (
        fill["executionId"],
        fill["orderId"],
        "BUY",
        False,
    )
    assert (conf["gross_amount"], conf["net_amount"], conf["currency"]) == (D("19050.00"), D("19059.525"), "USD")
    assert (conf["trade_date"], conf["settlement_date"]) == (date(2026, 11, 25), date(2026, 11, 26))
    [instruction] = book.instructions()
    assert (instruction["confirmation_id"], instruction["securities_direction"], instruction["cash_amount"]) == (
        conf["id"],
        "RECEIVE",
        D("-19059.525"),
    )
    assert (update.exchange, update.routing_key) == ("portfolio", "positions.update")
    body = update.payload
    assert (body["quantity"], body["delta"], body["averageCost"], body["realizedPnl"]) == (
        D(100),
        D(100),
        D("190.50"),
        0,
    )
    assert (body["confirmation"]["confirmationId"], body["instruction"]["instructionId"]) == (
        conf["id"],
        instruction["id"],
    )
    assert (body["instruction"]["cashDirection"], body["confirmation"]["netAmount"]) == ("PAY", D("19059.525"))
    assert book.position() == Position(D(100), D("190.50"), D(0))


def test_settlement_dates_follow_the_asset_class(book: Book) -> None:
    book.fill(Side.BUY, "1", "5200", symbol="ESZ6", timestamp=FRIDAY)  # FUTURE: T+0
    book.fill(Side.BUY, "1", "190", symbol="AAPL", timestamp=FRIDAY)  # EQUITY: T+1 over the weekend
    dates = {c["symbol"]: (c["trade_date"], c["settlement_date"]) for c in book.confirmations()}
    assert dates == {
        "ESZ6": (date(2026, 11, 27), date(2026, 11, 27)),
        "AAPL": (date(2026, 11, 27), date(2026, 11, 30)),
    }


def test_a_position_through_buys_sells_and_zero(book: Book) -> None:
    book.fill(Side.BUY, "100", "10")
    book.fill(Side.BUY, "50", "13")
    assert book.position() == Position(D(150), D(11), D(0))
    book.fill(Side.SELL, "60", "12", fees="1.00")  # fees do not enter cost or P&L
    book.fill(Side.SELL, "140", "9")  # closes 90 at a loss of 2 each, opens a short of 50 at 9
    assert book.position() == Position(D(-50), D(9), D(-120))
    book.fill(Side.BUY, "50", "8")
    assert book.position() == Position(D(0), D(0), D(-70))


def test_the_same_fill_twice_books_once(book: Book) -> None:
    fill = book.fill(Side.BUY, "100", "10", fees="1")
    assert book.deliver(fill) == []
    assert book.deliver(fill, fill) == []
    assert (len(book.confirmations()), len(book.instructions())) == (1, 1)
    assert book.position() == Position(D(100), D(10), D(0))


def test_a_reversal_restores_cost_and_pnl_around_later_trades(book: Book) -> None:
    book.fill(Side.BUY, "100", "10")
    busted = book.fill(Side.BUY, "100", "12", fees="2")
    book.fill(Side.SELL, "50", "13")
    [update] = book.deliver({**busted, "reversal": True})
    assert book.position() == Position(D(50), D(10), D(150))  # as if the busted trade never happened
    assert (update.payload["delta"], update.payload["reversal"]) == (D(-100), True)
    original, reversal = (c for c in book.confirmations() if c["execution_id"] == busted["executionId"])
    assert (reversal["reversal"], reversal["net_amount"], reversal["settlement_date"]) == (
        True,
        original["net_amount"],
        original["settlement_date"],
    )
    deliver_back = book.instructions()[-1]
    assert (deliver_back["securities_direction"], deliver_back["cash_amount"]) == ("DELIVER", D(1202))
    assert book.deliver({**busted, "reversal": True}) == []  # reversed once only


def test_a_reversal_that_overtakes_its_trade_nets_out(book: Book) -> None:
    book.fill(Side.BUY, "10", "10")
    late = book.body(Side.BUY, "5", "11")
    book.deliver({**late, "reversal": True})
    assert book.position() == Position(D(10), D(10), D(0))
    book.deliver(late)
    assert book.position() == Position(D(10), D(10), D(0))
    assert len(book.confirmations()) == 3


def test_a_batch_chains_fills_of_one_position_and_replays_a_reversal_in_it(book: Book) -> None:
    first = book.body(Side.BUY, "100", "10")
    busted = book.body(Side.BUY, "100", "12")
    sold = book.body(Side.SELL, "50", "13")
    late = book.body(Side.BUY, "10", "20")
    msft = book.body(Side.BUY, "10", "100", symbol="MSFT")
    updates = book.deliver(first, busted, msft, sold, {**busted, "reversal": True}, late, first)
    assert book.position() == Position(D(60), D("11.66666667"), D(150))
    assert book.position("MSFT") == Position(D(10), D(100), D(0))
    assert [(u.payload["symbol"], u.payload["delta"], u.payload["reversal"]) for u in updates] == [
        ("AAPL", D(100), False),
        ("AAPL", D(100), False),
        ("MSFT", D(10), False),
        ("AAPL", D(-50), False),
        ("AAPL", D(-100), True),
        ("AAPL", D(10), False),
    ]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        # The schema refuses these two; the handler does not rely on it.
        ({"quantity": D(0)}, "quantity and price must be positive"),
        ({"price": D(-1)}, "quantity and price must be positive"),
        ({"symbol": "NOSUCH"}, "unknown instrument NOSUCH"),
    ],
)
def test_a_fill_that_cannot_be_booked_is_dead_lettered(book: Book, changes: dict[str, Any], reason: str) -> None:
    good = book.body(Side.BUY, "10", "10")
    loaded = book.envelope(book.body(Side.BUY, "1", "1"))
    bad = replace(loaded, body={**loaded.body, **changes})
    with pytest.raises(DeadLetter, match=reason):
        run_batch(book.store, SPEC, book.envelope(good), bad)
    assert book.confirmations() == [] and (book.account_id, "AAPL") not in book.store.positions
    book.deliver(good)  # alone, as the runtime retries it, the good fill books
    assert book.position() == Position(D(10), D(10), D(0))


def test_a_sell_receives_the_gross_less_fees_and_delivers_the_securities(book: Book) -> None:
    book.fill(Side.BUY, "100", "10")
    sale = book.fill(Side.SELL, "40", "12.5", fees="3.25")
    conf = book.confirmations()[-1]
    assert (conf["gross_amount"], conf["fees"], conf["net_amount"], conf["venue"]) == (
        D("500.0"),
        D("3.25"),
        D("496.75"),
        "SIM",
    )
    assert isinstance(conf["id"], str) and isinstance(conf["created_at"], datetime)
    instruction = book.instructions()[-1]
    assert instruction == {
        "id": instruction["id"],
        "confirmation_id": conf["id"],
        "order_id": sale["orderId"],
        "account_id": book.account_id,
        "symbol": "AAPL",
        "securities_direction": "DELIVER",
        "quantity": D(40),
        "cash_amount": D("496.75"),
        "currency": "USD",
        "settlement_date": date(2026, 11, 26),
        "status": "PENDING",
        "created_at": conf["created_at"],
    }
    assert isinstance(instruction["id"], str) and instruction["id"] != conf["id"]
    assert book.position() == Position(D(60), D(10), D(100))


def test_the_update_carries_the_fills_timestamp_and_is_keyed_by_its_order(book: Book) -> None:
    fill = book.body(Side.BUY, "10", "10", timestamp=FRIDAY)
    [update] = book.deliver(fill)
    assert update.correlation_id == fill["orderId"]
    assert datetime.fromisoformat(str(update.payload["timestamp"])) == datetime.fromisoformat(FRIDAY)


def test_an_instruments_own_cycle_beats_its_asset_class(book: Book) -> None:
    book.store.instruments["AAPL"] = replace(book.store.instruments["AAPL"], settlement_days=3)
    book.fill(Side.BUY, "1", "190")  # Wednesday + 3 business days
    [conf] = book.confirmations()
    assert conf["settlement_date"] == date(2026, 11, 30)


def test_a_fill_moves_the_position_it_finds(book: Book) -> None:
    # A position carried in from before the OMS booked trades (no confirmations behind it) still counts.
    book.store.positions[(book.account_id, "AAPL")] = Position(D(100), D(10), D(5))
    book.fill(Side.BUY, "100", "12")
    assert book.position() == Position(D(200), D(11), D(5))


def test_a_reversal_mirrors_what_was_booked_not_what_it_says(book: Book, caplog: pytest.LogCaptureFixture) -> None:
    busted = book.fill(Side.BUY, "100", "12", fees="2")
    caplog.set_level(logging.WARNING, logger=LOGGER)
    # The bust names the execution with other terms and a later date: what was booked is what is undone.
    book.deliver({**busted, "quantity": D(90), "price": D(11), "fees": D(0), "timestamp": FRIDAY, "reversal": True})
    original, reversal = book.confirmations()
    for field in ("side", "quantity", "price", "fees", "gross_amount", "net_amount", "trade_date", "settlement_date"):
        assert reversal[field] == original[field], field
    assert reversal["reversal"] is True
    assert book.position() == Position(D(0), D(0), D(0))
    assert log_lines(caplog, LOGGER) == [
        (
            "WARNING",
            "reversal terms differ from the booked execution; reversing what was booked",
            {"booked_quantity": "100", "reversal_quantity": "90"},
        )
    ]


@pytest.mark.parametrize(("changes", "warned"), [({}, False), ({"price": D(13)}, True), ({"quantity": D(5)}, True)])
def test_a_reversal_warns_only_when_its_terms_differ(
    book: Book, caplog: pytest.LogCaptureFixture, changes: dict[str, Any], warned: bool
) -> None:
    busted = book.fill(Side.BUY, "10", "12")
    caplog.set_level(logging.WARNING, logger=LOGGER)
    book.deliver({**busted, **changes, "reversal": True})
    assert [message for _, message, _ in log_lines(caplog, LOGGER)] == (
        ["reversal terms differ from the booked execution; reversing what was booked"] if warned else []
    )


def test_a_reversal_of_an_execution_not_booked_here_uses_its_own_terms(
    book: Book, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    book.deliver({**book.body(Side.SELL, "5", "11", timestamp=FRIDAY), "reversal": True})
    [reversal] = book.confirmations()
    assert (reversal["side"], reversal["quantity"], reversal["trade_date"]) == ("SELL", D(5), date(2026, 11, 27))
    assert log_lines(caplog, LOGGER) == [
        ("WARNING", "reversal of an execution not booked here; using the message's terms", {})
    ]


def test_booking_logs_name_the_order_and_the_execution(book: Book) -> None:
    fill = book.body(Side.BUY, "10", "10")
    stream = io.StringIO()
    handler = json_handler("settlement", stream)
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        book.deliver(fill)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    [line] = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert (line["message"], line["order_id"], line["execution_id"]) == (
        "execution booked",
        fill["orderId"],
        fill["executionId"],
    )
    assert (line["reversal"], line["position"], line["settlement_date"]) == (False, "10", "2026-11-26")


def test_prepare_locks_and_loads_only_what_the_batch_will_book(book: Book) -> None:
    good = book.envelope(book.body(Side.BUY, "10", "10"))
    other = book.envelope(book.body(Side.SELL, "1", "100", symbol="MSFT"))
    loaded = book.envelope(book.body(Side.BUY, "1", "1"))
    unknown = replace(loaded, body={**loaded.body, "symbol": "NOSUCH"})
    free = replace(loaded, body={**loaded.body, "price": D(0)})
    calls: list[tuple[str, object]] = []
    with book.store.unit_of_work() as uow:
        repo = uow.settlement
        load_instruments, lock_positions = repo.load_instruments, repo.lock_positions
        load_confirmations = repo.load_confirmations

        def spy_instruments(symbols: Iterable[str]) -> None:
            calls.append(("instruments", set(symbols)))
            load_instruments(symbols)

        def spy_lock(keys: Iterable[tuple[str, str]], now: datetime) -> None:
            calls.append(("lock", set(keys)))
            assert now.tzinfo is not None
            lock_positions(keys, now)

        def spy_confirmations(execution_ids: Iterable[str]) -> None:
            calls.append(("confirmations", set(execution_ids)))
            load_confirmations(execution_ids)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(repo, "load_instruments", spy_instruments)
            patch.setattr(repo, "lock_positions", spy_lock)
            patch.setattr(repo, "load_confirmations", spy_confirmations)
            prepare(uow, [good, other, unknown, free])
        uow.rollback()
    assert calls == [
        ("instruments", {"AAPL", "MSFT", "NOSUCH"}),
        ("lock", {(book.account_id, "AAPL"), (book.account_id, "MSFT")}),
        ("confirmations", {good.body["execution_id"], other.body["execution_id"]}),
    ]


def test_a_free_fill_is_dead_lettered_with_the_rule(book: Book) -> None:
    loaded = book.envelope(book.body(Side.BUY, "1", "1"))
    free = replace(loaded, body={**loaded.body, "price": D(0)})
    message = r"^FillBooked quantity and price must be positive \(a reversal says reversal: true\)$"
    with pytest.raises(DeadLetter, match=message):
        run_batch(book.store, SPEC, free)


def test_a_fill_booked_before_is_skipped_with_a_line(book: Book, caplog: pytest.LogCaptureFixture) -> None:
    fill = book.fill(Side.BUY, "10", "10")
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    assert book.deliver(fill) == []
    assert log_lines(caplog, LOGGER) == [("DEBUG", "execution already booked; skipped", {"reversal": False})]
