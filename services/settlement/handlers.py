"""Settlement: book each execution (or its reversal) as a trade confirmation, a settlement instruction and
a position change, and tell the portfolio service in one ``positions.update`` per fill, which carries the
confirmation and the instruction with it.

The FillBooked contract (shared with the execution handler): ``quantity``, ``price`` and ``fees`` are always
the execution's own terms, quantity positive; ``reversal: true`` means "undo execution ``executionId``" (a
busted trade). So one execution is booked at most once and reversed at most once: confirmations are unique
on (execution_id, reversal), which also makes a redelivered FillBooked harmless.

Amounts: gross = quantity x price; net = gross + fees for a BUY (cash the account pays) and gross - fees for
a SELL (cash it receives). An instruction's ``cash_amount`` is signed from the account's side: negative =
the account pays. A reversal books the opposite instruction (DELIVER instead of RECEIVE, cash back).

Positions: average cost (of price, fees excluded) moves when the position grows, realized P&L when it
shrinks; crossing through zero closes the old side and opens the new one at the trade price. A reversal
recomputes the position from the trades still standing, in booking order, so it restores the exact average
cost and P&L it would have had without the busted trade, even with trades booked after it.

Set-based per batch: ``prepare`` (once per batch transaction) locks every position the batch touches in
(account, symbol) order and loads its instruments and the confirmations already booked for its execution ids,
in four statements; the handler then books each fill in memory, in message order (fills of one position in one
batch chain), and the repository writes the batch's confirmations, instructions and positions in one statement
per table at commit. A reversal (rare) replays the position from the store, after writing what the batch booked
before it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from common.domain import Side
from common.ids import new_id
from common.logging import log_context
from common.messages.bodies import position_update_body
from common.messages.catalogue import POSITION_UPDATE
from common.messaging.envelope import Envelope
from common.orders.ports import AbstractSettlementRepository, AbstractUnitOfWork
from common.orders.records import BookedTrade, Position
from common.runtime.stage import DeadLetter
from common.settlement_calendar import SettlementCalendar, trade_date_of

log = logging.getLogger(__name__)

_ZERO = Decimal(0)
# DECIMAL(20,8) in the store: computed amounts are rounded alike so the published values equal the stored.
_QUANTUM = Decimal("0.00000001")


def _round(value: Decimal) -> Decimal:
    return value.quantize(_QUANTUM, ROUND_HALF_EVEN)


def _sign(value: Decimal) -> int:
    return (value > _ZERO) - (value < _ZERO)


def position_after(position: Position, signed_quantity: Decimal, price: Decimal) -> Position:
    """The position after trading ``signed_quantity`` (positive = bought) at ``price``."""
    old = position.quantity
    new = old + signed_quantity
    if signed_quantity == _ZERO:
        return position
    if old == _ZERO or _sign(old) == _sign(signed_quantity):
        # Growing (or opening): the average cost is the quantity-weighted mean of old and new.
        cost = position.average_cost * abs(old) + price * abs(signed_quantity)
        return Position(new, _round(cost / abs(new)), position.realized_pnl)
    closed = min(abs(signed_quantity), abs(old))
    realized = _round(position.realized_pnl + closed * (price - position.average_cost) * _sign(old))
    if new == _ZERO:
        return Position(new, _ZERO, realized)
    if _sign(new) == _sign(old):
        return Position(new, position.average_cost, realized)
    # Through zero: what is left is a new position on the other side, opened at this price.
    return Position(new, price, realized)


def replay(trades: list[BookedTrade]) -> Position:
    """The position these trades build from flat, in order."""
    position = Position()
    for trade in trades:
        signed = trade.quantity if trade.side == Side.BUY else -trade.quantity
        position = position_after(position, signed, trade.price)
    return position


@dataclass(frozen=True, slots=True)
class _Trade:
    """The execution being booked, with amounts and dates settled."""

    execution_id: str
    side: Side
    quantity: Decimal
    price: Decimal
    fees: Decimal
    trade_date: date
    settlement_date: date
    reversal: bool

    @property
    def gross(self) -> Decimal:
        return _round(self.quantity * self.price)

    def net(self, gross: Decimal) -> Decimal:
        return _round(gross + self.fees if self.side is Side.BUY else gross - self.fees)


def _bookable(body: dict[str, Any]) -> bool:
    return bool(body["quantity"] > _ZERO and body["price"] > _ZERO)


def prepare(uow: AbstractUnitOfWork, envelopes: Iterable[Envelope]) -> None:
    """Once per batch transaction: load its instruments, lock its positions, load its executions' confirmations.

    A message that will be dead-lettered (non-positive terms, unknown instrument) locks nothing: its handler
    raises before it needs a position.
    """
    repo = uow.settlement
    bodies = [env.body for env in envelopes]
    repo.load_instruments({body["symbol"] for body in bodies})
    bookable = [b for b in bodies if _bookable(b) and repo.instrument(b["symbol"]) is not None]
    # Locks first, then the confirmations they guard (read after any wait, so what the writer before committed).
    repo.lock_positions({(b["account_id"], b["symbol"]) for b in bookable}, datetime.now(UTC))
    repo.load_confirmations({b["execution_id"] for b in bookable})


def _trade(
    body: dict[str, Any], repo: AbstractSettlementRepository, calendar: SettlementCalendar, cycle: int
) -> _Trade:
    execution_id = body["execution_id"]
    trade_date = trade_date_of(body["timestamp"])
    trade = _Trade(
        execution_id=execution_id,
        side=Side(body["side"]),
        quantity=body["quantity"],
        price=body["price"],
        fees=body["fees"],
        trade_date=trade_date,
        settlement_date=calendar.add_business_days(trade_date, cycle),
        reversal=bool(body["reversal"]),
    )
    if not trade.reversal:
        return trade
    original = repo.confirmation(execution_id, reversal=False)
    if original is None:
        log.warning("reversal of an execution not booked here; using the message's terms")
        return trade
    if original.quantity != trade.quantity or original.price != trade.price:
        log.warning(
            "reversal terms differ from the booked execution; reversing what was booked",
            extra={"booked_quantity": str(original.quantity), "reversal_quantity": str(trade.quantity)},
        )
    # An exact mirror of what was booked, on the same dates, so the two settle against each other.
    return _Trade(
        execution_id=execution_id,
        side=Side(original.side),
        quantity=original.quantity,
        price=original.price,
        fees=original.fees,
        trade_date=original.trade_date,
        settlement_date=original.settlement_date,
        reversal=True,
    )


def book_fill(uow: AbstractUnitOfWork, env: Envelope, *, calendar: SettlementCalendar) -> None:
    """Book one FillBooked: confirmation, instruction, position; publish one position update carrying them."""
    body = env.body
    order_id: str = body["order_id"]
    with log_context(order_id=order_id, execution_id=body["execution_id"]):
        _book(uow, body, order_id, calendar)


def _book(uow: AbstractUnitOfWork, body: dict[str, Any], order_id: str, calendar: SettlementCalendar) -> None:
    if not _bookable(body):
        raise DeadLetter("FillBooked quantity and price must be positive (a reversal says reversal: true)")
    repo = uow.settlement
    symbol: str = body["symbol"]
    instrument = repo.instrument(symbol)
    if instrument is None:
        raise DeadLetter(f"unknown instrument {symbol}")
    account_id: str = body["account_id"]
    # Locked first (by ``prepare``, or here): booking order (created_at, taken under the lock) is then the order
    # positions change in.
    before = repo.position(account_id, symbol)
    reversal = bool(body["reversal"])
    if repo.confirmation(body["execution_id"], reversal) is not None:
        log.debug("execution already booked; skipped", extra={"reversal": reversal})
        return
    now = repo.stamp()
    cycle = calendar.settlement_days(instrument.asset_class, instrument.settlement_days)
    trade = _trade(body, repo, calendar, cycle)
    gross = trade.gross
    net = trade.net(gross)
    confirmation_id = new_id()
    confirmation = {
        "id": confirmation_id,
        "order_id": order_id,
        "execution_id": trade.execution_id,
        "account_id": account_id,
        "symbol": symbol,
        "side": trade.side.value,
        "quantity": trade.quantity,
        "price": trade.price,
        "gross_amount": gross,
        "fees": trade.fees,
        "net_amount": net,
        "currency": instrument.currency,
        "venue": body.get("venue"),
        "trade_date": trade.trade_date,
        "settlement_date": trade.settlement_date,
        "reversal": trade.reversal,
        "created_at": now,
    }
    receives = (trade.side is Side.BUY) != trade.reversal
    instruction = {
        "id": new_id(),
        "confirmation_id": confirmation_id,
        "order_id": order_id,
        "account_id": account_id,
        "symbol": symbol,
        "securities_direction": "RECEIVE" if receives else "DELIVER",
        "quantity": trade.quantity,
        "cash_amount": -net if receives else net,
        "currency": instrument.currency,
        "settlement_date": trade.settlement_date,
        "status": "PENDING",
        "created_at": now,
    }
    repo.add(confirmation, instruction)

    if trade.reversal or repo.confirmation(trade.execution_id, reversal=True) is not None:
        # Undoing a trade (or booking one already undone, the reversal having overtaken it) rebuilds the
        # position from what still stands, which is exact where an inverse trade would not be.
        after = replay(repo.standing_trades(account_id, symbol))
    else:
        signed = trade.quantity if trade.side is Side.BUY else -trade.quantity
        after = position_after(before, signed, trade.price)
    repo.set_position(account_id, symbol, after, now)

    _publish(uow, body, confirmation, instruction, before, after)
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "execution booked",
            extra={
                "reversal": trade.reversal,
                "position": str(after.quantity),
                "settlement_date": str(trade.settlement_date),
            },
        )


def _publish(
    uow: AbstractUnitOfWork,
    body: dict[str, Any],
    confirmation: dict[str, Any],
    instruction: dict[str, Any],
    before: Position,
    after: Position,
) -> None:
    """One ``positions.update`` per fill, carrying the confirmation and the instruction (what the retired
    ``trades.confirmation`` and ``settlement.instruction`` messages carried, field for field)."""
    update = position_update_body(
        confirmation,
        instruction,
        quantity=after.quantity,
        delta=after.quantity - before.quantity,
        average_cost=after.average_cost,
        realized_pnl=after.realized_pnl,
        timestamp=body["timestamp"],
    )
    POSITION_UPDATE.send(uow.outbox, update, confirmation["order_id"])
