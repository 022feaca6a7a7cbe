"""Execution reports, one row per ``execution_id``, in the caller's transaction."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, select, update
from sqlalchemy.dialects.postgresql import insert

from common.domain import ExecutionReportData
from common.store import tables


class ExecutionReportRepository:
    """Records venue execution reports (one row per ``execution_id``) and flags busted ones."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def record(
        self, report: ExecutionReportData, *, quantity: Decimal, price: Decimal, received_at: datetime
    ) -> str | None:
        """Insert the report; returns its row id, or None when this ``execution_id`` was recorded before."""
        row_id = str(uuid.uuid4())
        stmt = (
            insert(tables.execution_reports)
            .values(
                id=row_id,
                order_id=report.order_id,
                execution_id=report.execution_id,
                quantity=quantity,
                price=price,
                timestamp=report.timestamp,
                fees=report.fees,
                venue=report.venue,
                exec_type=report.exec_type.value,
                request_id=report.request_id,
                broker_order_id=report.broker_order_id,
                cum_qty=report.cum_qty,
                leaves_qty=report.leaves_qty,
                avg_px=report.avg_px,
                exec_ref_id=report.exec_ref_id,
                reason=report.reason,
                busted=False,
                received_at=received_at,
            )
            .on_conflict_do_nothing(index_elements=["execution_id"])
            .returning(tables.execution_reports.c.id)
        )
        return self._connection.execute(stmt).scalar_one_or_none()

    def mark_busted(self, order_id: str, execution_id: str) -> bool | None:
        """Flag a busted execution of this order. True: flagged now; False: already busted; None: unknown."""
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
