"""The stores the contract suite runs against: Postgres (the test session's database) and the in-memory fakes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol, cast

from common.orders.ports import AbstractUnitOfWork
from common.store.event_chain import ChainEvent
from tests.support.fake_store import FakeStore

if TYPE_CHECKING:
    from sqlalchemy import Engine

UowFactory = Callable[[], AbstractContextManager[AbstractUnitOfWork]]


class Backend(Protocol):
    """A store the contract runs against."""

    name: str

    def unit_of_work(self) -> AbstractContextManager[AbstractUnitOfWork]:
        """A unit of work on this store."""
        ...

    def new_account(self, account_type: str = "MARGIN") -> str:
        """A fresh account of the test's own; its id."""
        ...

    def event_sequences(self, order_id: str) -> list[tuple[int, str]]:
        """The order's committed events as (sequence, type), in sequence order."""
        ...

    def event_chain(self, order_id: str) -> tuple[bytes | None, list[ChainEvent]]:
        """The order's chain head and its committed events as the chain verifier reads them, in sequence order."""
        ...


class PostgresBackend:
    """The Postgres unit of work on the test session's database (the demo data seeded)."""

    name = "postgres"

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def unit_of_work(self) -> AbstractContextManager[AbstractUnitOfWork]:
        from common.store.uow import UnitOfWork

        return UnitOfWork(self._engine)

    def new_account(self, account_type: str = "MARGIN") -> str:
        from tests.support.api import new_account

        return new_account(self._engine, account_type=account_type)

    def event_sequences(self, order_id: str) -> list[tuple[int, str]]:
        from tests.support.orders import events_of

        return [(event["sequence"], event["type"]) for event in events_of(self._engine, order_id)]

    def event_chain(self, order_id: str) -> tuple[bytes | None, list[ChainEvent]]:
        from sqlalchemy import text

        from common.store.event_chain import chain_rows

        with self._engine.connect() as connection:
            head = connection.execute(
                text("SELECT last_event_hash FROM orders WHERE id = :id"), {"id": order_id}
            ).scalar()
            rows = connection.execute(
                text(
                    "SELECT id, order_id, sequence, type, payload::text AS payload_json, user_id, timestamp, "
                    "correlation_id, message_id, prev_hash, hash FROM order_events WHERE order_id = :id "
                    "ORDER BY sequence"
                ),
                {"id": order_id},
            ).mappings()
            # The rows' keys are the column names: plain str, as chain_rows takes them.
            return (None if head is None else bytes(head)), chain_rows(cast("list[Mapping[str, Any]]", list(rows)))


class FakeBackend:
    """The in-memory fakes, on a store of the test's own (the demo data in it)."""

    name = "fake"

    def __init__(self) -> None:
        self.store = FakeStore.with_demo_data()

    def unit_of_work(self) -> AbstractContextManager[AbstractUnitOfWork]:
        return self.store.unit_of_work()

    def new_account(self, account_type: str = "MARGIN") -> str:
        account_id = f"T-{uuid.uuid4().hex[:12]}"
        self.store.add_account(account_id, account_type=account_type, cash_balance=Decimal("1000000"))
        return account_id

    def event_sequences(self, order_id: str) -> list[tuple[int, str]]:
        return [(event.sequence, event.type) for event in self.store.events_of(order_id)]

    def event_chain(self, order_id: str) -> tuple[bytes | None, list[ChainEvent]]:
        return self.store.heads.get(order_id), [event.as_chain_event() for event in self.store.events_of(order_id)]
