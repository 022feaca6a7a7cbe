"""The ``Order`` aggregate: commands from inside the OMS and FIX execution-report semantics.

Every method either changes the order (appending events, bumping ``version`` and ``updated_at``) or raises
a ``DomainError`` and leaves it untouched. ``apply_report`` never raises for anything a venue may send:
what looks wrong is applied as far as it can be, recorded and returned as an anomaly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal

from common.domain import lifecycle
from common.domain.enums import (
    TERMINAL_STATES,
    ExecType,
    OrderEventType,
    OrderState,
    OrderStatus,
    OrderType,
    RequestKind,
    Side,
    TimeInForce,
    public_status,
)
from common.domain.errors import InvalidCommand, InvalidTransition, ReportMismatch
from common.domain.events import DomainEvent
from common.domain.execution import BookedExecution, ExecutionReportData, FillDelta, ReportOutcome

S = OrderState
E = OrderEventType
_ZERO = Decimal(0)
# Prices are DECIMAL(20,8) in the store; a computed average is rounded the same way so that a reloaded
# order equals the one that was saved.
_PRICE_QUANTUM = Decimal("0.00000001")


def order_terms_problems(
    type: OrderType, quantity: Decimal, price: Decimal | None, stop_price: Decimal | None
) -> list[str]:
    """Return what is wrong with an order's terms (empty when valid); mirrors the orders table checks."""
    problems: list[str] = []
    if not quantity.is_finite() or quantity <= _ZERO:
        problems.append("quantity must be positive")
    if price is not None and (not price.is_finite() or price <= _ZERO):
        problems.append("price must be positive")
    if stop_price is not None and (not stop_price.is_finite() or stop_price <= _ZERO):
        problems.append("stopPrice must be positive")
    if type is OrderType.MARKET and price is not None:
        problems.append("a MARKET order takes no price")
    if type in (OrderType.LIMIT, OrderType.STOP_LIMIT) and price is None:
        problems.append(f"a {type} order needs a price")
    if type in (OrderType.STOP, OrderType.STOP_LIMIT) and stop_price is None:
        problems.append(f"a {type} order needs a stopPrice")
    return problems


def _with_details(details: Mapping[str, object] | None, payload: dict[str, object]) -> dict[str, object]:
    """An event payload with the caller's details merged in; the command's own fields win a clash."""
    return {**details, **payload} if details else payload


