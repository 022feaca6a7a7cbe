"""Settlement: book each execution (or its reversal) as a trade confirmation, a settlement instruction and
a position change, and tell the portfolio service.

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
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from common.domain import Side
from common.logging import log_context
from common.messaging.envelope import Envelope
from common.messaging.topology import PORTFOLIO_EXCHANGE
from common.runtime.stage import DeadLetter
from common.store.settlement_repo import BookedTrade, Position, SettlementRepository
from common.store.uow import UnitOfWork
from services.settlement.calendar import SettlementCalendar, trade_date_of

log = logging.getLogger(__name__)

POSITION_UPDATE_KEY = "positions.update"
TRADE_CONFIRMATION_KEY = "trades.confirmation"
SETTLEMENT_INSTRUCTION_KEY = "settlement.instruction"

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


@dataclass(frozen=True)
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

    @property
    def net(self) -> Decimal:
        return _round(self.gross + self.fees if self.side is Side.BUY else self.gross - self.fees)


def _trade(body: dict[str, Any], repo: SettlementRepository, calendar: SettlementCalendar, cycle: int) -> _Trade:
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


def handle(uow: UnitOfWork, env: Envelope, *, calendar: SettlementCalendar) -> None:
    """Book one FillBooked: confirmation, instruction, position; publish all three to the portfolio."""
    body = env.body
    order_id: str = body["order_id"]
    with log_context(order_id=order_id, execution_id=body["execution_id"]):
        _book(uow, body, order_id, calendar)


def _book(uow: UnitOfWork, body: dict[str, Any], order_id: str, calendar: SettlementCalendar) -> None:
    if body["quantity"] <= _ZERO or body["price"] <= _ZERO:
        raise DeadLetter("FillBooked quantity and price must be positive (a reversal says reversal: true)")
    instrument = uow.reference.instrument(body["symbol"])
    if instrument is None:
        raise DeadLetter(f"unknown instrument {body['symbol']}")
    account_id: str = body["account_id"]
    symbol: str = body["symbol"]
    repo = SettlementRepository(uow.connection)
    # Lock first: booking order (created_at, taken under the lock) is then the order positions change in.
    before = repo.lock_position(account_id, symbol, datetime.now(UTC))
    now = datetime.now(UTC)
    cycle = calendar.settlement_days(instrument.asset_class, instrument.settlement_days)
    trade = _trade(body, repo, calendar, cycle)
    confirmation_id = str(uuid.uuid4())
    confirmation = {
        "id": confirmation_id,
        "order_id": order_id,
        "execution_id": trade.execution_id,
        "account_id": account_id,
        "symbol": symbol,
        "side": trade.side.value,
        "quantity": trade.quantity,
        "price": trade.price,
        "gross_amount": trade.gross,
        "fees": trade.fees,
        "net_amount": trade.net,
        "currency": instrument.currency,
        "venue": body.get("venue"),
        "trade_date": trade.trade_date,
        "settlement_date": trade.settlement_date,
        "reversal": trade.reversal,
        "created_at": now,
    }
    if not repo.add_confirmation(confirmation):
        log.info("execution already booked; skipped", extra={"reversal": trade.reversal})
        return

    receives = (trade.side is Side.BUY) != trade.reversal
    cash = -trade.net if receives else trade.net
    instruction = {
        "id": str(uuid.uuid4()),
        "confirmation_id": confirmation_id,
        "order_id": order_id,
        "account_id": account_id,
        "symbol": symbol,
        "securities_direction": "RECEIVE" if receives else "DELIVER",
        "quantity": trade.quantity,
        "cash_amount": cash,
        "currency": instrument.currency,
        "settlement_date": trade.settlement_date,
        "status": "PENDING",
        "created_at": now,
    }
    repo.add_instruction(instruction)

    if trade.reversal or repo.confirmation(trade.execution_id, reversal=True) is not None:
        # Undoing a trade (or booking one already undone, the reversal having overtaken it) rebuilds the
        # position from what still stands, which is exact where an inverse trade would not be.
        after = replay(repo.standing_trades(account_id, symbol))
    else:
        signed = trade.quantity if trade.side is Side.BUY else -trade.quantity
        after = position_after(before, signed, trade.price)
    repo.save_position(account_id, symbol, after, now)

    _publish(uow, order_id, body, trade, confirmation, instruction, before, after)
    log.info(
        "execution booked",
        extra={
            "reversal": trade.reversal,
            "position": str(after.quantity),
            "settlement_date": str(trade.settlement_date),
        },
    )


def _publish(
    uow: UnitOfWork,
    order_id: str,
    body: dict[str, Any],
    trade: _Trade,
    confirmation: dict[str, Any],
    instruction: dict[str, Any],
    before: Position,
    after: Position,
) -> None:
    common = {"orderId": order_id, "executionId": trade.execution_id, "accountId": body["account_id"]}
    uow.outbox.add(
        PORTFOLIO_EXCHANGE,
        TRADE_CONFIRMATION_KEY,
        "TradeConfirmation",
        {
            "confirmationId": confirmation["id"],
            **common,
            "symbol": confirmation["symbol"],
            "side": confirmation["side"],
            "quantity": trade.quantity,
            "price": trade.price,
            "grossAmount": confirmation["gross_amount"],
            "fees": trade.fees,
            "netAmount": confirmation["net_amount"],
            "currency": confirmation["currency"],
            "venue": confirmation["venue"],
            "tradeDate": trade.trade_date,
            "settlementDate": trade.settlement_date,
            "reversal": trade.reversal,
        },
        order_id,
    )
    cash = instruction["cash_amount"]
    uow.outbox.add(
        PORTFOLIO_EXCHANGE,
        SETTLEMENT_INSTRUCTION_KEY,
        "SettlementInstruction",
        {
            "instructionId": instruction["id"],
            "confirmationId": confirmation["id"],
            **common,
            "symbol": instruction["symbol"],
            "securitiesDirection": instruction["securities_direction"],
            "quantity": trade.quantity,
            "cashDirection": "PAY" if cash < _ZERO else "RECEIVE",
            "cashAmount": cash,
            "currency": instruction["currency"],
            "settlementDate": trade.settlement_date,
            "status": instruction["status"],
            "reversal": trade.reversal,
        },
        order_id,
    )
    uow.outbox.add(
        PORTFOLIO_EXCHANGE,
        POSITION_UPDATE_KEY,
        "PositionUpdate",
        {
            **common,
            "symbol": confirmation["symbol"],
            "quantity": after.quantity,
            "delta": after.quantity - before.quantity,
            "averageCost": after.average_cost,
            "realizedPnl": after.realized_pnl,
            "timestamp": body["timestamp"],
            "reversal": trade.reversal,
        },
        order_id,
    )
