"""Execution reports, one row per ``execution_id``, in the caller's transaction."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, insert, select, update

from common.domain import ExecutionReportData
from common.store import tables


class ExecutionReportRepository:
    """Records venue execution reports (one row per ``execution_id``) and flags busted ones.

    Inserts are buffered and written in one statement at ``flush`` (the unit of work's commit): a batch first
    ``prefetch``es which of its execution ids are known, so telling a duplicate costs no round trip.
    """

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.reset()

    def reset(self) -> None:
        """Forget what this transaction looked up and buffered."""
        self._known: set[str] = set()
        self._checked: set[str] = set()
        self._pending: list[dict[str, object]] = []

    def prefetch(self, execution_ids: Iterable[str]) -> None:
        """Find, in one round trip, which of these execution ids were recorded before."""
        ids = set(execution_ids) - self._checked
        if ids:
            e = tables.execution_reports.c
            found = self._connection.execute(select(e.execution_id).where(e.execution_id.in_(ids))).scalars()
            self._known.update(found)
            self._checked.update(ids)

    def record(
        self, report: ExecutionReportData, *, quantity: Decimal, price: Decimal, received_at: datetime
    ) -> str | None:
        """Record the report; returns its row id, or None when this ``execution_id`` was recorded before."""
        self.prefetch([report.execution_id])
        if report.execution_id in self._known:
            return None
        row_id = str(uuid.uuid4())
        self._known.add(report.execution_id)
        self._pending.append(
            {
                "id": row_id,
                "order_id": report.order_id,
                "execution_id": report.execution_id,
                "quantity": quantity,
                "price": price,
                "timestamp": report.timestamp,
                "fees": report.fees,
                "venue": report.venue,
                "exec_type": report.exec_type.value,
                "request_id": report.request_id,
                "broker_order_id": report.broker_order_id,
                "cum_qty": report.cum_qty,
                "leaves_qty": report.leaves_qty,
                "avg_px": report.avg_px,
                "exec_ref_id": report.exec_ref_id,
                "reason": report.reason,
                "busted": False,
                "received_at": received_at,
            }
        )
        return row_id

    def flush(self) -> None:
        """Write the buffered reports. A concurrent writer's duplicate fails the batch (unique execution id)."""
        if self._pending:
            self._connection.execute(insert(tables.execution_reports), self._pending)
            self._pending.clear()

    def mark_busted(self, order_id: str, execution_id: str) -> bool | None:
        """Flag a busted execution of this order. True: flagged now; False: already busted; None: unknown."""
        self.flush()  # the busted execution may be in this batch
        e = tables.execution_reports.c
        flagged = self._connection.execute(
            update(tables.execution_reports)
            .where(e.order_id == order_id, e.execution_id == execution_id, e.busted.is_(False))
            .values(busted=True)
            .returning(e.id)
        ).first()
        if flagged is not None:
            return True
        known = self._connection.execute(
            select(e.id).where(e.order_id == order_id, e.execution_id == execution_id)
        ).first()
        return False if known is not None else None
