"""Orders for the integration tests: booked through intake or built by the domain, moved on by the stage handlers
or by venue reports, and read back from the tables the pipeline writes.

The defaults are the demo data's (ACC-001, AAPL at 190); a test that wants other terms passes them.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, Row, func, select

from common import jsonutil
from common.domain import ExecType, ExecutionReportData, Order, OrderTerms, OrderType, Side, TimeInForce
from common.messages.partitions import base_key
from common.messaging.envelope import Envelope
from common.orders.commands import submit_order
from common.orders.order_request import OrderRequest
from common.store import tables
from common.store.uow import UnitOfWork

Handler = Callable[[UnitOfWork, Envelope], object]

# --------------------------------------------------------------------------- booking


def order_request(**fields: Any) -> OrderRequest:
    """What a client asks for: a LIMIT buy of 100 AAPL at 190.00 for ACC-001 with a client order id of its own,
    unless given."""
    values: dict[str, Any] = {
        "account_id": "ACC-001",
        "symbol": "AAPL",
        "side": "BUY",
        "type": "LIMIT",
        "quantity": Decimal("100"),
        "price": Decimal("190.00"),
        "client_order_id": str(uuid.uuid4()),
    }
    values.update(fields)
    return OrderRequest(**values)


def submit(engine: Engine, *, user_id: str | None = None, **fields: Any) -> tuple[Order, bool]:
    """Book an order through the intake command in a unit of work of its own: the order and whether it is new."""
    with UnitOfWork(engine) as uow:
        order, created = submit_order(
            uow, order_request(**fields), user_id=user_id, correlation_id=None, message_id=None
        )
        uow.commit()
    return order, created


def submit_new(engine: Engine, **fields: Any) -> tuple[str, int]:
    """Book an order that passes intake (NEW, its RiskCheck in the outbox): its id and version."""
    order, _ = submit(engine, **fields)
    assert order.state == "NEW", order.rejection_reason
    return order.id, order.version


def trade_decision(**fields: Any) -> dict[str, Any]:
    """A trade decision body as the strategy service sends it (camelCase): a MARKET buy of 100 AAPL for ACC-001
    unless given; a field given as None is left out."""
    body: dict[str, Any] = {
        "decisionId": str(uuid.uuid4()),
        "accountId": "ACC-001",
        "symbol": "AAPL",
        "side": "BUY",
        "type": "MARKET",
        "quantity": Decimal("100"),
        "timeInForce": "DAY",
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


def create_order(
    *,
    account_id: str = "ACC-001",
    symbol: str = "AAPL",
    side: Side = Side.BUY,
    type: OrderType = OrderType.LIMIT,
    quantity: Decimal = Decimal("100"),
    price: Decimal | None = Decimal("190.00"),
    time_in_force: TimeInForce = TimeInForce.DAY,
    strategy_id: str | None = None,
    user_id: str | None = "tester",
    now: datetime | None = None,
) -> Order:
    """A NEW order made by the domain (not stored yet), with an id of its own."""
    terms = OrderTerms(
        account_id=account_id,
        symbol=symbol,
        side=side,
        type=type,
        quantity=quantity,
        price=price,
        time_in_force=time_in_force,
        strategy_id=strategy_id,
    )
    return Order.create(id=str(uuid.uuid4()), terms=terms, now=now or datetime.now(UTC), user_id=user_id)


def store(engine: Engine, order: Order) -> str:
    """Write an order as it stands (with its history) in a unit of work of its own; its id."""
    with UnitOfWork(engine) as uow:
        uow.orders.add(order, correlation_id=order.id, message_id=None)
        uow.commit()
    return order.id


def mark_routed(order: Order, now: datetime, checks: list[str] | None = None) -> Order:
    """Move a NEW order on as the risk gate (approving with ``checks``) and the router would."""
    order.approve(["test"] if checks is None else checks, now)
    order.mark_routed(str(uuid.uuid4()), now)
    return order


@contextlib.contextmanager
def changing_order(engine: Engine, order_id: str) -> Iterator[tuple[UnitOfWork, Order]]:
    """The stored order, locked in a unit of work of its own; saved and committed when the block ends."""
    with UnitOfWork(engine) as uow:
        order = uow.orders.get(order_id, for_update=True)
        assert order is not None
        yield uow, order
        uow.orders.save(order, correlation_id=order_id, message_id=None)
        uow.commit()


def execution_report(order_id: str, exec_type: ExecType, **fields: Any) -> ExecutionReportData:
    """A venue execution report with an execution id of its own, stamped now unless given."""
    values: dict[str, Any] = {
        "execution_id": str(uuid.uuid4()),
        "order_id": order_id,
        "exec_type": exec_type,
        "timestamp": datetime.now(UTC),
    }
    values.update(fields)
    return ExecutionReportData(**values)


def apply_report(engine: Engine, order_id: str, exec_type: ExecType, **fields: Any) -> None:
    """Apply a venue execution report as the execution handler would (enough to move the order)."""
    with changing_order(engine, order_id) as (_, order):
        order.apply_report(execution_report(order_id, exec_type, **fields), datetime.now(UTC))


# --------------------------------------------------------------------------- stage handlers


def risk_check(order_id: str, version: int) -> Envelope:
    """The RiskCheck intake asks for, with a message id of its own."""
    return Envelope(
        message_id=str(uuid.uuid4()),
        routing_key="risk.check",
        body={"order_id": order_id, "version": version},
        correlation_id=order_id,
        type="RiskCheck",
    )


def envelope_of(row: Mapping[str, Any], body: dict[str, Any], *, as_sent: bool = True) -> Envelope:
    """What a stage receives for an outbox row, ``body`` being the row's body as the message's schema loads it.

    With ``as_sent=False`` the row's type and headers (who asked) are left out.
    """
    if not as_sent:
        return Envelope(
            message_id=row["message_id"],
            routing_key=base_key(row["routing_key"]),
            body=body,
            correlation_id=row["correlation_id"],
        )
    return Envelope(
        message_id=row["message_id"],
        routing_key=base_key(row["routing_key"]),
        body=body,
        correlation_id=row["correlation_id"],
        type=row["type"],
        headers=row["headers"],
    )


def handle(engine: Engine, handler: Handler, *envelopes: Envelope) -> None:
    """Run a stage handler on the envelopes in one transaction, as one batch of the runtime would."""
    with UnitOfWork(engine, claim_outbox=True) as uow:
        for env in envelopes:
            handler(uow, env)
        uow.commit()


# --------------------------------------------------------------------------- reading back


def find_order_record(engine: Engine, order_id: str) -> Row[Any] | None:
    """The order's row as SQLAlchemy returns it (attribute access), or None."""
    with engine.connect() as connection:
        return connection.execute(select(tables.orders).where(tables.orders.c.id == order_id)).first()


