"""FIX execution-report semantics: how one venue report moves an ``Order``.

``apply`` changes the order's state and quantities and returns what happened and the events to record;
the aggregate (``Order.apply_report``) stamps and records them. Nothing here raises for anything a venue
may send: what looks wrong is applied as far as it can be and returned as an anomaly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal

from common.domain import lifecycle, payloads
from common.domain.enums import TERMINAL_STATES, ExecType, OrderEventType, OrderState, RequestKind, TimeInForce
from common.domain.execution import BookedExecution, ExecutionReportData, FillDelta, ReportOutcome
from common.domain.order_data import OrderData

S = OrderState
E = OrderEventType
_ZERO = Decimal(0)
# Prices are DECIMAL(20,8) in the store; a computed average is rounded the same way so that a reloaded
# order equals the one that was saved.
_PRICE_QUANTUM = Decimal("0.00000001")
_FILL_TYPES = frozenset({ExecType.PARTIAL_FILL, ExecType.FILL})

Event = tuple[OrderEventType, dict[str, object]]


@dataclass(slots=True)
class _Apply:
    """Scratch state of one ``apply`` call."""

    anomalies: list[str] = field(default_factory=list)
    flags: dict[str, object] = field(default_factory=dict)
    extra: list[Event] = field(default_factory=list)
    fill: FillDelta | None = None
    cum_applied: bool = False
    busted: BookedExecution | None = None
    unreported_delta: Decimal = _ZERO


_Handler = Callable[[OrderData, ExecutionReportData, _Apply], None]


def apply(
    order: OrderData, report: ExecutionReportData, busted: BookedExecution | None
) -> tuple[ReportOutcome, list[Event]]:
    """Apply one report to ``order`` (whose id it names); return the outcome and the events to record, in
    order (none unless ``outcome.applied``). ``busted`` is what a TRADE_CANCEL's busted execution booked."""
    state0 = order.state
    status0 = order.status
    before = _snapshot(order)
    ctx = _Apply()

    if report.broker_order_id is not None and report.broker_order_id != order.broker_order_id:
        if order.broker_order_id is None:
            order.broker_order_id = report.broker_order_id
        else:
            ctx.anomalies.append("broker_order_id_mismatch")
    if report.exec_type is ExecType.TRADE_CANCEL:
        ctx.busted = busted
    else:
        ctx.cum_applied = _absorb_cumulative(order, report, ctx)
    _HANDLERS[report.exec_type](order, report, ctx)
    # Whatever the report claimed, a live order whose cumulative quantity reached its quantity is filled.
    _complete_if_filled(order, ctx)
    _check_overfill(order, report, ctx)

    applied = ctx.fill is not None or bool(ctx.anomalies) or _snapshot(order) != before
    outcome = ReportOutcome(
        applied=applied,
        state_changed=order.state is not state0,
        status_changed=order.status is not status0,
        fill=ctx.fill,
        anomalies=ctx.anomalies,
        unreported_delta=ctx.unreported_delta,
    )
    if not applied:
        return outcome, []
    events: list[Event] = [
        (
            _event_type(order, report, state0),
            payloads.execution_report(order, report, cum_applied=ctx.cum_applied, flags=ctx.flags),
        ),
        *ctx.extra,
    ]
    if ctx.anomalies:
        events.append((E.EXECUTION_ANOMALY, payloads.execution_anomaly(report, ctx.anomalies, order.state)))
    return outcome, events


# -- the steps every report goes through


def _absorb_cumulative(order: OrderData, report: ExecutionReportData, ctx: _Apply) -> bool:
    """Quantities follow the venue's cumulative totals, whatever status the report claims; the rise is
    what gets booked. Returns whether the cumulative quantity rose."""
    is_fill = report.exec_type in _FILL_TYPES
    increment = report.cum_qty - order.filled_quantity
    if increment <= _ZERO:
        if is_fill and report.last_qty > _ZERO:
            _match_late_fill(order, report, increment, ctx)
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
        notional = (order.average_execution_price or _ZERO) * order.filled_quantity + price * increment
        average = (notional / report.cum_qty).quantize(_PRICE_QUANTUM, ROUND_HALF_EVEN)
        ctx.anomalies.append("avg_px_missing")
    order.filled_quantity = report.cum_qty
    order.average_execution_price = average
    order.fees += report.fees
    order.unreported_quantity += unreported
    ctx.unreported_delta = unreported
    ctx.fill = FillDelta(report.execution_id, increment, price, report.fees)
    return True


