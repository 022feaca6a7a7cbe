"""Where the reconcile job records what it did to each stuck order (``order_reconciliations``): a port of the job's
own, obtained through the unit of work (``uow.repository(RECONCILIATIONS)``), and its Postgres side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import insert

from common.orders.ports import BufferedRepository, RepositorySlot
from common.store.tables import order_reconciliations
from common.store.uow import UnitOfWork

Action = tuple[str, Mapping[str, Any]]  # (what was done, its detail)


class ReconciliationLog(BufferedRepository, Protocol):
    """The reconcile job's record of its actions, in the transaction that takes them."""

    def record(self, order_id: str, state: str, actions: Sequence[Action], now: datetime) -> None:
        """Record what was done to the order (in ``state``), one entry per action."""
        ...


class PostgresReconciliationLog:
    """``ReconciliationLog`` on the Postgres unit of work: one insert per reconciled order, at once (rare)."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    def record(self, order_id: str, state: str, actions: Sequence[Action], now: datetime) -> None:
        """Insert one ``order_reconciliations`` row per action."""
        rows = [
            {"order_id": order_id, "state": state, "action": action, "detail": dict(detail), "created_at": now}
            for action, detail in actions
        ]
        if rows:
            self._uow.connection.execute(insert(order_reconciliations), rows)

    def flush(self) -> None:
        """Nothing buffered: ``record`` writes at once."""

    def reset(self) -> None:
        """Nothing kept between transactions."""


RECONCILIATIONS: RepositorySlot[ReconciliationLog] = RepositorySlot("reconciliations", PostgresReconciliationLog)