def _decimal_or_none(value: object) -> Decimal | None:
    return None if value is None else Decimal(str(value))


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingRequest:
    """The latest cancel or replace the OMS sent and the venue has not answered yet.

    ``quantity``/``price``/``stop_price`` are the complete new terms of a replace. ``acknowledged`` turns
    true when the venue reports PENDING_CANCEL / PENDING_REPLACE for this request.
    """

    kind: RequestKind
    request_id: str
    requested_at: datetime
    quantity: Decimal | None = None
    price: Decimal | None = None
    stop_price: Decimal | None = None
    reason: str | None = None
    acknowledged: bool = False

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly form for the store (Decimal kept; the store renders it)."""
        return {
            "kind": str(self.kind),
            "requestId": self.request_id,
            "requestedAt": self.requested_at.isoformat(),
            "quantity": self.quantity,
            "price": self.price,
            "stopPrice": self.stop_price,
            "reason": self.reason,
            "acknowledged": self.acknowledged,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> PendingRequest:
        """Inverse of ``to_dict`` (numbers may come back as str, int, float or Decimal)."""
        requested_at = data["requestedAt"]
        if not isinstance(requested_at, datetime):
            requested_at = datetime.fromisoformat(str(requested_at))
        reason = data.get("reason")
        return cls(
            kind=RequestKind(str(data["kind"])),
            request_id=str(data["requestId"]),
            requested_at=requested_at,
            quantity=_decimal_or_none(data.get("quantity")),
            price=_decimal_or_none(data.get("price")),
            stop_price=_decimal_or_none(data.get("stopPrice")),
            reason=None if reason is None else str(reason),
            acknowledged=bool(data.get("acknowledged", False)),
        )


_Handler = Callable[["Order", ExecutionReportData, "_Apply"], None]
_FILL_TYPES = frozenset({ExecType.PARTIAL_FILL, ExecType.FILL})


@dataclass(slots=True)
class _Apply:
    """Scratch state of one ``apply_report`` call."""

    anomalies: list[str] = field(default_factory=list)
    flags: dict[str, object] = field(default_factory=dict)
    extra: list[tuple[OrderEventType, dict[str, object]]] = field(default_factory=list)
    fill: FillDelta | None = None
    cum_applied: bool = False
    busted: BookedExecution | None = None
    unreported_delta: Decimal = _ZERO


@dataclass(slots=True, kw_only=True)
class Order:
    """The order aggregate. Build new orders with ``create``/``create_rejected``; the store may build
    loaded ones directly from their columns (``events`` starts empty)."""

    id: str
    account_id: str
    symbol: str
    side: Side
    type: OrderType
    quantity: Decimal
    price: Decimal | None = None
    stop_price: Decimal | None = None
    time_in_force: TimeInForce = TimeInForce.DAY
    strategy_id: str | None = None
    notes: str | None = None
    client_order_id: str | None = None
    state: OrderState = OrderState.NEW
    filled_quantity: Decimal = _ZERO
    average_execution_price: Decimal | None = None
    fees: Decimal = _ZERO
    broker_order_id: str | None = None
    rejection_reason: str | None = None
    rejection_code: str | None = None
    overfilled: bool = False
    # Filled quantity the venue's cumulative totals added beyond what the reports' own executions said (a
    # report overtaken by a later one, or missed): a late report is matched against it instead of being
    # taken for a contradiction.
    unreported_quantity: Decimal = _ZERO
    pending_request: PendingRequest | None = None
    created_at: datetime
    updated_at: datetime
    version: int = 1
    events: list[DomainEvent] = field(default_factory=list, compare=False, repr=False)

    # ------------------------------------------------------------------ derived

    @property
    def status(self) -> OrderStatus:
        """The spec's public status."""
        return public_status(self.state, self.filled_quantity)

    @property
    def is_terminal(self) -> bool:
        """FILLED, CANCELED, EXPIRED or REJECTED."""
        return self.state in TERMINAL_STATES

    @property
    def leaves_quantity(self) -> Decimal:
        """Quantity still working: 0 when terminal, else max(quantity - filled, 0)."""
        if self.state in TERMINAL_STATES:
            return _ZERO
        leaves = self.quantity - self.filled_quantity
        return leaves if leaves > _ZERO else _ZERO

    def pull_events(self) -> list[DomainEvent]:
        """Return the events recorded since the last pull and forget them (the store persists them)."""
        events, self.events = self.events, []
        return events

    # ------------------------------------------------------------------ factories

    @classmethod
    def create(
        cls,
        *,
        id: str,
        account_id: str,
        symbol: str,
        side: Side,
        type: OrderType,
        quantity: Decimal,
        price: Decimal | None,
        stop_price: Decimal | None,
        time_in_force: TimeInForce,
        strategy_id: str | None,
        notes: str | None,
        client_order_id: str | None,
        now: datetime,
        user_id: str | None,
    ) -> Order:
        """A NEW order awaiting risk; raises ``InvalidCommand`` if its terms break a rule."""
        problems = order_terms_problems(type, quantity, price, stop_price)
        if problems:
            raise InvalidCommand("; ".join(problems))
        order = cls(
            id=id,
            account_id=account_id,
            symbol=symbol,
            side=side,
            type=type,
            quantity=quantity,
            price=price,
            stop_price=stop_price,
            time_in_force=time_in_force,
            strategy_id=strategy_id,
            notes=notes,
            client_order_id=client_order_id,
            created_at=now,
            updated_at=now,
        )
        order._emit(E.ORDER_CREATED, order._terms_payload(), now, user_id)
        return order

    @classmethod
    def create_rejected(
        cls,
        *,
        id: str,
        account_id: str,
        symbol: str,
        side: Side,
        type: OrderType,
        quantity: Decimal,
        price: Decimal | None,
        stop_price: Decimal | None,
        time_in_force: TimeInForce,
        strategy_id: str | None,
        notes: str | None,
        client_order_id: str | None,
        now: datetime,
        user_id: str | None,
        code: str,
        reason: str,
    ) -> Order:
        """An order born REJECTED (a decision naming an account and symbol that breaks a rule).

        Terms are not validated: they are recorded as received so the rejection can be audited.
        """
        order = cls(
            id=id,
            account_id=account_id,
            symbol=symbol,
            side=side,
            type=type,
            quantity=quantity,
            price=price,
            stop_price=stop_price,
            time_in_force=time_in_force,
            strategy_id=strategy_id,
            notes=notes,
            client_order_id=client_order_id,
            created_at=now,
            updated_at=now,
            state=S.REJECTED,
            rejection_code=code,
            rejection_reason=reason,
        )
        order._emit(E.ORDER_CREATED, order._terms_payload(), now, user_id)
        order._emit(E.ORDER_REJECTED, {"code": code, "reason": reason, "state": order.state}, now, user_id)
        return order

    # ------------------------------------------------------------------ commands

    def approve(self, checks: Sequence[str], now: datetime, details: Mapping[str, object] | None = None) -> None:
        """Risk passed: NEW -> APPROVED, recording the checks that ran (and ``details``, e.g. the figures)."""
        self._command("approve", S.APPROVED)
        self._touch(now)
        self._emit(E.RISK_APPROVED, _with_details(details, {"checks": list(checks), "state": self.state}), now)

    def reject(
        self,
        code: str,
        reason: str,
        now: datetime,
        user_id: str | None = None,
        details: Mapping[str, object] | None = None,
    ) -> None:
        """Rejected inside the OMS (risk, routing): NEW/APPROVED/ROUTED -> REJECTED; ``details`` (the rule and
        its figures) join the event."""
        self._command("reject", S.REJECTED)
        self.rejection_code = code
        self.rejection_reason = reason
        self.pending_request = None
        self._touch(now)
        payload = _with_details(details, {"code": code, "reason": reason, "state": self.state})
        self._emit(E.ORDER_REJECTED, payload, now, user_id)

    def mark_routed(self, request_id: str, now: datetime) -> None:
        """The router handed the order to the broker (request ``request_id``): APPROVED -> ROUTED."""
        self._command("route", S.ROUTED)
        self._touch(now)
        self._emit(E.ORDER_ROUTED, {"request_id": request_id, "state": self.state}, now)

    def cancel_unrouted(self, reason: str | None, now: datetime, user_id: str | None) -> None:
        """Cancel an order the venue has not seen yet (NEW/APPROVED): CANCELED at once."""
        self._command("cancel_unrouted", S.CANCELED)
        self._touch(now)
        self._emit(E.ORDER_CANCELED, {"reason": reason, "at_venue": False, "state": self.state}, now, user_id)

    def modify_unrouted(
        self,
        quantity: Decimal,
        price: Decimal | None,
        stop_price: Decimal | None,
        now: datetime,
        user_id: str | None,
    ) -> None:
        """New terms for an order not yet at the venue: back to NEW so risk runs again."""
        self._check("modify_unrouted")
        problems = order_terms_problems(self.type, quantity, price, stop_price)
        if problems:
            raise InvalidCommand("; ".join(problems))
        previous = {"quantity": self.quantity, "price": self.price, "stop_price": self.stop_price}
        self.quantity, self.price, self.stop_price = quantity, price, stop_price
        self.state = S.NEW
        self._touch(now)
        self._emit(
            E.ORDER_MODIFIED,
            {"previous": previous, "quantity": quantity, "price": price, "stop_price": stop_price, "state": self.state},
            now,
            user_id,
        )

    def request_cancel(self, request_id: str, reason: str | None, now: datetime, user_id: str | None) -> None:
        """Ask the venue to cancel; the state moves only when the venue answers."""
        self._check("request_cancel")
        self._refuse_if_cancel_outstanding("request_cancel")
        previous = self.pending_request
        self.pending_request = PendingRequest(
            kind=RequestKind.CANCEL, request_id=request_id, requested_at=now, reason=reason
        )
        self._touch(now)
        self._emit(
            E.CANCEL_REQUESTED,
            {
                "request_id": request_id,
                "reason": reason,
                "supersedes_request_id": previous.request_id if previous else None,
                "state": self.state,
            },
            now,
            user_id,
        )

    def request_replace(
        self,
        request_id: str,
        quantity: Decimal,
        price: Decimal | None,
        stop_price: Decimal | None,
        now: datetime,
        user_id: str | None,
    ) -> None:
        """Ask the venue to replace the terms (complete new terms); in force only once the venue confirms.

        A replace may follow an unanswered one (FIX chaining, D16); answers are matched by request id.
        """
        self._check("request_replace")
        self._refuse_if_cancel_outstanding("request_replace")
        problems = order_terms_problems(self.type, quantity, price, stop_price)
        if problems:
            raise InvalidCommand("; ".join(problems))
        previous = self.pending_request
        self.pending_request = PendingRequest(
            kind=RequestKind.REPLACE,
            request_id=request_id,
            requested_at=now,
            quantity=quantity,
            price=price,
            stop_price=stop_price,
        )
        self._touch(now)
        self._emit(
            E.REPLACE_REQUESTED,
            {
                "request_id": request_id,
                "quantity": quantity,
                "price": price,
                "stop_price": stop_price,
                "supersedes_request_id": previous.request_id if previous else None,
                "state": self.state,
            },
            now,
            user_id,
        )

    def approve_replace_request(
        self,
        request_id: str,
        checks: Sequence[str],
        now: datetime,
        details: Mapping[str, object] | None = None,
    ) -> None:
        """Risk passed the new terms of the replace ``request_id``, which may now go to the venue. Recorded only:
        state and terms change when the venue confirms. Refused unless it is the order's pending request."""
        self._check("approve_replace_request")
        pending = self.pending_request
        if pending is None or pending.kind is not RequestKind.REPLACE or pending.request_id != request_id:
            raise InvalidCommand(f"replace {request_id} is not the order's pending request")
        self._touch(now)
        payload: dict[str, object] = {"request_id": request_id, "checks": list(checks), "state": self.state}
        self._emit(E.RISK_APPROVED, _with_details(details, payload), now)

    def reject_replace_request(
        self,
        request_id: str,
        code: str,
        reason: str,
        now: datetime,
        details: Mapping[str, object] | None = None,
    ) -> None:
        """Risk refused the new terms of the replace ``request_id``: it never reaches the venue, so the order's
        state and terms stay; its pending request is cleared if it is this one."""
        self._check("reject_replace_request")
        pending = self.pending_request
        cleared = pending is not None and pending.kind is RequestKind.REPLACE and pending.request_id == request_id
        if cleared:
            self.pending_request = None
        self._touch(now)
        payload: dict[str, object] = {
            "request_id": request_id,
            "code": code,
            "reason": reason,
            "source": "risk",
            "pending_cleared": cleared,
            "state": self.state,
        }
        self._emit(E.REPLACE_REJECTED, _with_details(details, payload), now)

    def expire(self, reason: str | None, now: datetime, user_id: str | None = None) -> None:
        """Expire a live order inside the OMS (e.g. a DAY order at session close). A fill the venue
        reports later is still applied (late fill)."""
        self._command("expire", S.EXPIRED)
        self.pending_request = None
        self._touch(now)
        self._emit(E.ORDER_EXPIRED, {"reason": reason, "source": "oms", "state": self.state}, now, user_id)

    def record_anomaly(
        self,
        execution_id: str,
        anomalies: Sequence[str],
        now: datetime,
        details: Mapping[str, object] | None = None,
    ) -> None:
        """Record a report that is not applied at all (it contradicts one already applied): nothing is booked,
        but the audit trail says what came and why it was refused."""
        self._touch(now)
        payload: dict[str, object] = {
            "execution_id": execution_id,
            "anomalies": list(anomalies),
            "applied": False,
            "state": self.state,
        }
        self._emit(E.EXECUTION_ANOMALY, _with_details(details, payload), now)

    # ------------------------------------------------------------------ execution reports

    def apply_report(
        self, report: ExecutionReportData, now: datetime, *, busted: BookedExecution | None = None
    ) -> ReportOutcome:
        """Apply one venue execution report (FIX semantics, see docs); never raises for venue content.

        What it books (``outcome.fill``) is exactly the rise of the order's cumulative filled quantity, priced
        by the report, with the report's fees; a bust (TRADE_CANCEL) books the reversal of ``busted``, what
        the busted execution booked (the caller looks it up by ``exec_ref_id``). A report whose figures
        contradict each other or the order is booked by that rule and its contradictions are returned as
        anomalies, so the order and what settlement books never disagree.
        """
        if report.order_id != self.id:
            raise ReportMismatch(f"report {report.execution_id} is for order {report.order_id}, not {self.id}")
        state0 = self.state
        status0 = self.status
        before = self._snapshot()
        ctx = _Apply()

        if report.broker_order_id is not None and report.broker_order_id != self.broker_order_id:
            if self.broker_order_id is None:
                self.broker_order_id = report.broker_order_id
            else:
                ctx.anomalies.append("broker_order_id_mismatch")
        if report.exec_type is ExecType.TRADE_CANCEL:
            ctx.busted = busted
        else:
            ctx.cum_applied = self._absorb_cumulative(report, ctx)
        _HANDLERS[report.exec_type](self, report, ctx)
        # Whatever the report claimed, a live order whose cumulative quantity reached its quantity is filled.
        self._complete_if_filled(ctx)
        self._check_overfill(report, ctx)

        applied = ctx.fill is not None or bool(ctx.anomalies) or self._snapshot() != before
        outcome = ReportOutcome(
            applied=applied,
            state_changed=self.state is not state0,
            status_changed=self.status is not status0,
            fill=ctx.fill,
            anomalies=ctx.anomalies,
            unreported_delta=ctx.unreported_delta,
        )
        if applied:
            self._touch(now)
            self._emit(self._report_event_type(report, state0), self._report_payload(report, ctx), now)
            for event_type, payload in ctx.extra:
                self._emit(event_type, payload, now)
            if ctx.anomalies:
                self._emit(
                    E.EXECUTION_ANOMALY,
                    {
                        "execution_id": report.execution_id,
                        "exec_type": report.exec_type,
                        "anomalies": list(ctx.anomalies),
                        "state": self.state,
                    },
                    now,
                )
        return outcome

    # -- the steps every report goes through

    def _absorb_cumulative(self, report: ExecutionReportData, ctx: _Apply) -> bool:
        """Quantities follow the venue's cumulative totals, whatever status the report claims; the rise is
        what gets booked. Returns whether the cumulative quantity rose."""
        is_fill = report.exec_type in _FILL_TYPES
        increment = report.cum_qty - self.filled_quantity
        if increment <= _ZERO:
            if is_fill and report.last_qty > _ZERO:
                self._match_late_fill(report, increment, ctx)
            return False
        price = report.last_px if report.last_px is not None else report.avg_px
        if price is None:
            # Booking a trade at an invented price would be worse than not following the venue's total.
            ctx.anomalies.append("cum_rise_without_price")
            return False
        unreported = _ZERO
        if not is_fill:
            # A fill this report does not carry: missed, or overtaken by this report (matched when it comes).
            ctx.anomalies.append("cum_rise_without_fill")
            unreported = increment
        elif report.last_qty != increment:
            ctx.anomalies.append("last_qty_mismatch")
            if _ZERO < report.last_qty < increment:
                unreported = increment - report.last_qty
        if report.avg_px is not None:
            average: Decimal | None = report.avg_px
        else:
            # No venue average: weight the increment at its price (exact only if no report was missed).
            notional = (self.average_execution_price or _ZERO) * self.filled_quantity + price * increment
            average = (notional / report.cum_qty).quantize(_PRICE_QUANTUM, ROUND_HALF_EVEN)
            ctx.anomalies.append("avg_px_missing")
        self.filled_quantity = report.cum_qty
        self.average_execution_price = average
        self.fees += report.fees
        self.unreported_quantity += unreported
        ctx.unreported_delta = unreported
        ctx.fill = FillDelta(report.execution_id, increment, price, report.fees)
        return True

    def _match_late_fill(self, report: ExecutionReportData, increment: Decimal, ctx: _Apply) -> None:
        """A fill whose execution the cumulative quantity already counts, or a contradiction: nothing is booked."""
        if report.last_qty <= self.unreported_quantity:
            # Overtaken by a later report whose cumulative total included it: it is accounted for.
            self.unreported_quantity -= report.last_qty
            ctx.unreported_delta = -report.last_qty
            ctx.flags["explains_unreported"] = report.last_qty
        else:
            ctx.anomalies.append("no_cum_change" if increment == _ZERO else "cum_backwards")
        if report.fees:
            # Fees travel with booked quantity; these have none to travel with, so they are not booked: said.
            ctx.flags["fees_not_booked"] = report.fees
            ctx.anomalies.append("fees_not_booked")

    def _check_overfill(self, report: ExecutionReportData, ctx: _Apply) -> None:
        if self.filled_quantity <= self.quantity:
            return
        # Flag the first time and whenever the excess grows; never an exception.
        if not self.overfilled or ctx.cum_applied:
            self.overfilled = True
            ctx.anomalies.append("overfill")
            ctx.extra.append(
                (
                    E.OVERFILL_DETECTED,
                    {
                        "execution_id": report.execution_id,
                        "quantity": self.quantity,
                        "filled_quantity": self.filled_quantity,
                        "excess": self.filled_quantity - self.quantity,
                    },
                )
            )

    def _complete_if_filled(self, ctx: _Apply) -> bool:
        """FIX precedence: filled beats pending, canceled, replaced, expired and rejected."""
        if self.state not in TERMINAL_STATES and self.filled_quantity >= self.quantity:
            self._move("fill", S.FILLED, ctx)
            return True
        return False

    def _working_state(self) -> OrderState:
        """The state of an order working at the venue once an answer settled a request."""
        pending = self.pending_request
        if pending is not None and pending.acknowledged:
            return S.PENDING_CANCEL if pending.kind is RequestKind.CANCEL else S.PENDING_REPLACE
        return S.PARTIALLY_FILLED if self.filled_quantity > _ZERO else S.OPEN

    def _answers(self, report: ExecutionReportData, kind: RequestKind, ctx: _Apply) -> bool:
        """Does the report answer the outstanding request? Unnamed answers go to a request of its kind."""
        pending = self.pending_request
        if pending is None:
            return False
        if report.request_id is None:
            return pending.kind is kind
        if report.request_id != pending.request_id:
            return False
        if pending.kind is not kind:
            ctx.anomalies.append("request_kind_mismatch")
            return False
        return True

    # -- one handler per ExecType

    def _on_new(self, report: ExecutionReportData, ctx: _Apply) -> None:
        if self._complete_if_filled(ctx):
            return
        if self.state is S.ROUTED:
            self._move(
                "acknowledge" if self.filled_quantity == _ZERO else "partial_fill",
                S.OPEN if self.filled_quantity == _ZERO else S.PARTIALLY_FILLED,
                ctx,
            )
        elif self.state in lifecycle.UNROUTED:
            ctx.anomalies.append("ack_before_routed")
        else:
            # A late acknowledgement (after fills, a pending answer or the end) changes no state.
            ctx.flags["late"] = True

    def _on_fill(self, report: ExecutionReportData, ctx: _Apply) -> None:
        if not ctx.cum_applied:
            ctx.flags["stale"] = True  # out of order or a resend: quantities already include it
        if report.last_qty > _ZERO:
            if self.time_in_force is TimeInForce.FOK and report.cum_qty < self.quantity:
                ctx.anomalies.append("fok_partial_fill")
        else:
            ctx.anomalies.append("fill_without_quantity")
        state = self.state
        if state in lifecycle.DEAD:
            ctx.flags["late"] = True
            if state is S.REJECTED:
                ctx.anomalies.append("fill_after_rejected")
            if self.filled_quantity >= self.quantity:
                self._move("fill", S.FILLED, ctx)
            return
        if state is S.FILLED:
            return
        if state in lifecycle.UNROUTED:
            ctx.anomalies.append("fill_before_routed")
        if self._complete_if_filled(ctx):
            return
        if self.time_in_force in (TimeInForce.IOC, TimeInForce.FOK) and report.leaves_qty == _ZERO:
            # Nothing left working at the venue and no further report expected: the remainder is canceled.
            self._move("cancel", S.CANCELED, ctx)
            self.pending_request = None
            ctx.extra.append(
                (
                    E.ORDER_CANCELED,
                    {
                        "reason": f"{self.time_in_force} remainder canceled",
                        "at_venue": True,
                        "canceled_quantity": self.quantity - self.filled_quantity,
                        "state": self.state,
                    },
                )
            )
            return
        if state in (S.PENDING_CANCEL, S.PENDING_REPLACE):
            return  # FIX: pending cancel / pending replace take precedence over partially filled
        if self.filled_quantity > _ZERO:
            self._move("partial_fill", S.PARTIALLY_FILLED, ctx)

    def _on_pending(self, report: ExecutionReportData, ctx: _Apply, kind: RequestKind) -> None:
        pending = self.pending_request
        if pending is None:
            # Nothing outstanding: a pending report that arrives after its request was answered (reordered)
            # must not leave the order pending with no request behind it.
            ctx.flags["late"] = True
            self._complete_if_filled(ctx)
            return
        if not pending.acknowledged and self._answers(report, kind, ctx):
            self.pending_request = dataclasses.replace(pending, acknowledged=True)
        elif pending.request_id != report.request_id:
            ctx.flags["other_request"] = True  # an earlier request of a chain (FIX D16/D17)
        if self._complete_if_filled(ctx):
            return
        state = self.state
        if state in lifecycle.UNROUTED:
            ctx.anomalies.append("pending_before_routed")
        elif kind is RequestKind.CANCEL:
            if state in (S.ROUTED, S.OPEN, S.PARTIALLY_FILLED, S.PENDING_REPLACE):
                self._move("cancel_pending", S.PENDING_CANCEL, ctx)
        elif state in (S.ROUTED, S.OPEN, S.PARTIALLY_FILLED):
            # A PENDING_CANCEL state stays: FIX ranks pending cancel above pending replace.
            self._move("replace_pending", S.PENDING_REPLACE, ctx)

    def _on_pending_cancel(self, report: ExecutionReportData, ctx: _Apply) -> None:
        self._on_pending(report, ctx, RequestKind.CANCEL)

    def _on_pending_replace(self, report: ExecutionReportData, ctx: _Apply) -> None:
        self._on_pending(report, ctx, RequestKind.REPLACE)

    def _on_canceled(self, report: ExecutionReportData, ctx: _Apply) -> None:
        if self._complete_if_filled(ctx):
            return  # filled takes precedence over canceled
        state = self.state
        if state in lifecycle.AT_VENUE:
            ctx.flags["requested"] = self._answers(report, RequestKind.CANCEL, ctx)
            self.pending_request = None
            self._move("cancel", S.CANCELED, ctx)
        elif state in lifecycle.UNROUTED:
            ctx.anomalies.append("cancel_before_routed")

    def _on_request_rejected(self, report: ExecutionReportData, ctx: _Apply, kind: RequestKind) -> None:
        if self._answers(report, kind, ctx):
            self.pending_request = None
        elif report.request_id is not None:
            ctx.flags["other_request"] = True
        if self._complete_if_filled(ctx):
            return
        if self.state in (S.PENDING_CANCEL, S.PENDING_REPLACE):
            trigger = "cancel_reject" if kind is RequestKind.CANCEL else "replace_reject"
            self._move(trigger, self._working_state(), ctx)

    def _on_cancel_rejected(self, report: ExecutionReportData, ctx: _Apply) -> None:
        self._on_request_rejected(report, ctx, RequestKind.CANCEL)

    def _on_replace_rejected(self, report: ExecutionReportData, ctx: _Apply) -> None:
        self._on_request_rejected(report, ctx, RequestKind.REPLACE)

    def _on_replaced(self, report: ExecutionReportData, ctx: _Apply) -> None:
        state = self.state
        answers = self._answers(report, RequestKind.REPLACE, ctx)
        if state in lifecycle.DEAD or state in lifecycle.UNROUTED or (state is S.FILLED and not answers):
            ctx.anomalies.append(f"replace_on_{state.lower()}")
            return
        pending = self.pending_request if answers else None
        quantity = report.order_qty
        if quantity is None:
            quantity = self.quantity
            if pending is not None and pending.quantity is not None:
                quantity = pending.quantity
            if pending is None:
                ctx.anomalies.append("replace_terms_unknown")
        price = report.price if report.price is not None else (pending.price if pending else self.price)
        stop_price = (
            report.stop_price if report.stop_price is not None else (pending.stop_price if pending else self.stop_price)
        )
        ctx.flags["previous"] = {"quantity": self.quantity, "price": self.price, "stop_price": self.stop_price}
        if quantity <= self.filled_quantity:
            # FIX D11/D12: a replace at or below the cumulative quantity amends the order to it: FILLED.
            ctx.flags["amended_to_cum_qty"] = quantity < self.filled_quantity
            quantity = self.filled_quantity
        self.quantity, self.price, self.stop_price = quantity, price, stop_price
        if answers:
            self.pending_request = None
        else:
            ctx.flags["other_request"] = True
        if self.filled_quantity >= self.quantity:
            self._move("replace", S.FILLED, ctx)
        else:
            if state is S.FILLED:
                ctx.flags["reopened"] = True  # FIX D8: the venue accepted an increase of a filled order
            self._move("replace", self._working_state(), ctx)

    def _on_rejected(self, report: ExecutionReportData, ctx: _Apply) -> None:
        if self._complete_if_filled(ctx):
            return
        state = self.state
        if state in lifecycle.AT_VENUE:
            self.pending_request = None
            if self.filled_quantity > _ZERO:
                # Part of the order traded, so it cannot be rejected: the venue ended the remainder.
                ctx.anomalies.append("venue_reject_after_fill")
                self._move("cancel", S.CANCELED, ctx)
            else:
                self.rejection_code = "VENUE_REJECTED"
                self.rejection_reason = report.reason
                self._move("venue_reject", S.REJECTED, ctx)
        elif state in lifecycle.UNROUTED:
            ctx.anomalies.append("reject_before_routed")

    def _on_expired(self, report: ExecutionReportData, ctx: _Apply) -> None:
        if self._complete_if_filled(ctx):
            return
        state = self.state
        if state in lifecycle.AT_VENUE:
            self.pending_request = None
            self._move("expire", S.EXPIRED, ctx)
        elif state in lifecycle.UNROUTED:
            ctx.anomalies.append("expire_before_routed")

    def _on_trade_cancel(self, report: ExecutionReportData, ctx: _Apply) -> None:
        """A bust reverses exactly what the busted execution booked; the venue's figures are checked against it."""
        busted = ctx.busted
        if busted is None:
            ctx.anomalies.append("bust_of_unknown_execution")
            return
        if busted.busted:
            ctx.anomalies.append("bust_repeated")
            return
        if busted.quantity <= _ZERO:
            ctx.anomalies.append("bust_of_unbooked_execution")  # it booked nothing, so nothing is reversed
            return
        previous_filled, previous_average = self.filled_quantity, self.average_execution_price
        remaining = previous_filled - busted.quantity
        if remaining < _ZERO:
            ctx.anomalies.append("bust_exceeds_filled")  # only if what was booked no longer adds up
            return
        if report.cum_qty != remaining:
            ctx.anomalies.append("bust_cum_mismatch")
        if report.last_qty != busted.quantity or (report.last_px is not None and report.last_px != busted.price):
            ctx.anomalies.append("bust_terms_mismatch")
        self.filled_quantity = remaining
        self.average_execution_price = self._average_after_bust(report, busted, previous_filled, previous_average)
        if self.average_execution_price is not None and report.avg_px is None:
            ctx.anomalies.append("avg_px_missing")
        self.fees -= busted.fees
        ctx.fill = FillDelta(
            report.execution_id,
            -busted.quantity,
            busted.price,
            -busted.fees,
            reversal=True,
            reverses_execution_id=busted.execution_id,
        )
        ctx.flags["busted_quantity"] = busted.quantity
        state = self.state
        if state in lifecycle.DEAD or state in lifecycle.UNROUTED or state is S.ROUTED:
            return  # a dead order stays dead; its quantities still follow the venue
        if self.filled_quantity < self.quantity:
            # FIX: a bust may take FILLED back to PARTIALLY_FILLED / OPEN.
            self._move("bust", self._working_state(), ctx)

    # ------------------------------------------------------------------ internals

    def _average_after_bust(
        self,
        report: ExecutionReportData,
        busted: BookedExecution,
        previous_filled: Decimal,
        previous_average: Decimal | None,
    ) -> Decimal | None:
        remaining = previous_filled - busted.quantity
        if remaining == _ZERO:
            return None
        if report.avg_px is not None and report.cum_qty == remaining:
            return report.avg_px
        if previous_average is None:
            return None
        notional = previous_average * previous_filled - busted.price * busted.quantity
        average = (notional / remaining).quantize(_PRICE_QUANTUM, ROUND_HALF_EVEN)
        # The venue's averages and the booked prices disagree if this is not positive: keep the old figure.
        return average if average > _ZERO else previous_average

    def _check(self, trigger: str) -> frozenset[OrderState]:
        dests = lifecycle.TABLE.get((trigger, self.state))
        if not dests:
            raise InvalidTransition(trigger, self.state)
        return dests

    def _command(self, trigger: str, dest: OrderState) -> None:
        if dest not in self._check(trigger):
            raise InvalidTransition(trigger, self.state, f"cannot reach {dest}")
        self.state = dest

    def _refuse_if_cancel_outstanding(self, command: str) -> None:
        pending = self.pending_request
        if pending is not None and pending.kind is RequestKind.CANCEL:
            raise InvalidTransition(command, self.state, f"cancel {pending.request_id} is outstanding")

    def _move(self, trigger: str, dest: OrderState, ctx: _Apply) -> None:
        """Report-driven move, checked against the state table. A refused move would be a bug in the
        report rules, not a venue error: it is recorded as an anomaly instead of raising mid-report."""
        if dest is self.state:
            return
        if dest in lifecycle.TABLE.get((trigger, self.state), ()):
            self.state = dest
        else:
            ctx.anomalies.append(f"illegal_transition:{trigger}:{self.state}->{dest}")

    def _touch(self, now: datetime) -> None:
        self.version += 1
        self.updated_at = now

    def _emit(
        self, type: OrderEventType, payload: dict[str, object], now: datetime, user_id: str | None = None
    ) -> None:
        self.events.append(DomainEvent(type, payload, now, user_id))

    def _snapshot(self) -> tuple[object, ...]:
        return (
            self.state,
            self.quantity,
            self.price,
            self.stop_price,
            self.filled_quantity,
            self.average_execution_price,
            self.fees,
            self.broker_order_id,
            self.pending_request,
            self.overfilled,
            self.unreported_quantity,
            self.rejection_code,
            self.rejection_reason,
        )

    def _terms_payload(self) -> dict[str, object]:
        return {
            "account_id": self.account_id,
            "symbol": self.symbol,
            "side": self.side,
            "type": self.type,
            "quantity": self.quantity,
            "price": self.price,
            "stop_price": self.stop_price,
            "time_in_force": self.time_in_force,
            "strategy_id": self.strategy_id,
            "notes": self.notes,
            "client_order_id": self.client_order_id,
            "state": self.state,
            "status": self.status,
        }

    def _report_event_type(self, report: ExecutionReportData, state0: OrderState) -> OrderEventType:
        if report.exec_type in (ExecType.PARTIAL_FILL, ExecType.FILL):
            # Named after what happened to the order: ORDER_FILLED marks the report that completed it.
            completed = self.state is S.FILLED and state0 is not S.FILLED
            return E.ORDER_FILLED if completed else E.ORDER_PARTIALLY_FILLED
        return _REPORT_EVENT[report.exec_type]

    def _report_payload(self, report: ExecutionReportData, ctx: _Apply) -> dict[str, object]:
        payload: dict[str, object] = {
            "execution_id": report.execution_id,
            "exec_type": report.exec_type,
            "request_id": report.request_id,
            "broker_order_id": report.broker_order_id,
            "last_qty": report.last_qty,
            "last_px": report.last_px,
            "cum_qty": report.cum_qty,
            "leaves_qty": report.leaves_qty,
            "avg_px": report.avg_px,
            "order_qty": report.order_qty,
            "fees": report.fees,
            "venue": report.venue,
            "reason": report.reason,
            "cum_applied": ctx.cum_applied,
            "state": self.state,
            "status": self.status,
            "quantity": self.quantity,
            "filled_quantity": self.filled_quantity,
            "average_execution_price": self.average_execution_price,
        }
        if report.exec_ref_id is not None:
            payload["exec_ref_id"] = report.exec_ref_id
        if ctx.flags:
            payload.update(ctx.flags)
        return payload


