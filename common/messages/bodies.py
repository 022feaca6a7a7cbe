"""The bodies (camelCase JSON) of the messages the OMS publishes, one builder per kind of the catalogue, and the
routing keys of the kinds whose key varies per message.

The unit tests load what each builder makes with its kind's schema, so a builder and the contract cannot drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from common.domain import ExecutionReportData, FillDelta, Order
from common.domain.validation import plain

Terms = tuple[Decimal | None, Decimal | None, Decimal | None]
_ZERO = Decimal(0)


# --------------------------------------------------------------------------- between the stages


def risk_check_body(order: Order, request_id: str | None = None) -> dict[str, Any]:
    """``RiskCheck``: the order at its current version; with ``request_id``, the new terms of that replace."""
    body: dict[str, Any] = {"orderId": order.id, "version": order.version}
    if request_id is not None:
        body["requestId"] = request_id
    return body


def route_new_body(order_id: str) -> dict[str, Any]:
    """``RouteNew``: send the approved order to the venue."""
    return {"orderId": order_id}


def route_cancel_body(order_id: str, request_id: str) -> dict[str, Any]:
    """``RouteCancel``: send cancel request ``request_id``. Without the cancel's reason: the client's text would
    sit in the outbox table (kept until retention) in clear, and the router needs only the request row, which
    keeps the reason encrypted at rest."""
    return {"orderId": order_id, "requestId": request_id}


def route_replace_body(order_id: str, request_id: str) -> dict[str, Any]:
    """``RouteReplace``: send replace request ``request_id`` (its new terms are in the request's row)."""
    return {"orderId": order_id, "requestId": request_id}


def fill_booked_body(order: Order, report: ExecutionReportData, fill: FillDelta) -> dict[str, Any]:
    """``FillBooked`` for settlement: the execution's own terms, ``reversal`` to undo a busted one."""
    if fill.reversal:
        # The bust's delta is negative (quantity and fee refund); settlement wants the busted terms.
        execution_id = fill.reverses_execution_id or fill.execution_id
        quantity, fees = _ZERO - fill.quantity, _ZERO - fill.fees
    else:
        execution_id, quantity, fees = fill.execution_id, fill.quantity, fill.fees
    return {
        "orderId": order.id,
        "executionId": execution_id,
        "accountId": order.account_id,
        "symbol": order.symbol,
        "side": order.side.value,
        "quantity": quantity,
        "price": fill.price,
        "fees": fees,
        "venue": report.venue,
        "timestamp": report.timestamp,
        "reversal": fill.reversal,
    }


# --------------------------------------------------------------------------- to the venue


def _trim(value: Decimal | None) -> Decimal | None:
    # The store's DECIMAL(20,8) scale would put 100.00000000 on the wire; the same number, written plainly.
    return None if value is None else Decimal(plain(value))


def broker_request_body(order: Order, request_id: str, terms: Terms | None = None) -> dict[str, Any]:
    """``NewOrderRequest``, ``CancelRequest`` and ``ReplaceRequest``: the order with ``terms`` (quantity, price,
    stop price) in place of its own when given (a replace)."""
    quantity, price, stop_price = terms if terms is not None else (order.quantity, order.price, order.stop_price)
    return {
        "orderId": order.id,
        "requestId": request_id,
        "accountId": order.account_id,
        "symbol": order.symbol,
        "side": order.side.value,
        "type": order.type.value,
        "quantity": _trim(quantity),
        "price": _trim(price),
        "stopPrice": _trim(stop_price),
        "timeInForce": order.time_in_force.value,
    }


# --------------------------------------------------------------------------- order updates


def order_update_routing_key(order: Order) -> str:
    """``<accountId>.<symbol>.<STATUS>``; a dot inside an id would split a topic word, so it becomes '_'."""
    return ".".join(part.replace(".", "_") for part in (order.account_id, order.symbol, order.status.value))


def latest_execution_body(record_id: str, fill: FillDelta, report: ExecutionReportData) -> dict[str, Any]:
    """The specification's ``ExecutionReport`` inside an ``OrderUpdate`` (a bust carries its negative quantity)."""
    return {
        "id": record_id,
        "executionId": report.execution_id,
        "quantity": fill.quantity,
        "price": fill.price,
        "timestamp": report.timestamp,
        "fees": fill.fees,
        "venue": report.venue,
    }


def order_update_body(order: Order, latest_execution: Mapping[str, Any] | None) -> dict[str, Any]:
    """``OrderUpdate``: the specification's fields, plus the account, symbol and finer state."""
    body: dict[str, Any] = {
        "orderId": order.id,
        "status": order.status.value,
        "filledQuantity": order.filled_quantity,
        "averageExecutionPrice": order.average_execution_price,
        "timestamp": order.updated_at,
        "accountId": order.account_id,
        "symbol": order.symbol,
        "state": order.state.value,
        "quantity": order.quantity,
        "leavesQuantity": order.leaves_quantity,
        "version": order.version,
    }
    if latest_execution is not None:
        body["latestExecution"] = dict(latest_execution)
    return body


# --------------------------------------------------------------------------- to the portfolio service


def trade_confirmation_body(confirmation: Mapping[str, Any]) -> dict[str, Any]:
    """A trade confirmation (a ``trade_confirmations`` row's fields) as the position update carries it."""
    return {
        "confirmationId": confirmation["id"],
        "orderId": confirmation["order_id"],
        "executionId": confirmation["execution_id"],
        "accountId": confirmation["account_id"],
        "symbol": confirmation["symbol"],
        "side": confirmation["side"],
        "quantity": confirmation["quantity"],
        "price": confirmation["price"],
        "grossAmount": confirmation["gross_amount"],
        "fees": confirmation["fees"],
        "netAmount": confirmation["net_amount"],
        "currency": confirmation["currency"],
        "venue": confirmation["venue"],
        "tradeDate": confirmation["trade_date"],
        "settlementDate": confirmation["settlement_date"],
        "reversal": confirmation["reversal"],
    }


def settlement_instruction_body(instruction: Mapping[str, Any], confirmation: Mapping[str, Any]) -> dict[str, Any]:
    """A settlement instruction (a ``settlement_instructions`` row's fields, with the confirmation it settles) as
    the position update carries it."""
    cash: Decimal = instruction["cash_amount"]
    return {
        "instructionId": instruction["id"],
        "confirmationId": confirmation["id"],
        "orderId": confirmation["order_id"],
        "executionId": confirmation["execution_id"],
        "accountId": confirmation["account_id"],
        "symbol": confirmation["symbol"],
        "securitiesDirection": instruction["securities_direction"],
        "quantity": confirmation["quantity"],
        "cashDirection": "PAY" if cash < _ZERO else "RECEIVE",
        "cashAmount": cash,
        "currency": instruction["currency"],
        "settlementDate": confirmation["settlement_date"],
        "status": instruction["status"],
        "reversal": confirmation["reversal"],
    }


def position_update_body(
    confirmation: Mapping[str, Any],
    instruction: Mapping[str, Any],
    *,
    quantity: Decimal,
    delta: Decimal,
    average_cost: Decimal,
    realized_pnl: Decimal,
    timestamp: datetime,
) -> dict[str, Any]:
    """``PositionUpdate``: the position after one booked execution (or reversal), carrying the confirmation and
    the instruction that the retired ``TradeConfirmation`` and ``SettlementInstruction`` messages carried."""
    return {
        "orderId": confirmation["order_id"],
        "executionId": confirmation["execution_id"],
        "accountId": confirmation["account_id"],
        "symbol": confirmation["symbol"],
        "quantity": quantity,
        "delta": delta,
        "averageCost": average_cost,
        "realizedPnl": realized_pnl,
        "timestamp": timestamp,
        "reversal": confirmation["reversal"],
        "confirmation": trade_confirmation_body(confirmation),
        "instruction": settlement_instruction_body(instruction, confirmation),
    }


# --------------------------------------------------------------------------- market data


def price_routing_key(symbol: str) -> str:
    """``prices.<SYMBOL>``."""
    return f"prices.{symbol}"


def price_body(symbol: str, price: Decimal, timestamp: datetime) -> dict[str, Any]:
    """``Price``: a symbol's price at ``timestamp``."""
    return {"symbol": symbol, "price": price, "timestamp": timestamp}
