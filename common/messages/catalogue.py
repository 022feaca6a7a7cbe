"""Every message kind of the system: exchange, routing key, AMQP ``type``, schema, who sends it and who takes it.

A stage spec names the kinds it consumes (services/<stage>/spec.py), the topology binds each stage's queue to
the keys of the kinds whose ``stage`` it is (common/messaging/topology.py), producers send through ``send`` (an
outbox row with the kind's exchange, key and type), and docs/messages.md is generated from here
(``python -m tools.messagedoc``). The examples are checked against the schemas by the unit tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from marshmallow import Schema

from common.contracts import (
    CancelRequestSchema,
    ExecutionReportSchema,
    FillBookedSchema,
    NewOrderRequestSchema,
    OrderUpdateSchema,
    PositionUpdateSchema,
    PriceSchema,
    ReplaceRequestSchema,
    RiskCheckSchema,
    RouteCancelSchema,
    RouteNewSchema,
    RouteReplaceSchema,
    SettlementInstructionSchema,
    TradeConfirmationSchema,
    TradeDecisionSchema,
)
from common.messages.exchanges import (
    BROKER_EXCHANGE,
    MARKETDATA_EXCHANGE,
    OMS_EXCHANGE,
    ORDER_UPDATES_EXCHANGE,
    PORTFOLIO_EXCHANGE,
)
from common.messages.partitions import partitioned_key


class Direction(StrEnum):
    """Which side of the OMS a kind travels on (the sections of docs/messages.md)."""

    IN = "into the OMS"
    OUT = "out of the OMS"
    INTERNAL = "between the stages"
    FEED = "market data"


class MessageSink(Protocol):
    """Where a message is queued for publication: a unit of work's outbox."""

    def add(
        self,
        exchange: str,
        routing_key: str,
        type: str,
        body: Mapping[str, Any],
        correlation_id: str | None,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> object: ...


@dataclass(frozen=True, eq=False)
class MessageKind:
    """One kind of message. Compared by identity: each kind is one constant of this module (tests make their own).

    ``routing_key`` is the key itself, or for a kind whose key varies per message its form (``prices.<SYMBOL>``),
    with ``binding`` the pattern that takes every message of the kind. ``stage`` is the OMS stage whose queue
    (``oms.<stage>``) takes it; ``internal`` marks a hand-over between stages (never public, and may travel with
    others of its key in one carrier, see common/messaging/batch.py).
    """

    type: str
    exchange: str
    routing_key: str
    schema: Schema | None = None
    direction: Direction = Direction.INTERNAL
    summary: str = ""
    producers: tuple[str, ...] = ()
    consumers: tuple[str, ...] = ()
    stage: str | None = None
    internal: bool = False
    binding: str | None = None
    notes: tuple[str, ...] = ()
    example: str | None = None  # a JSON body as docs/messages.md shows it
    retired: str | None = None  # why it is no longer sent, and where its content travels now

    @property
    def fixed_key(self) -> bool:
        """Whether every message of the kind has ``routing_key`` itself (not a per-message key)."""
        return "<" not in self.routing_key

    @property
    def bound_key(self) -> str:
        """What a queue binds to take every message of the kind."""
        return self.binding or self.routing_key

    def send(
        self,
        sink: MessageSink,
        body: Mapping[str, Any],
        correlation_id: str | None,
        *,
        headers: Mapping[str, Any] | None = None,
        routing_key: str | None = None,
        partition_key: str | None = None,
    ) -> None:
        """Queue one message of this kind (``routing_key``: the message's own, for a kind whose key varies). A
        hand-over between stages goes to the partition of ``partition_key`` (default: the correlation id, the
        order id), so one replica of the next stage handles an order's messages, in order."""
        if routing_key is None:
            if not self.fixed_key:
                raise ValueError(f"a {self.type} needs its routing key ({self.routing_key})")
            routing_key = self.routing_key
        if self.internal:
            routing_key = partitioned_key(routing_key, partition_key or correlation_id)
        sink.add(self.exchange, routing_key, self.type, body, correlation_id, headers=headers)


# --------------------------------------------------------------------------- into the OMS

TRADE_DECISION = MessageKind(
    type="TradeDecision",
    exchange=OMS_EXCHANGE,
    routing_key="intake.decision",
    schema=TradeDecisionSchema(),
    direction=Direction.IN,
    summary="The strategy service asks for an order. Correlation id: the decision id.",
    producers=("the strategy service", "`./oms decision`"),
    consumers=("the intake stage",),
    stage="intake",
    notes=(
        "A decision of the right shape that breaks a business rule is booked as a REJECTED order with a "
        "machine-readable `rejectionCode` and a human `rejectionReason`; one of the wrong shape (not JSON, a "
        "missing or mistyped field, an unknown enum value) is dead-lettered to `oms.intake.dlq`.",
    ),
    example="""{
  "decisionId": "d-20261130-0001",
  "accountId": "ACC-001",
  "symbol": "AAPL",
  "side": "BUY",
  "type": "LIMIT",
  "quantity": 100,
  "price": 190.25,
  "timeInForce": "DAY",
  "strategyId": "momentum-1"
}""",
)

EXECUTION_REPORT = MessageKind(
    type="ExecutionReport",
    exchange=OMS_EXCHANGE,
    routing_key="execution.report",
    schema=ExecutionReportSchema(),
    direction=Direction.IN,
    summary="The venue reports what became of an order or a request. Correlation id: the order id.",
    producers=("the broker integration service (here the simulated venue)", "the API: gRPC `UpdateOrderStatus`"),
    consumers=("the execution_handler stage",),
    stage="execution_handler",
    notes=(
        "Quantities are applied from `cumQty`, so duplicated and reordered reports converge; the FIX 4.2 "
        "order-state-change matrices (Appendix D) are the behaviour. The figures must be ones a venue can send: "
        "no negative quantities, a positive `lastQty` and `lastPx` on a fill or bust, fees within the bounds "
        "common/contracts.py states; anything else is dead-lettered with the reason.",
    ),
    example="""{
  "executionId": "SIM-7f3c2a",
  "orderId": "0193e7a2-5b1c-7d2e-9f00-1a2b3c4d5e6f",
  "requestId": "0193e7a2-5b1d-7000-8000-0a1b2c3d4e5f",
  "brokerOrderId": "SIM-1001",
  "execType": "PARTIAL_FILL",
  "lastQty": 40,
  "lastPx": 190.2,
  "cumQty": 40,
  "leavesQty": 60,
  "avgPx": 190.2,
  "orderQty": 100,
  "price": 190.25,
  "fees": 0.38,
  "venue": "SIM",
  "timestamp": "2026-11-30T14:30:00.123456Z"
}""",
)

# --------------------------------------------------------------------------- out of the OMS

_BROKER_INTEGRATION = ("the broker integration service",)
_VENUE_REQUEST_EXAMPLE = """{
  "orderId": "0193e7a2-5b1c-7d2e-9f00-1a2b3c4d5e6f",
  "requestId": "0193e7a2-5b1d-7000-8000-0a1b2c3d4e5f",
  "accountId": "ACC-001",
  "symbol": "AAPL",
  "side": "BUY",
  "type": "LIMIT",
  "quantity": 100,
  "price": 190.25,
  "stopPrice": null,
  "timeInForce": "DAY"
}"""

NEW_ORDER_REQUEST = MessageKind(
    type="NewOrderRequest",
    exchange=BROKER_EXCHANGE,
    routing_key="orders.new",
    schema=NewOrderRequestSchema(),
    direction=Direction.OUT,
    summary="A new order for the venue. Correlation id: the order id.",
    producers=("the router", "the reconcile job (the same `requestId` again)"),
    consumers=_BROKER_INTEGRATION,
    example=_VENUE_REQUEST_EXAMPLE,
)

CANCEL_REQUEST = MessageKind(
    type="CancelRequest",
    exchange=BROKER_EXCHANGE,
    routing_key="orders.cancel",
    schema=CancelRequestSchema(),
    direction=Direction.OUT,
    summary="Cancel the order named by `orderId`; the request carries its own `requestId`.",
    producers=("the router", "the reconcile job (the same `requestId` again)"),
    consumers=_BROKER_INTEGRATION,
    example=_VENUE_REQUEST_EXAMPLE,
)

REPLACE_REQUEST = MessageKind(
    type="ReplaceRequest",
    exchange=BROKER_EXCHANGE,
    routing_key="orders.replace",
    schema=ReplaceRequestSchema(),
    direction=Direction.OUT,
    summary="Replace the terms of the order named by `orderId` with these (the new terms).",
    producers=("the router", "the reconcile job (the same `requestId` again)"),
    consumers=_BROKER_INTEGRATION,
    example=_VENUE_REQUEST_EXAMPLE.replace('"quantity": 100', '"quantity": 80'),
)

ORDER_UPDATE = MessageKind(
    type="OrderUpdate",
    exchange=ORDER_UPDATES_EXCHANGE,
    routing_key="<accountId>.<symbol>.<STATUS>",
    binding="#",
    schema=OrderUpdateSchema(),
    direction=Direction.OUT,
    summary="An order's public view changed. Correlation id: the order id.",
    producers=("whatever changes an order (the stages, the API, the jobs), written with it",),
    consumers=("the API's gRPC `StreamOrderUpdates`", "any subscriber"),
    notes=(
        "Sent on every change of public status, of the filled quantity (every fill and bust) or of the ordered "
        "quantity (a replace): three for an order filled at once (PENDING, OPEN, FILLED). Internal steps that "
        "leave the public view alone (risk approval, routing, PENDING_CANCEL) are in the order's events, not here.",
        "A dot inside an account id or symbol is written as `_` in the routing key.",
    ),
    example="""{
  "orderId": "0193e7a2-5b1c-7d2e-9f00-1a2b3c4d5e6f",
  "status": "PARTIALLY_FILLED",
  "filledQuantity": 40,
  "averageExecutionPrice": 190.2,
  "timestamp": "2026-11-30T14:30:00.131072Z",
  "latestExecution": {
    "id": "0193e7a2-6c00-7000-8000-000000000001",
    "executionId": "SIM-7f3c2a",
    "quantity": 40,
    "price": 190.2,
    "timestamp": "2026-11-30T14:30:00.123456Z",
    "fees": 0.38,
    "venue": "SIM"
  },
  "accountId": "ACC-001",
  "symbol": "AAPL",
  "state": "PARTIALLY_FILLED",
  "quantity": 100,
  "leavesQuantity": 60,
  "version": 5
}""",
)

POSITION_UPDATE = MessageKind(
    type="PositionUpdate",
    exchange=PORTFOLIO_EXCHANGE,
    routing_key="positions.update",
    schema=PositionUpdateSchema(),
    direction=Direction.OUT,
    summary=(
        "One per execution booked (and per reversal of a busted one): the new position, with the trade "
        "confirmation and the settlement instruction. Correlation id: the order id."
    ),
    producers=("the settlement stage",),
    consumers=("the portfolio service",),
    example="""{
  "orderId": "0193e7a2-5b1c-7d2e-9f00-1a2b3c4d5e6f",
  "executionId": "SIM-7f3c2a",
  "accountId": "ACC-001",
  "symbol": "AAPL",
  "quantity": 140,
  "delta": 40,
  "averageCost": 188.5,
  "realizedPnl": 0,
  "timestamp": "2026-11-30T14:30:00.123456Z",
  "reversal": false,
  "confirmation": {
    "confirmationId": "0193e7a2-7000-7000-8000-000000000002",
    "orderId": "0193e7a2-5b1c-7d2e-9f00-1a2b3c4d5e6f",
    "executionId": "SIM-7f3c2a",
    "accountId": "ACC-001",
    "symbol": "AAPL",
    "side": "BUY",
    "quantity": 40,
    "price": 190.2,
    "grossAmount": 7608,
    "fees": 0.38,
    "netAmount": 7608.38,
    "currency": "USD",
    "venue": "SIM",
    "tradeDate": "2026-11-30",
    "settlementDate": "2026-12-01",
    "reversal": false
  },
  "instruction": {
    "instructionId": "0193e7a2-7000-7000-8000-000000000003",
    "confirmationId": "0193e7a2-7000-7000-8000-000000000002",
    "orderId": "0193e7a2-5b1c-7d2e-9f00-1a2b3c4d5e6f",
    "executionId": "SIM-7f3c2a",
    "accountId": "ACC-001",
    "symbol": "AAPL",
    "securitiesDirection": "RECEIVE",
    "quantity": 40,
    "cashDirection": "PAY",
    "cashAmount": -7608.38,
    "currency": "USD",
    "settlementDate": "2026-12-01",
    "status": "PENDING",
    "reversal": false
  }
}""",
)

TRADE_CONFIRMATION = MessageKind(
    type="TradeConfirmation",
    exchange=PORTFOLIO_EXCHANGE,
    routing_key="trades.confirmation",
    schema=TradeConfirmationSchema(),
    direction=Direction.OUT,
    retired="no longer published; the same body travels as the position update's `confirmation`",
)

SETTLEMENT_INSTRUCTION = MessageKind(
    type="SettlementInstruction",
    exchange=PORTFOLIO_EXCHANGE,
    routing_key="settlement.instruction",
    schema=SettlementInstructionSchema(),
    direction=Direction.OUT,
    retired="no longer published; the same body travels as the position update's `instruction`",
)

# --------------------------------------------------------------------------- between the stages

RISK_CHECK = MessageKind(
    type="RiskCheck",
    exchange=OMS_EXCHANGE,
    routing_key="risk.check",
    schema=RiskCheckSchema(),
    summary="Check an order at a version; with `requestId`, the new terms of a replace of an order at the venue.",
    producers=("the order commands (intake, the API)", "the reconcile job"),
    consumers=("the risk_gate stage",),
    stage="risk_gate",
    internal=True,
    example="""{"orderId": "0193e7a2-5b1c-7d2e-9f00-1a2b3c4d5e6f", "version": 1}""",
)

ROUTE_NEW = MessageKind(
    type="RouteNew",
    exchange=OMS_EXCHANGE,
    routing_key="router.new",
    schema=RouteNewSchema(),
    summary="Send an approved order to the venue.",
    producers=("the risk_gate stage", "the reconcile job"),
    consumers=("the router stage",),
    stage="router",
    internal=True,
    example="""{"orderId": "0193e7a2-5b1c-7d2e-9f00-1a2b3c4d5e6f"}""",
)

ROUTE_CANCEL = MessageKind(
    type="RouteCancel",
    exchange=OMS_EXCHANGE,
    routing_key="router.cancel",
    schema=RouteCancelSchema(),
    summary="Send a cancel request of an order at the venue.",
    producers=("the order commands (the API)", "the reconcile job"),
    consumers=("the router stage",),
    stage="router",
    internal=True,
    example="""{
  "orderId": "0193e7a2-5b1c-7d2e-9f00-1a2b3c4d5e6f",
  "requestId": "0193e7a2-5b1d-7000-8000-0a1b2c3d4e5f"
}""",
)

ROUTE_REPLACE = MessageKind(
    type="RouteReplace",
    exchange=OMS_EXCHANGE,
    routing_key="router.replace",
    schema=RouteReplaceSchema(),
    summary="Send a replace request whose new terms passed the risk gate.",
    producers=("the risk_gate stage",),
    consumers=("the router stage",),
    stage="router",
    internal=True,
    example="""{
  "orderId": "0193e7a2-5b1c-7d2e-9f00-1a2b3c4d5e6f",
  "requestId": "0193e7a2-5b1d-7000-8000-0a1b2c3d4e5f"
}""",
)

FILL_BOOKED = MessageKind(
    type="FillBooked",
    exchange=OMS_EXCHANGE,
    routing_key="settlement.fill",
    schema=FillBookedSchema(),
    summary="An execution the execution handler booked on an order (or the reversal of a busted one).",
    producers=("the execution_handler stage",),
    consumers=("the settlement stage",),
    stage="settlement",
    internal=True,
    notes=(
        "`FillBooked` always carries an execution's own terms with a positive quantity. `reversal: true` means "
        "\"undo execution `executionId`\" (the busted execution's id, not the TRADE_CANCEL's): each execution is "
        "booked once and reversed at most once, and settlement's unique key is (`executionId`, `reversal`).",
    ),
    example="""{
  "orderId": "0193e7a2-5b1c-7d2e-9f00-1a2b3c4d5e6f",
  "executionId": "SIM-7f3c2a",
  "accountId": "ACC-001",
  "symbol": "AAPL",
  "side": "BUY",
  "quantity": 40,
  "price": 190.2,
  "fees": 0.38,
  "venue": "SIM",
  "timestamp": "2026-11-30T14:30:00.123456Z",
  "reversal": false
}""",
)

# --------------------------------------------------------------------------- market data

PRICE = MessageKind(
    type="Price",
    exchange=MARKETDATA_EXCHANGE,
    routing_key="prices.<SYMBOL>",
    binding="prices.*",
    schema=PriceSchema(),
    direction=Direction.FEED,
    summary="A symbol's latest price, every tick.",
    producers=("the simulated venue",),
    consumers=("the risk gate's reference price feed",),
    notes=(
        "The risk gate keeps the latest price per symbol as its reference price (`reference_prices`), with a "
        "staleness limit (`OMS_RISK_PRICE_STALENESS_SECONDS`); a body that is not a price is logged and dropped "
        "(the next tick follows).",
    ),
    example="""{"symbol": "AAPL", "price": 190.21, "timestamp": "2026-11-30T14:30:00.100000Z"}""",
)

# --------------------------------------------------------------------------- the lists derived from the kinds

KINDS: tuple[MessageKind, ...] = (
    TRADE_DECISION,
    EXECUTION_REPORT,
    NEW_ORDER_REQUEST,
    CANCEL_REQUEST,
    REPLACE_REQUEST,
    ORDER_UPDATE,
    POSITION_UPDATE,
    RISK_CHECK,
    ROUTE_NEW,
    ROUTE_CANCEL,
    ROUTE_REPLACE,
    FILL_BOOKED,
    PRICE,
)
RETIRED_KINDS: tuple[MessageKind, ...] = (TRADE_CONFIRMATION, SETTLEMENT_INSTRUCTION)

# The requests the broker integration service (here the simulated venue's queue) takes from ``broker``.
BROKER_REQUESTS: tuple[MessageKind, ...] = (NEW_ORDER_REQUEST, CANCEL_REQUEST, REPLACE_REQUEST)
# The OMS stages, in pipeline order, each with the queue ``oms.<stage>`` (every one takes some kind: tested).
STAGES: tuple[str, ...] = ("intake", "risk_gate", "router", "execution_handler", "settlement")
# The routing keys of the hand-overs between stages (those that may travel in carriers).
INTERNAL_KEYS: frozenset[str] = frozenset(k.routing_key for k in KINDS if k.internal)


def consumed_by(stage: str) -> tuple[MessageKind, ...]:
    """The kinds the queue of ``stage`` takes."""
    return tuple(k for k in KINDS if k.stage == stage)