_REPORT_EVENT: dict[ExecType, OrderEventType] = {
    ExecType.NEW: E.ORDER_ACKNOWLEDGED,
    ExecType.PARTIAL_FILL: E.ORDER_PARTIALLY_FILLED,
    ExecType.FILL: E.ORDER_FILLED,
    ExecType.PENDING_CANCEL: E.CANCEL_PENDING,
    ExecType.CANCELED: E.ORDER_CANCELED,
    ExecType.PENDING_REPLACE: E.REPLACE_PENDING,
    ExecType.REPLACED: E.ORDER_REPLACED,
    ExecType.CANCEL_REJECTED: E.CANCEL_REJECTED,
    ExecType.REPLACE_REJECTED: E.REPLACE_REJECTED,
    ExecType.REJECTED: E.ORDER_REJECTED,
    ExecType.EXPIRED: E.ORDER_EXPIRED,
    ExecType.TRADE_CANCEL: E.TRADE_BUSTED,
}

_HANDLERS: dict[ExecType, _Handler] = {
    ExecType.NEW: Order._on_new,
    ExecType.PARTIAL_FILL: Order._on_fill,
    ExecType.FILL: Order._on_fill,
    ExecType.PENDING_CANCEL: Order._on_pending_cancel,
    ExecType.CANCELED: Order._on_canceled,
    ExecType.PENDING_REPLACE: Order._on_pending_replace,
    ExecType.REPLACED: Order._on_replaced,
    ExecType.CANCEL_REJECTED: Order._on_cancel_rejected,
    ExecType.REPLACE_REJECTED: Order._on_replace_rejected,
    ExecType.REJECTED: Order._on_rejected,
    ExecType.EXPIRED: Order._on_expired,
    ExecType.TRADE_CANCEL: Order._on_trade_cancel,
}