def _match_late_fill(order: OrderData, report: ExecutionReportData, increment: Decimal, ctx: _Apply) -> None:
    """A fill whose execution the cumulative quantity already counts, or a contradiction: nothing is booked."""
    if report.last_qty <= order.unreported_quantity:
        # Overtaken by a later report whose cumulative total included it: it is accounted for.
        order.unreported_quantity -= report.last_qty
        ctx.unreported_delta = -report.last_qty
        ctx.flags["explains_unreported"] = report.last_qty
    else:
        ctx.anomalies.append("no_cum_change" if increment == _ZERO else "cum_backwards")
    if report.fees:
        # Fees travel with booked quantity; these have none to travel with, so they are not booked: said.
        ctx.flags["fees_not_booked"] = report.fees
        ctx.anomalies.append("fees_not_booked")


def _check_overfill(order: OrderData, report: ExecutionReportData, ctx: _Apply) -> None:
    if order.filled_quantity <= order.quantity:
        return
    # Flag the first time and whenever the excess grows; never an exception.
    if not order.overfilled or ctx.cum_applied:
        order.overfilled = True
        ctx.anomalies.append("overfill")
        ctx.extra.append(
            (
                E.OVERFILL_DETECTED,
                payloads.overfill_detected(report.execution_id, order.quantity, order.filled_quantity),
            )
        )


def _complete_if_filled(order: OrderData, ctx: _Apply) -> bool:
    """FIX precedence: filled beats pending, canceled, replaced, expired and rejected."""
    if order.state not in TERMINAL_STATES and order.filled_quantity >= order.quantity:
        _move(order, "fill", S.FILLED, ctx)
        return True
    return False


def _working_state(order: OrderData) -> OrderState:
    """The state of an order working at the venue once an answer settled a request."""
    pending = order.pending_request
    if pending is not None and pending.acknowledged:
        return S.PENDING_CANCEL if pending.kind is RequestKind.CANCEL else S.PENDING_REPLACE
    return S.PARTIALLY_FILLED if order.filled_quantity > _ZERO else S.OPEN


def _answers(order: OrderData, report: ExecutionReportData, kind: RequestKind, ctx: _Apply) -> bool:
    """Does the report answer the outstanding request? Unnamed answers go to a request of its kind."""
    pending = order.pending_request
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


def _move(order: OrderData, trigger: str, dest: OrderState, ctx: _Apply) -> None:
    """Report-driven move, checked against the state table. A refused move would be a bug in the report
    rules, not a venue error: it is recorded as an anomaly instead of raising mid-report."""
    if dest is order.state:
        return
    if dest in lifecycle.TABLE.get((trigger, order.state), ()):
        order.state = dest
    else:
        ctx.anomalies.append(f"illegal_transition:{trigger}:{order.state}->{dest}")


def _snapshot(order: OrderData) -> tuple[object, ...]:
    return (
        order.state,
        order.quantity,
        order.price,
        order.stop_price,
        order.filled_quantity,
        order.average_execution_price,
        order.fees,
        order.broker_order_id,
        order.pending_request,
        order.overfilled,
        order.unreported_quantity,
        order.rejection_code,
        order.rejection_reason,
    )


def _event_type(order: OrderData, report: ExecutionReportData, state0: OrderState) -> OrderEventType:
    if report.exec_type in _FILL_TYPES:
        # Named after what happened to the order: ORDER_FILLED marks the report that completed it.
        completed = order.state is S.FILLED and state0 is not S.FILLED
        return E.ORDER_FILLED if completed else E.ORDER_PARTIALLY_FILLED
    return _REPORT_EVENT[report.exec_type]


# -- one handler per ExecType


def _on_new(order: OrderData, report: ExecutionReportData, ctx: _Apply) -> None:
    if _complete_if_filled(order, ctx):
        return
    if order.state is S.ROUTED:
        _move(
            order,
            "acknowledge" if order.filled_quantity == _ZERO else "partial_fill",
            S.OPEN if order.filled_quantity == _ZERO else S.PARTIALLY_FILLED,
            ctx,
        )
    elif order.state in lifecycle.UNROUTED:
        ctx.anomalies.append("ack_before_routed")
    else:
        # A late acknowledgement (after fills, a pending answer or the end) changes no state.
        ctx.flags["late"] = True