def order_record(engine: Engine, order_id: str) -> Row[Any]:
    """The order's row as SQLAlchemy returns it (attribute access); there must be one."""
    row = find_order_record(engine, order_id)
    assert row is not None, f"no order {order_id}"
    return row


def order_row(engine: Engine, order_id: str) -> dict[str, Any]:
    """The order's row as a dict (there must be one)."""
    return dict(order_record(engine, order_id)._mapping)


def order_count(engine: Engine, account_id: str) -> int:
    """How many orders the account has."""
    with engine.connect() as connection:
        query = select(func.count()).select_from(tables.orders).where(tables.orders.c.account_id == account_id)
        return int(connection.execute(query).scalar_one())


def event_records(engine: Engine, order_id: str) -> list[Row[Any]]:
    """The order's audit trail in order, as SQLAlchemy rows (attribute access)."""
    e = tables.order_events.c
    with engine.connect() as connection:
        return list(connection.execute(select(tables.order_events).where(e.order_id == order_id).order_by(e.sequence)))


def events_of(engine: Engine, order_id: str) -> list[dict[str, Any]]:
    """The order's audit trail in order, as dicts."""
    return [dict(row._mapping) for row in event_records(engine, order_id)]


def event_types(engine: Engine, order_id: str) -> list[str]:
    return [event["type"] for event in events_of(engine, order_id)]


def last_event(engine: Engine, order_id: str) -> dict[str, Any]:
    return events_of(engine, order_id)[-1]


def outbox_of(engine: Engine, order_id: str, routing_key: str | None = None) -> list[dict[str, Any]]:
    """The order's outbox rows (of one routing key when given) in order, their bodies decoded."""
    o = tables.outbox.c
    query = select(tables.outbox).where(o.correlation_id == order_id)
    with engine.connect() as connection:
        rows = connection.execute(query.order_by(o.id))
        return [
            {**dict(r), "body": jsonutil.loads(r["body"])}
            for r in rows.mappings()
            if routing_key is None or base_key(r["routing_key"]) == routing_key  # whatever its partition
        ]


def outbox_bodies(engine: Engine, order_id: str, routing_key: str) -> list[dict[str, Any]]:
    """The decoded bodies of the order's outbox rows of one routing key, in order."""
    return [row["body"] for row in outbox_of(engine, order_id, routing_key)]


def requests_of(engine: Engine, order_id: str) -> list[dict[str, Any]]:
    """The order's venue requests (``order_requests``), oldest first."""
    r = tables.order_requests.c
    with engine.connect() as connection:
        rows = connection.execute(select(tables.order_requests).where(r.order_id == order_id).order_by(r.created_at))
        return [dict(row) for row in rows.mappings()]


def request_row(engine: Engine, request_id: str) -> dict[str, Any]:
    """One venue request's row (there must be one)."""
    query = select(tables.order_requests).where(tables.order_requests.c.request_id == request_id)
    with engine.connect() as connection:
        return dict(connection.execute(query).mappings().one())
