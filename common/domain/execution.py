"""Execution reports as the domain sees them, and what applying one produced."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from common.domain.enums import ExecType

_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionReportData:
    """A venue execution report (the public contract's ``ExecutionReport``, already validated).

    Quantities follow FIX: ``cum_qty``/``avg_px`` are the venue's totals for the order after this report,
    ``last_qty``/``last_px`` the execution this report carries (0/None for non-trade reports),
    ``order_qty``/``price``/``stop_price`` the terms in force at the venue. ``request_id`` names the OMS
    cancel/replace request this report answers, if any. For TRADE_CANCEL, ``exec_ref_id`` names the busted
    execution and ``last_qty``/``last_px``/``fees`` carry that execution's quantity, price and fee refund.
    """

    execution_id: str
    order_id: str
    request_id: str | None = None
    broker_order_id: str | None = None
    exec_type: ExecType
    last_qty: Decimal = _ZERO
    last_px: Decimal | None = None
    cum_qty: Decimal
    leaves_qty: Decimal
    avg_px: Decimal | None = None
    order_qty: Decimal | None = None
    price: Decimal | None = None
    stop_price: Decimal | None = None
    fees: Decimal = _ZERO
    venue: str | None = None
    timestamp: datetime
    reason: str | None = None
    exec_ref_id: str | None = None


@dataclass(frozen=True, slots=True)
class BookedExecution:
    """What an earlier execution booked (the order's rise in cumulative quantity it carried): what a bust of
    it reverses. ``busted`` is true once a bust has reversed it."""

    execution_id: str
    quantity: Decimal
    price: Decimal
    fees: Decimal
    busted: bool = False


@dataclass(frozen=True, slots=True)
class FillDelta:
    """What to book for settlement: the rise (or, for a bust, the fall) of the order's cumulative filled
    quantity that one report carried, priced by the report; fees only ever travel with a booked quantity."""

    execution_id: str
    quantity: Decimal
    price: Decimal
    fees: Decimal
    reversal: bool = False
    reverses_execution_id: str | None = None


@dataclass(slots=True)
class ReportOutcome:
    """What ``Order.apply_report`` did.

    ``applied``: the order changed (persist it and its new events). ``state_changed``: the internal state
    moved. ``status_changed``: the public status moved. ``fill``: what to book, if the report moved the
    cumulative quantity. ``anomalies``: short codes of what looked wrong (also recorded as an
    EXECUTION_ANOMALY event). ``unreported_delta``: how much this report changed the order's
    ``unreported_quantity`` (stored with the report, so a bust can take its share back).
    """

    applied: bool = False
    status_changed: bool = False
    state_changed: bool = False
    fill: FillDelta | None = None
    anomalies: list[str] = field(default_factory=list)
    unreported_delta: Decimal = _ZERO
