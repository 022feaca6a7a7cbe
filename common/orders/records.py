"""The values the repositories hand over (``common.orders.ports``): what a row of the store says, as plain data.

They belong to the application, not to a store: the Postgres repositories (``common.store``) and the in-memory
ones of the tests build the same values, so a handler cannot tell which store it runs on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, time
from decimal import Decimal
from typing import Any

from common.domain import ExecutionReportData

_ZERO = Decimal(0)

# --------------------------------------------------------------------------- reference data


@dataclass(frozen=True)
class Account:
    """A trading account."""

    id: str
    name: str
    account_type: str
    base_currency: str
    cash_balance: Decimal
    active: bool


@dataclass(frozen=True)
class Instrument:
    """A tradable instrument with its tick, lot and session."""

    symbol: str
    name: str
    asset_class: str
    currency: str
    tick_size: Decimal
    lot_size: Decimal
    tradable: bool
    settlement_days: int | None
    session_open: time | None
    session_close: time | None
    session_timezone: str | None
    reference_price: Decimal | None


# --------------------------------------------------------------------------- execution reports


@dataclass(frozen=True, slots=True)
class StoredReport:
    """The terms of a recorded execution report that identify it: a resend carries the same ones."""

    order_id: str
    exec_type: str
    last_qty: Decimal | None
    last_px: Decimal | None
    cum_qty: Decimal | None
    exec_ref_id: str | None

    @classmethod
    def of(cls, report: ExecutionReportData) -> StoredReport:
        """What recording ``report`` keeps of it."""
        return cls(
            report.order_id,
            report.exec_type.value,
            report.last_qty,
            report.last_px,
            report.cum_qty,
            report.exec_ref_id,
        )

    def differences(self, report: ExecutionReportData) -> list[str]:
        """The fields in which ``report`` differs from this one (empty: the same report sent again)."""
        theirs = {
            "orderId": report.order_id,
            "execType": report.exec_type.value,
            "lastQty": report.last_qty,
            "lastPx": report.last_px,
            "cumQty": report.cum_qty,
            "execRefId": report.exec_ref_id,
        }
        ours = {
            "orderId": self.order_id,
            "execType": self.exec_type,
            # Rows from before revision 0005 have no last_qty; a missing lastQty is reported as 0.
            "lastQty": self.last_qty if self.last_qty is not None else report.last_qty,
            "lastPx": self.last_px if self.last_qty is not None else report.last_px,
            "cumQty": self.cum_qty,
            "execRefId": self.exec_ref_id,
        }
        return [name for name, value in theirs.items() if value != ours[name]]


# --------------------------------------------------------------------------- venue requests

# The kind of an order request: the domain's RequestKind plus the router's NEW.
REQUEST_NEW = "NEW"
# Statuses: PENDING (written, not yet handed to the broker; a replace waits for the risk gate, then the router),
# SENT (in the router's outbox), SKIPPED (not sent: the order ended or another request superseded it; the reason
# says which), ACCEPTED (the venue acknowledged it), DONE (the venue carried it out), REJECTED (the venue refused
# it, or the risk gate refused a replace's new terms: the reason says which rule). DONE and REJECTED are final.
REQUEST_PENDING = "PENDING"
REQUEST_SENT = "SENT"
REQUEST_SKIPPED = "SKIPPED"
REQUEST_ACCEPTED = "ACCEPTED"
REQUEST_DONE = "DONE"
REQUEST_REJECTED = "REJECTED"
FINAL_REQUEST_STATUSES = (REQUEST_DONE, REQUEST_REJECTED)


@dataclass(frozen=True)
class VenueRequest:
    """One new, cancel or replace request for the venue (an ``order_requests`` row)."""

    request_id: str
    order_id: str
    kind: str
    terms: Mapping[str, Any]
    status: str
    reason: str | None
    created_by: str | None


def _decimal(value: object) -> Decimal | None:
    # JSON terms may come back as float from a store without the Decimal-exact deserialiser.
    return None if value is None else Decimal(str(value))


def terms_of(request: VenueRequest) -> tuple[Decimal | None, Decimal | None, Decimal | None]:
    """The (quantity, price, stop price) a replace request asks for."""
    terms = request.terms
    return _decimal(terms.get("quantity")), _decimal(terms.get("price")), _decimal(terms.get("stopPrice"))


# --------------------------------------------------------------------------- settlement

PositionKey = tuple[str, str]  # (account_id, symbol)


@dataclass(frozen=True, slots=True)
class Position:
    """An account's holding of a symbol: signed quantity (negative = short), average cost, realized P&L."""

    quantity: Decimal = _ZERO
    average_cost: Decimal = _ZERO
    realized_pnl: Decimal = _ZERO


@dataclass(frozen=True, slots=True)
class BookedTrade:
    """What a confirmation says about the position: who bought or sold how much at what price."""

    execution_id: str
    side: str
    quantity: Decimal
    price: Decimal


@dataclass(frozen=True, slots=True)
class Confirmation:
    """A stored trade confirmation (the fields settlement needs to reverse it)."""

    id: str
    execution_id: str
    side: str
    quantity: Decimal
    price: Decimal
    fees: Decimal
    trade_date: date
    settlement_date: date

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Confirmation:
        """The confirmation of a ``trade_confirmations`` row (as ``AbstractSettlementRepository.add`` takes it)."""
        return cls(
            row["id"],
            row["execution_id"],
            row["side"],
            row["quantity"],
            row["price"],
            row["fees"],
            row["trade_date"],
            row["settlement_date"],
        )


@dataclass(frozen=True, slots=True)
class SettlementInstrument:
    """What settlement needs of an instrument: its currency and settlement cycle."""

    symbol: str
    asset_class: str
    currency: str
    settlement_days: int | None
