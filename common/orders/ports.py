"""The ports of the application: the unit of work and the repositories that the order commands, the stage
handlers and the jobs work through, whatever store is behind them.

Two implementations keep these contracts: Postgres (``common.store``: ``UnitOfWork`` and its repositories)
and the in-memory fakes the unit tests run the handlers on (``tests/support/fake_store.py``); one suite of
contract tests (``tests/contract``) runs against both. This module imports no infrastructure, so a handler
typed with it cannot reach the database around its repositories.

The rules every implementation keeps:

- One unit of work is one transaction. Reads see the transaction's own writes; nothing is visible to another
  unit of work before ``commit``; ``rollback`` forgets what was written and read since the last commit, and
  the unit of work can be used again after either.
- A repository is an identity map: ``orders.get`` hands out the same object for an order all transaction
  long, so the messages of a batch about one order chain their changes.
- ``orders.add``/``save`` record the order's new events (sequences rising by one per order, from 1, each
  hash-chained to the one before it as ``common/store/event_chain.py`` says, the last hash kept as the order's
  chain head) and an ``OrderUpdate`` for subscribers when what they see changes; ``commit`` returns the
  messages the transaction owes the broker, those and every ``outbox.add``, in the order they were added.
- ``after_commit`` actions run once the transaction commits (never if it rolls back).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, Protocol, TypeVar

from common.domain import BookedExecution, ExecutionReportData, FillDelta, Order
from common.orders.records import (
    Account,
    BookedTrade,
    Confirmation,
    Instrument,
    Position,
    PositionKey,
    SettlementInstrument,
    StoredReport,
    VenueRequest,
)


class OutgoingMessage(Protocol):
    """A message owed to the broker once its transaction commits, its body serialised."""

    @property
    def message_id(self) -> str: ...
    @property
    def exchange(self) -> str: ...
    @property
    def routing_key(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def correlation_id(self) -> str | None: ...
    @property
    def body(self) -> str | bytes: ...
    @property
    def headers(self) -> Mapping[str, Any]: ...


class AbstractOutbox(Protocol):
    """The messages a transaction decides to send: published only after it commits."""

    def add(
        self,
        exchange: str,
        routing_key: str,
        type: str,
        body: Mapping[str, Any],
        correlation_id: str | None,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> OutgoingMessage:
        """Queue a message for publication after commit; returns it (with its message id)."""
        ...


class AbstractOrderRepository(Protocol):
    """The order aggregates of one transaction."""

    def lock(self, order_ids: Iterable[str]) -> None:
        """Lock and load these orders (in id order, so overlapping writers queue instead of deadlocking)."""
        ...

    def get(self, order_id: str, for_update: bool = False) -> Order | None:
        """The order (locked when asked), None if there is none; the same object all transaction long."""
        ...

    def prefetch_client_orders(self, keys: Iterable[tuple[str, str]]) -> None:
        """Look up many idempotency keys (account id, client order id) at once."""
        ...

    def find_by_client_order_id(self, account_id: str, client_order_id: str) -> Order | None:
        """The order an idempotency key already made, if any."""
        ...

    def creation_terms(self, order_id: str) -> Mapping[str, Any] | None:
        """The terms the order was created with (its ``ORDER_CREATED`` event payload), whatever changed since."""
        ...

    def add(
        self,
        order: Order,
        *,
        correlation_id: str | None,
        message_id: str | None,
        user_id: str | None = None,
    ) -> None:
        """Book a new order with its events, and announce it to order-update subscribers."""
        ...

    def save(
        self,
        order: Order,
        *,
        correlation_id: str | None,
        message_id: str | None,
        user_id: str | None = None,
        latest_execution: Mapping[str, Any] | None = None,
    ) -> None:
        """Record the changes of an order of this transaction, with its new events and update message."""
        ...


class AbstractExecutionReportRepository(Protocol):
    """Venue execution reports, one per ``execution_id``, with what each booked."""

    def prefetch(self, execution_ids: Iterable[str]) -> None:
        """Find at once which of these execution ids were recorded before."""
        ...

    def known(self, execution_id: str) -> StoredReport | None:
        """The report recorded before under this id (in this transaction or earlier), if any."""
        ...

    def record(
        self,
        report: ExecutionReportData,
        *,
        booked: FillDelta | None,
        unreported_delta: Decimal,
        received_at: datetime,
    ) -> str:
        """Record a report not recorded before (see ``known``); returns its row id."""
        ...

    def booked(self, order_id: str, execution_id: str) -> BookedExecution | None:
        """What this order's execution booked (a bust reverses it); None if the order has no such execution."""
        ...

    def mark_busted(self, order_id: str, execution_id: str) -> None:
        """Flag a busted execution of this order (its bust has been applied)."""
        ...


class AbstractReferenceData(Protocol):
    """Accounts and instruments, each read once per transaction."""

    def prefetch(self, account_ids: Iterable[str], symbols: Iterable[str]) -> None:
        """Read the accounts and instruments not read yet, at once."""
        ...

    def account(self, account_id: str) -> Account | None:
        """The account, or None if unknown."""
        ...

    def instrument(self, symbol: str) -> Instrument | None:
        """The instrument, or None if unknown."""
        ...


