"""Read-model queries: orders from the ``order_summary`` view, with their execution reports.

Every query is SQLAlchemy Core over ``common.store.tables`` (parameterised). Results are plain dicts with
snake_case keys, ready for the REST schemas and the gRPC mapping.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Select, bindparam, func, select

from common.domain.enums import TERMINAL_STATES, OrderState
from common.store import hot_sql, tables
from common.store.field_crypto import open_for

_ZERO = Decimal(0)
_TERMINAL = {state.value for state in TERMINAL_STATES}

_SUMMARY_COLUMNS = [c for c in tables.order_summary.c if c.name != "pending_request"]
_REPORT_COLUMNS = [
    tables.execution_reports.c.id,
    tables.execution_reports.c.order_id,
    tables.execution_reports.c.execution_id,
    tables.execution_reports.c.quantity,
    tables.execution_reports.c.price,
    tables.execution_reports.c.timestamp,
    tables.execution_reports.c.fees,
    tables.execution_reports.c.venue,
    tables.execution_reports.c.exec_type,
    tables.execution_reports.c.cum_qty,
    tables.execution_reports.c.leaves_qty,
    tables.execution_reports.c.avg_px,
    tables.execution_reports.c.reason,
    tables.execution_reports.c.busted,
]


@dataclass(frozen=True)
class OrderFilter:
    """What GET /orders may filter on; ``accounts`` limits the result to the caller's accounts (None: all)."""

    accounts: Collection[str] | None = None
    status: str | None = None
    account_id: str | None = None
    symbol: str | None = None
    from_date: datetime | None = None
    to_date: datetime | None = None


@dataclass(frozen=True)
class OrderPage:
    """One page of orders and the totals of the whole result."""

    content: list[dict[str, Any]]
    page: int
    size: int
    total_elements: int

    @property
    def total_pages(self) -> int:
        """Number of pages of ``size`` the whole result fills."""
        return math.ceil(self.total_elements / self.size) if self.size else 0


def _leaves(row: dict[str, Any]) -> Decimal:
    if row["state"] in _TERMINAL:
        return _ZERO
    leaves: Decimal = max(row["quantity"] - row["filled_quantity"], _ZERO)
    return leaves


def _order_dict(row: Any, reports: list[dict[str, Any]], connection: Connection) -> dict[str, Any]:
    order = dict(row)
    if order.get("notes"):  # encrypted at rest (common.store.field_crypto); no filter reads notes
        order["notes"] = open_for(connection, order["notes"], order["id"])
    order["leaves_quantity"] = _leaves(order)
    order["execution_reports"] = reports
    return order


_REPORT_ORDER = (
    tables.execution_reports.c.order_id,
    tables.execution_reports.c.timestamp,
    tables.execution_reports.c.received_at,
    tables.execution_reports.c.id,
)
# One order and its reports in one statement (a row per report, the order's columns on each): one snapshot, so
# it needs no transaction around it. Per request, so hot (``common.store.hot_sql``).
_REPORT_FIELDS = [c.name for c in _REPORT_COLUMNS if c.name != "order_id"]
_SUMMARY_FIELDS = [c.name for c in _SUMMARY_COLUMNS]
_ONE_ORDER = hot_sql.hot(
    select(*_SUMMARY_COLUMNS, *(c.label(f"report_{c.name}") for c in _REPORT_COLUMNS if c.name != "order_id"))
    .select_from(
        tables.order_summary.outerjoin(
            tables.execution_reports, tables.execution_reports.c.order_id == tables.order_summary.c.id
        )
    )
    .where(tables.order_summary.c.id == bindparam("order_id"))
    .order_by(*_REPORT_ORDER[1:])
)


def _report_dict(row: Any) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "order_id"}


def _reports_for(connection: Connection, order_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    if not order_ids:
        return {}
    report = tables.execution_reports
    rows = connection.execute(
        select(*_REPORT_COLUMNS).where(report.c.order_id.in_(list(order_ids))).order_by(*_REPORT_ORDER)
    ).mappings()
    by_order: dict[str, list[dict[str, Any]]] = {order_id: [] for order_id in order_ids}
    for row in rows:
        by_order[row["order_id"]].append(_report_dict(row))
    return by_order


def get_order(connection: Connection, order_id: str) -> dict[str, Any] | None:
    """One order with its execution reports, or None."""
    rows = hot_sql.mappings(connection, _ONE_ORDER, {"order_id": order_id})
    if not rows:
        return None
    reports = [{name: row[f"report_{name}"] for name in _REPORT_FIELDS} for row in rows if row["report_id"] is not None]
    return _order_dict({name: rows[0][name] for name in _SUMMARY_FIELDS}, reports, connection)


def _filtered(query: Select[Any], where: OrderFilter) -> Select[Any]:
    summary = tables.order_summary
    if where.accounts is not None:
        query = query.where(summary.c.account_id.in_(sorted(where.accounts)))
    if where.account_id is not None:
        query = query.where(summary.c.account_id == where.account_id)
    if where.status is not None:
        query = query.where(summary.c.status == where.status)
    if where.symbol is not None:
        query = query.where(summary.c.symbol == where.symbol)
    if where.from_date is not None:
        query = query.where(summary.c.created_at >= where.from_date)
    if where.to_date is not None:
        query = query.where(summary.c.created_at < where.to_date)
    return query


def list_orders(connection: Connection, where: OrderFilter, page: int, size: int) -> OrderPage:
    """A page of orders, newest first, with the total count of the filtered result."""
    summary = tables.order_summary
    if where.accounts is not None and not where.accounts:
        return OrderPage([], page, size, 0)
    total = connection.execute(_filtered(select(func.count()).select_from(summary), where)).scalar_one()
    rows: list[Any] = []
    if page * size < total:
        rows = list(
            connection.execute(
                _filtered(select(*_SUMMARY_COLUMNS), where)
                .order_by(summary.c.created_at.desc(), summary.c.id.desc())
                .limit(size)
                .offset(page * size)
            ).mappings()
        )
    reports = _reports_for(connection, [row["id"] for row in rows])
    return OrderPage([_order_dict(row, reports[row["id"]], connection) for row in rows], page, size, total)


def is_terminal(order: dict[str, Any]) -> bool:
    """Whether a read-model order is done (FILLED, CANCELED, EXPIRED or REJECTED)."""
    return OrderState(order["state"]) in TERMINAL_STATES
