"""Execution reports, one row per ``execution_id``, in the caller's transaction.

A row keeps what the report said (``last_qty``, ``last_px``, ``cum_qty``...) beside what it booked
(``quantity``, ``price``, ``fees``: the rise of the order's cumulative quantity it carried, negative for a
bust), so a bust reverses exactly what was booked and a reused execution id can be told from a resend.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, text

from common.domain import BookedExecution, ExecutionReportData, FillDelta
from common.ids import new_id
from common.orders.records import StoredReport
from common.store import hot_sql
from common.store.bulk import bulk_insert, rows_parameter

_ZERO = Decimal(0)

# Built once: a batch's reads and writes are one statement each, whatever its size.
_KNOWN_SQL = hot_sql.hot(
    text(
        "SELECT execution_id, order_id, exec_type, last_qty, last_px, cum_qty, exec_ref_id FROM execution_reports "
        "WHERE execution_id = ANY(CAST(:ids AS varchar[]))"
    )
)
# The columns ``record`` buffers, in the order of its row tuples; one INSERT for the batch.
_INSERT_COLUMNS = (
    ("id", "varchar"),
    ("order_id", "varchar"),
    ("execution_id", "varchar"),
    ("quantity", "numeric"),
    ("price", "numeric"),
    ("timestamp", "timestamptz"),
    ("fees", "numeric"),
    ("venue", "varchar"),
    ("exec_type", "varchar"),
    ("request_id", "varchar"),
    ("broker_order_id", "varchar"),
    ("cum_qty", "numeric"),
    ("leaves_qty", "numeric"),
    ("avg_px", "numeric"),
    ("exec_ref_id", "varchar"),
    ("reason", "text"),
    ("busted", "boolean"),
    ("received_at", "timestamptz"),
    ("last_qty", "numeric"),
    ("last_px", "numeric"),
    ("unreported_delta", "numeric"),
)
_INSERT_SQL = bulk_insert("execution_reports", _INSERT_COLUMNS)
_COLUMN_NAMES = tuple(name for name, _ in _INSERT_COLUMNS)
_BOOKED_SQL = text(
    "SELECT quantity, price, fees, busted, exec_type FROM execution_reports "
    "WHERE order_id = :order_id AND execution_id = :execution_id"
)
_MARK_BUSTED_SQL = text(
    "UPDATE execution_reports SET busted = true WHERE order_id = :order_id AND execution_id = :execution_id"
)


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
        self._known: dict[str, StoredReport] = {}
        self._checked: set[str] = set()
        self._pending: list[tuple[object, ...]] = []  # rows to insert, in _INSERT_COLUMNS order

    def prefetch(self, execution_ids: Iterable[str]) -> None:
        """Find, in one round trip, which of these execution ids were recorded before, with their terms."""
        ids = set(execution_ids) - self._checked
        if ids:
            for execution_id, *stored in hot_sql.rows(self._connection, _KNOWN_SQL, {"ids": list(ids)}):
                self._known[execution_id] = StoredReport(*stored)
            self._checked.update(ids)

    def known(self, execution_id: str) -> StoredReport | None:
        """The report recorded before under this ``execution_id`` (in this transaction or earlier), if any."""
        if execution_id not in self._checked:
            self.prefetch([execution_id])
        return self._known.get(execution_id)

    def record(
        self,
        report: ExecutionReportData,
        *,
        booked: FillDelta | None,
        unreported_delta: Decimal,
        received_at: datetime,
    ) -> str:
        """Record a report not recorded before (see ``known``); returns its row id."""
        row_id = new_id()
        self._known[report.execution_id] = StoredReport.of(report)
        self._checked.add(report.execution_id)
        self._pending.append(
            (
                row_id,
                report.order_id,
                report.execution_id,
                booked.quantity if booked else _ZERO,
                booked.price if booked else (report.last_px or _ZERO),
                report.timestamp,
                booked.fees if booked else _ZERO,
                report.venue,
                report.exec_type.value,
                report.request_id,
                report.broker_order_id,
                report.cum_qty,
                report.leaves_qty,
                report.avg_px,
                report.exec_ref_id,
                report.reason,
                False,
                received_at,
                report.last_qty,
                report.last_px,
                unreported_delta,
            )
        )
        return row_id

    def flush(self) -> None:
        """Write the buffered reports. A concurrent writer's duplicate fails the batch (unique execution id)."""
        if self._pending:
            rows = [dict(zip(_COLUMN_NAMES, row, strict=True)) for row in self._pending]
            hot_sql.execute(self._connection, _INSERT_SQL, rows_parameter(rows, _INSERT_COLUMNS))
            self._pending.clear()

    def booked(self, order_id: str, execution_id: str) -> BookedExecution | None:
        """What this order's execution ``execution_id`` booked (for a bust of it); None if it has no such one."""
        self.flush()  # the busted execution may be in this batch
        row = self._connection.execute(_BOOKED_SQL, {"order_id": order_id, "execution_id": execution_id}).first()
        if row is None or row.exec_type == "TRADE_CANCEL":
            return None
        return BookedExecution(execution_id, row.quantity, row.price, row.fees, busted=row.busted)

    def mark_busted(self, order_id: str, execution_id: str) -> None:
        """Flag a busted execution of this order (its bust has been applied)."""
        self.flush()
        self._connection.execute(_MARK_BUSTED_SQL, {"order_id": order_id, "execution_id": execution_id})