class AbstractRequestRepository(Protocol):
    """The requests sent (or to be sent) to the venue, with their statuses (``common.orders.records``)."""

    def prefetch(self, request_ids: Iterable[str]) -> None:
        """Find at once the order and status of these requests (not locked): all ``answer`` needs."""
        ...

    def lock(self, request_ids: Iterable[str]) -> None:
        """Read and lock these requests (in id order)."""
        ...

    def get(self, request_id: str) -> VenueRequest | None:
        """The request, locked, as this transaction sees it (None if there is none)."""
        ...

    def latest(self, order_id: str, kind: str) -> VenueRequest | None:
        """The order's request of this kind written last (not locked), None if it has none."""
        ...

    def record(
        self,
        *,
        request_id: str,
        order_id: str,
        kind: str,
        terms: Mapping[str, Any],
        status: str,
        reason: str | None,
        created_by: str | None,
        now: datetime,
    ) -> None:
        """Add a request."""
        ...

    def set_status(self, request_id: str, status: str, now: datetime, reason: str | None = None) -> None:
        """Move a request to ``status`` (keeping its reason unless a new one is given), whatever its status."""
        ...

    def answer(self, order_id: str, request_id: str, status: str, reason: str | None, now: datetime) -> bool:
        """Move this order's request to ``status`` (a venue's answer); False if unknown or already final."""
        ...


class AbstractSettlementRepository(Protocol):
    """Settlement's positions, trade confirmations and settlement instructions."""

    def load_instruments(self, symbols: Iterable[str]) -> None:
        """Read these instruments at once (an unknown one is remembered as None)."""
        ...

    def lock_positions(self, keys: Iterable[PositionKey], now: datetime) -> None:
        """Lock these (account_id, symbol) positions, creating flat ones first, in sorted order."""
        ...

    def load_confirmations(self, execution_ids: Iterable[str]) -> None:
        """Read the confirmations (and reversals) of these executions at once."""
        ...

    def instrument(self, symbol: str) -> SettlementInstrument | None:
        """The instrument, or None if unknown."""
        ...

    def position(self, account_id: str, symbol: str) -> Position:
        """The locked position as this transaction has it (locked now if it was not)."""
        ...

    def confirmation(self, execution_id: str, reversal: bool) -> Confirmation | None:
        """The confirmation of an execution (or of its reversal), booked before or in this transaction."""
        ...

    def stamp(self) -> datetime:
        """Now, strictly later than the previous stamp of this transaction (confirmations replay in stamp order)."""
        ...

    def add(self, confirmation: Mapping[str, Any], instruction: Mapping[str, Any]) -> None:
        """Book a confirmation (not booked before: see ``confirmation``) and its settlement instruction."""
        ...

    def set_position(self, account_id: str, symbol: str, position: Position, now: datetime) -> None:
        """Change a locked position."""
        ...

    def standing_trades(self, account_id: str, symbol: str) -> list[BookedTrade]:
        """The account's confirmed trades in the symbol that no reversal undid, in booking order."""
        ...


class BufferedRepository(Protocol):
    """A repository of one transaction that may buffer its writes: written at ``flush`` (before the commit),
    forgotten at ``reset`` (after a commit or a rollback). The unit of work calls both; handlers never do."""

    def flush(self) -> None:
        """Write what is buffered."""
        ...

    def reset(self) -> None:
        """Forget what was read and buffered."""
        ...


RepositoryT = TypeVar("RepositoryT", bound=BufferedRepository)


@dataclass(frozen=True, eq=False)
class RepositorySlot(Generic[RepositoryT]):
    """Names a repository of a stage's own (the risk gate's reads) in every unit of work, typed by its port.

    ``build`` makes the store's implementation from the store's own unit of work (the Postgres unit of work
    passes itself); a fake unit of work is given its own implementation for the slot instead. Compared by
    identity: a slot is defined once, beside the code that uses it.
    """

    name: str
    build: Callable[[Any], RepositoryT] = field(repr=False)


class AbstractUnitOfWork(Protocol):
    """One transaction and the repositories that share it (see the module docstring for the rules)."""

    @property
    def orders(self) -> AbstractOrderRepository: ...
    @property
    def executions(self) -> AbstractExecutionReportRepository: ...
    @property
    def reference(self) -> AbstractReferenceData: ...
    @property
    def outbox(self) -> AbstractOutbox: ...
    @property
    def requests(self) -> AbstractRequestRepository: ...
    @property
    def settlement(self) -> AbstractSettlementRepository: ...

    def repository(self, slot: RepositorySlot[RepositoryT]) -> RepositoryT:
        """The transaction's one instance of a stage's own repository (built on first use)."""
        ...

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` once this transaction commits (never if it rolls back)."""
        ...

    def commit(self) -> Sequence[OutgoingMessage]:
        """Write what is buffered and commit; returns the messages now owed to the broker."""
        ...

    def rollback(self) -> None:
        """Undo everything since the last commit."""
        ...