def _on_fill(order: OrderData, report: ExecutionReportData, ctx: _Apply) -> None:
    if not ctx.cum_applied:
        ctx.flags["stale"] = True  # out of order or a resend: quantities already include it
    if report.last_qty > _ZERO:
        if order.time_in_force is TimeInForce.FOK and report.cum_qty < order.quantity:
            ctx.anomalies.append("fok_partial_fill")
    else:
        ctx.anomalies.append("fill_without_quantity")
    state = order.state
    if state in lifecycle.DEAD:
        ctx.flags["late"] = True
        if state is S.REJECTED:
            ctx.anomalies.append("fill_after_rejected")
        if order.filled_quantity >= order.quantity:
            _move(order, "fill", S.FILLED, ctx)
        return
    if state is S.FILLED:
        return
    if state in lifecycle.UNROUTED:
        ctx.anomalies.append("fill_before_routed")
    if _complete_if_filled(order, ctx):
        return
    if order.time_in_force in (TimeInForce.IOC, TimeInForce.FOK) and report.leaves_qty == _ZERO:
        # Nothing left working at the venue and no further report expected: the remainder is canceled.
        _move(order, "cancel", S.CANCELED, ctx)
        order.pending_request = None
        canceled = order.quantity - order.filled_quantity
        ctx.extra.append((E.ORDER_CANCELED, payloads.remainder_canceled(order.time_in_force, canceled, order.state)))
        return
    if state in (S.PENDING_CANCEL, S.PENDING_REPLACE):
        return  # FIX: pending cancel / pending replace take precedence over partially filled
    if order.filled_quantity > _ZERO:
        _move(order, "partial_fill", S.PARTIALLY_FILLED, ctx)


def _on_pending(order: OrderData, report: ExecutionReportData, ctx: _Apply, kind: RequestKind) -> None:
    pending = order.pending_request
    if pending is None:
        # Nothing outstanding: a pending report that arrives after its request was answered (reordered)
        # must not leave the order pending with no request behind it.
        ctx.flags["late"] = True
        _complete_if_filled(order, ctx)
        return
    if not pending.acknowledged and _answers(order, report, kind, ctx):
        order.pending_request = dataclasses.replace(pending, acknowledged=True)
    elif pending.request_id != report.request_id:
        ctx.flags["other_request"] = True  # an earlier request of a chain (FIX D16/D17)
    if _complete_if_filled(order, ctx):
        return
    state = order.state
    if state in lifecycle.UNROUTED:
        ctx.anomalies.append("pending_before_routed")
    elif kind is RequestKind.CANCEL:
        if state in (S.ROUTED, S.OPEN, S.PARTIALLY_FILLED, S.PENDING_REPLACE):
            _move(order, "cancel_pending", S.PENDING_CANCEL, ctx)
    elif state in (S.ROUTED, S.OPEN, S.PARTIALLY_FILLED):
        # A PENDING_CANCEL state stays: FIX ranks pending cancel above pending replace.
        _move(order, "replace_pending", S.PENDING_REPLACE, ctx)


def _on_pending_cancel(order: OrderData, report: ExecutionReportData, ctx: _Apply) -> None:
    _on_pending(order, report, ctx, RequestKind.CANCEL)


def _on_pending_replace(order: OrderData, report: ExecutionReportData, ctx: _Apply) -> None:
    _on_pending(order, report, ctx, RequestKind.REPLACE)


def _on_canceled(order: OrderData, report: ExecutionReportData, ctx: _Apply) -> None:
    if _complete_if_filled(order, ctx):
        return  # filled takes precedence over canceled
    state = order.state
    if state in lifecycle.AT_VENUE:
        ctx.flags["requested"] = _answers(order, report, RequestKind.CANCEL, ctx)
        order.pending_request = None
        _move(order, "cancel", S.CANCELED, ctx)
    elif state in lifecycle.UNROUTED:
        ctx.anomalies.append("cancel_before_routed")


def _on_request_rejected(order: OrderData, report: ExecutionReportData, ctx: _Apply, kind: RequestKind) -> None:
    if _answers(order, report, kind, ctx):
        order.pending_request = None
    elif report.request_id is not None:
        ctx.flags["other_request"] = True
    if _complete_if_filled(order, ctx):
        return
    if order.state in (S.PENDING_CANCEL, S.PENDING_REPLACE):
        trigger = "cancel_reject" if kind is RequestKind.CANCEL else "replace_reject"
        _move(order, trigger, _working_state(order), ctx)


def _on_cancel_rejected(order: OrderData, report: ExecutionReportData, ctx: _Apply) -> None:
    _on_request_rejected(order, report, ctx, RequestKind.CANCEL)


def _on_replace_rejected(order: OrderData, report: ExecutionReportData, ctx: _Apply) -> None:
    _on_request_rejected(order, report, ctx, RequestKind.REPLACE)


