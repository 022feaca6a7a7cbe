"""Settlement's repository on every backend: positions, confirmations, the trades a reversal replays."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from common.orders.records import BookedTrade, Position
from tests.contract.backends import Backend, UowFactory
from tests.support.orders import create_order

D = Decimal
TRADE_DATE = date(2026, 11, 25)


def _confirmation(
    order_id: str, account_id: str, execution_id: str, *, side: str, quantity: str, reversal: bool, at: datetime
) -> tuple[dict[str, Any], dict[str, Any]]:
    confirmation_id = str(uuid.uuid4())
    confirmation = {
        "id": confirmation_id,
        "order_id": order_id,
        "execution_id": execution_id,
        "account_id": account_id,
        "symbol": "AAPL",
        "side": side,
        "quantity": D(quantity),
        "price": D("190"),
        "gross_amount": D(quantity) * D("190"),
        "fees": D("1"),
        "net_amount": D(quantity) * D("190") + D("1"),
        "currency": "USD",
        "venue": "SIM",
        "trade_date": TRADE_DATE,
        "settlement_date": TRADE_DATE + timedelta(days=1),
        "reversal": reversal,
        "created_at": at,
    }
    instruction = {
        "id": str(uuid.uuid4()),
        "confirmation_id": confirmation_id,
        "order_id": order_id,
        "account_id": account_id,
        "symbol": "AAPL",
        "securities_direction": "RECEIVE",
        "quantity": D(quantity),
        "cash_amount": -(D(quantity) * D("190") + D("1")),
        "currency": "USD",
        "settlement_date": TRADE_DATE + timedelta(days=1),
        "status": "PENDING",
        "created_at": at,
    }
    return confirmation, instruction


@pytest.fixture()
def account_and_order(backend: Backend, uow_factory: UowFactory) -> tuple[str, str]:
    """A fresh account (so its positions are the test's own) with one order."""
    account_id = backend.new_account()
    order = create_order(account_id=account_id)
    with uow_factory() as uow:
        uow.orders.add(order, correlation_id=None, message_id=None)
        uow.commit()
    return account_id, order.id


def test_positions_start_flat_and_keep_what_was_set(
    uow_factory: UowFactory, account_and_order: tuple[str, str]
) -> None:
    account_id, _ = account_and_order
    now = datetime.now(UTC)
    with uow_factory() as uow:
        uow.settlement.lock_positions([(account_id, "AAPL"), (account_id, "MSFT")], now)
        assert uow.settlement.position(account_id, "AAPL") == Position()
        uow.settlement.set_position(account_id, "AAPL", Position(D("40"), D("190.5"), D("0")), now)
        assert uow.settlement.position(account_id, "AAPL") == Position(D("40"), D("190.5"), D("0"))
        uow.commit()
    with uow_factory() as uow:
        assert uow.settlement.position(account_id, "AAPL") == Position(D("40"), D("190.5"), D("0"))
        assert uow.settlement.position(account_id, "MSFT") == Position()
        uow.settlement.set_position(account_id, "AAPL", Position(D("10"), D("190.5"), D("3")), now)
        uow.rollback()
        assert uow.settlement.position(account_id, "AAPL") == Position(D("40"), D("190.5"), D("0"))
        with pytest.raises(RuntimeError):
            uow.settlement.set_position(account_id, "SPY", Position(D("1")), now)  # never locked


def test_a_confirmation_is_found_by_execution_and_reversal(
    uow_factory: UowFactory, account_and_order: tuple[str, str]
) -> None:
    account_id, order_id = account_and_order
    execution_id = str(uuid.uuid4())
    with uow_factory() as uow:
        uow.settlement.load_confirmations([execution_id])
        assert uow.settlement.confirmation(execution_id, reversal=False) is None
        stamp = uow.settlement.stamp()
        uow.settlement.add(
            *_confirmation(order_id, account_id, execution_id, side="BUY", quantity="40", reversal=False, at=stamp)
        )
        booked = uow.settlement.confirmation(execution_id, reversal=False)  # in the same batch
        assert booked is not None and booked.quantity == D("40")
        assert uow.settlement.confirmation(execution_id, reversal=True) is None
        uow.commit()
    with uow_factory() as uow:
        booked = uow.settlement.confirmation(execution_id, reversal=False)
        assert booked is not None
        assert (booked.execution_id, booked.side, booked.quantity, booked.price, booked.fees) == (
            execution_id,
            "BUY",
            D("40"),
            D("190"),
            D("1"),
        )
        assert (booked.trade_date, booked.settlement_date) == (TRADE_DATE, TRADE_DATE + timedelta(days=1))


def test_standing_trades_leave_out_what_a_reversal_undid_in_booking_order(
    uow_factory: UowFactory, account_and_order: tuple[str, str]
) -> None:
    account_id, order_id = account_and_order
    first, second, third = (str(uuid.uuid4()) for _ in range(3))
    with uow_factory() as uow:
        for execution_id, side, quantity in ((first, "BUY", "40"), (second, "BUY", "10"), (third, "SELL", "5")):
            uow.settlement.add(
                *_confirmation(
                    order_id,
                    account_id,
                    execution_id,
                    side=side,
                    quantity=quantity,
                    reversal=False,
                    at=uow.settlement.stamp(),
                )
            )
        uow.commit()
    with uow_factory() as uow:
        uow.settlement.add(
            *_confirmation(
                order_id, account_id, second, side="BUY", quantity="10", reversal=True, at=uow.settlement.stamp()
            )
        )
        # This transaction's reversal counts.
        assert uow.settlement.standing_trades(account_id, "AAPL") == [
            BookedTrade(first, "BUY", D("40"), D("190")),
            BookedTrade(third, "SELL", D("5"), D("190")),
        ]
        assert uow.settlement.standing_trades(account_id, "MSFT") == []


def test_stamps_rise_strictly_and_instruments_are_read(uow_factory: UowFactory) -> None:
    with uow_factory() as uow:
        stamps = [uow.settlement.stamp() for _ in range(50)]
        assert all(a < b for a, b in zip(stamps, stamps[1:], strict=False))
        uow.settlement.load_instruments(["AAPL", "ESZ6", "NOPE"])
        apple = uow.settlement.instrument("AAPL")
        assert apple is not None and (apple.asset_class, apple.currency, apple.settlement_days) == (
            "EQUITY",
            "USD",
            None,
        )
        future = uow.settlement.instrument("ESZ6")
        assert future is not None and future.settlement_days == 0
        assert uow.settlement.instrument("NOPE") is None
