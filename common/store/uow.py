"""The unit of work on Postgres: one transaction, the repositories that share it, and the outbox it fills.

It keeps the contract of ``common.orders.ports.AbstractUnitOfWork``, which the handlers and the order commands are
typed with; ``connection`` is for the stage runtime's inbox and for the read model, never for domain writes.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from types import TracebackType
from typing import Any, cast

from sqlalchemy import Connection, Engine

from common.orders.ports import BufferedRepository, RepositorySlot, RepositoryT
from common.store.db import use_plan_cache_mode
from common.store.executions_repo import ExecutionReportRepository
from common.store.orders_repo import OrderRepository
from common.store.outbox import Outbox, OutboxMessage
from common.store.reference import ReferenceData
from common.store.requests_repo import RequestRepository
from common.store.settlement_repo import SettlementRepository


class UnitOfWork:
    """``with UnitOfWork(engine) as uow: ...; uow.commit()`` — anything not committed is rolled back."""

    def __init__(self, engine: Engine, claim_outbox: bool = False, plan_cache_mode: str | None = None) -> None:
        self._engine = engine
        self._claim_outbox = claim_outbox
        self._plan_cache_mode = plan_cache_mode  # Postgres's, for this transaction's session (None: as it is)
        self._connection: Connection | None = None
        self.committed: list[OutboxMessage] = []
        self._after_commit: list[tuple[contextvars.Context, Callable[[], None]]] = []
        self._repositories: dict[RepositorySlot[Any], BufferedRepository] = {}

    def __enter__(self) -> UnitOfWork:
        self._connection = self._engine.connect()
        if self._plan_cache_mode is not None:
            try:
                use_plan_cache_mode(self._connection, self._plan_cache_mode)
            except BaseException:
                self._connection.close()
                self._connection = None
                raise
        self._connection.begin()
        self.outbox = Outbox(self._connection, claimed=self._claim_outbox)
        self.orders = OrderRepository(self._connection, self.outbox)
        self.executions = ExecutionReportRepository(self._connection)
        self.reference = ReferenceData(self._connection)
        self.requests = RequestRepository(self._connection)
        self.settlement = SettlementRepository(self._connection)
        return self

    @property
    def connection(self) -> Connection:
        """The transaction's connection, for the stage runtime's inbox and the API's read model.

        The buffered writes go out first (an autoflush), so SQL run here sees them and may refer to them; a
        handler never needs it (it is not part of the port), so its whole batch stays buffered until commit.
        """
        assert self._connection is not None, "unit of work used outside its with-block"
        self._flush()
        return self._connection

    def repository(self, slot: RepositorySlot[RepositoryT]) -> RepositoryT:
        """The transaction's one instance of a stage's own repository (built by the slot, given this unit of work,
        on first use: a Postgres repository of a stage reads through ``connection``, which writes what the shared
        repositories buffered first, so it sees the transaction's own writes).

        Its buffered writes go out after the shared repositories' (rows may refer to orders) at every flush, so
        a batch writes each table once whatever its size.
        """
        found = self._repositories.get(slot)
        if found is not None:
            return cast(RepositoryT, found)  # built by this slot: its port's type
        assert self._connection is not None, "unit of work used outside its with-block"
        built = slot.build(self)
        self._repositories[slot] = built
        return built

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` once this transaction commits (never if it rolls back): metrics and log lines about
        what was committed, so a batch retried message by message does not count them twice. The action runs in
        the context it was registered in, so its log lines carry that message's ids."""
        self._after_commit.append((contextvars.copy_context(), action))

    def _flush(self) -> None:
        # Orders first: execution reports, requests and events refer to them.
        self.orders.flush()
        self.executions.flush()
        self.requests.flush()
        self.settlement.flush()
        for repository in self._repositories.values():
            repository.flush()

    def commit(self) -> list[OutboxMessage]:
        """Write what is buffered and commit; returns the messages now owed to the broker."""
        self._flush()
        self.outbox.flush()
        self.connection.commit()
        self._reset()
        self.committed = list(self.outbox.written)
        self.outbox.written.clear()
        actions, self._after_commit = self._after_commit, []
        for context, action in actions:
            context.run(action)
        self.connection.begin()
        return self.committed

    def _reset(self) -> None:
        self.orders.reset()
        self.executions.reset()
        self.reference.reset()
        self.requests.reset()
        self.settlement.reset()
        for repository in self._repositories.values():
            repository.reset()

    def rollback(self) -> None:
        """Undo everything since the last commit."""
        self.outbox.discard()
        self._reset()
        self._after_commit.clear()
        self.connection.rollback()
        self.connection.begin()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._connection is not None:
            self._connection.rollback()
            self._connection.close()
            self._connection = None