def _on_replaced(order: OrderData, report: ExecutionReportData, ctx: _Apply) -> None:
    state = order.state
    answers = _answers(order, report, RequestKind.REPLACE, ctx)
    if state in lifecycle.DEAD or state in lifecycle.UNROUTED or (state is S.FILLED and not answers):
        ctx.anomalies.append(f"replace_on_{state.lower()}")
        return
    pending = order.pending_request if answers else None
    quantity = report.order_qty
    if quantity is None:
        quantity = order.quantity
        if pending is not None and pending.quantity is not None:
            quantity = pending.quantity
        if pending is None:
            ctx.anomalies.append("replace_terms_unknown")
    price = report.price if report.price is not None else (pending.price if pending else order.price)
    stop_price = (
        report.stop_price if report.stop_price is not None else (pending.stop_price if pending else order.stop_price)
    )
    ctx.flags["previous"] = {"quantity": order.quantity, "price": order.price, "stop_price": order.stop_price}
    if quantity <= order.filled_quantity:
        # FIX D11/D12: a replace at or below the cumulative quantity amends the order to it: FILLED.
        ctx.flags["amended_to_cum_qty"] = quantity < order.filled_quantity
        quantity = order.filled_quantity
    order.quantity, order.price, order.stop_price = quantity, price, stop_price
    if answers:
        order.pending_request = None
    else:
        ctx.flags["other_request"] = True
    if order.filled_quantity >= order.quantity:
        _move(order, "replace", S.FILLED, ctx)
    else:
        if state is S.FILLED:
            ctx.flags["reopened"] = True  # FIX D8: the venue accepted an increase of a filled order
        _move(order, "replace", _working_state(order), ctx)


def _on_rejected(order: OrderData, report: ExecutionReportData, ctx: _Apply) -> None:
    if _complete_if_filled(order, ctx):
        return
    state = order.state
    if state in lifecycle.AT_VENUE:
        order.pending_request = None
        if order.filled_quantity > _ZERO:
            # Part of the order traded, so it cannot be rejected: the venue ended the remainder.
            ctx.anomalies.append("venue_reject_after_fill")
            _move(order, "cancel", S.CANCELED, ctx)
        else:
            order.rejection_code = "VENUE_REJECTED"
            order.rejection_reason = report.reason
            _move(order, "venue_reject", S.REJECTED, ctx)
    elif state in lifecycle.UNROUTED:
        ctx.anomalies.append("reject_before_routed")


def _on_expired(order: OrderData, report: ExecutionReportData, ctx: _Apply) -> None:
    if _complete_if_filled(order, ctx):
        return
    state = order.state
    if state in lifecycle.AT_VENUE:
        order.pending_request = None
        _move(order, "expire", S.EXPIRED, ctx)
    elif state in lifecycle.UNROUTED:
        ctx.anomalies.append("expire_before_routed")


def _on_trade_cancel(order: OrderData, report: ExecutionReportData, ctx: _Apply) -> None:
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
    previous_filled, previous_average = order.filled_quantity, order.average_execution_price
    remaining = previous_filled - busted.quantity
    if remaining < _ZERO:
        ctx.anomalies.append("bust_exceeds_filled")  # only if what was booked no longer adds up
        return
    if report.cum_qty != remaining:
        ctx.anomalies.append("bust_cum_mismatch")
    if report.last_qty != busted.quantity or (report.last_px is not None and report.last_px != busted.price):
        ctx.anomalies.append("bust_terms_mismatch")
    order.filled_quantity = remaining
    order.average_execution_price = _average_after_bust(report, busted, previous_filled, previous_average)
    if order.average_execution_price is not None and report.avg_px is None:
        ctx.anomalies.append("avg_px_missing")
    order.fees -= busted.fees
    ctx.fill = FillDelta(
        report.execution_id,
        -busted.quantity,
        busted.price,
        -busted.fees,
        reversal=True,
        reverses_execution_id=busted.execution_id,
    )
    ctx.flags["busted_quantity"] = busted.quantity
    state = order.state
    if state in lifecycle.DEAD or state in lifecycle.UNROUTED or state is S.ROUTED:
        return  # a dead order stays dead; its quantities still follow the venue
    if order.filled_quantity < order.quantity:
        # FIX: a bust may take FILLED back to PARTIALLY_FILLED / OPEN.
        _move(order, "bust", _working_state(order), ctx)


def _average_after_bust(
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
    ExecType.NEW: _on_new,
    ExecType.PARTIAL_FILL: _on_fill,
    ExecType.FILL: _on_fill,
    ExecType.PENDING_CANCEL: _on_pending_cancel,
    ExecType.CANCELED: _on_canceled,
    ExecType.PENDING_REPLACE: _on_pending_replace,
    ExecType.REPLACED: _on_replaced,
    ExecType.CANCEL_REJECTED: _on_cancel_rejected,
    ExecType.REPLACE_REJECTED: _on_replace_rejected,
    ExecType.REJECTED: _on_rejected,
    ExecType.EXPIRED: _on_expired,
    ExecType.TRADE_CANCEL: _on_trade_cancel,
}
