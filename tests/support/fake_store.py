"""The ports of ``common/orders/ports.py`` in memory: a ``FakeStore`` (what is committed) and ``FakeUnitOfWork``s on
it, for the fast unit tests of the order commands and the stage handlers.

They keep the contracts the Postgres implementations keep (``tests/contract`` runs one suite against both):
an identity map per transaction, event sequences rising by one per order and hash-chained (``heads`` keeps each
order's chain head, as ``orders.last_event_hash`` does), writes buffered and visible to other
units of work only once committed, rollback forgetting them, the messages owed to the broker returned by
``commit``, ``after_commit`` actions run after a commit only. What cannot happen in one thread is checked at
commit instead of waited for: a unit of work that saves an order another one has changed since it loaded it
fails (``ConcurrentWrite``), where Postgres would have made it wait for the row lock and read the new version;
a second row under a unique key (a client order id, an execution id, a confirmation) fails
(``UniqueViolation``), as the constraint would.

A stage's own repository (``uow.repository(slot)``) comes from a factory given to the store (``provide``):
``tests/support/fake_risk.py`` provides the risk gate's.
"""

from __future__ import annotations

import contextvars
import dataclasses
import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import TracebackType
from typing import Any, cast

from common import jsonutil
from common.domain import (
    BookedExecution,
    ExecType,
    ExecutionReportData,
    FillDelta,
    Order,
    OrderEventType,
)
from common.ids import new_id
from common.messages.bodies import order_update_body, order_update_routing_key
from common.messages.catalogue import ORDER_UPDATE
from common.messages.partitions import base_key
from common.orders.order_updates import PublicView, announces, public_view
from common.orders.ports import BufferedRepository, RepositorySlot, RepositoryT
from common.orders.records import (
    FINAL_REQUEST_STATUSES,
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
from common.store.event_chain import GENESIS, ChainEvent, row_hash

_ZERO = Decimal(0)
_TICK = timedelta(microseconds=1)


class UniqueViolation(Exception):
    """A second row under a unique key: what the Postgres constraint would refuse at flush."""


class ConcurrentWrite(Exception):
    """An order saved by a unit of work that loaded it before another one committed a change to it."""


def _json_copy(value: Mapping[str, Any]) -> dict[str, Any]:
    """What a JSONB column gives back: the same values through the Decimal-exact JSON (enums become strings)."""
    copied: dict[str, Any] = jsonutil.loads(jsonutil.dumps(value))
    return copied


def _snapshot(order: Order) -> Order:
    """A copy of the order as a row stores it: its fields, no pending events."""
    return dataclasses.replace(order, events=[])


# --------------------------------------------------------------------------- what is committed


@dataclass(frozen=True)
class StoredEvent:
    """An ``order_events`` row; ``prev_hash`` and ``hash`` chain it as the Postgres writer does (set at flush)."""

    order_id: str
    sequence: int
    type: str
    payload: Mapping[str, Any]
    user_id: str | None
    timestamp: datetime
    correlation_id: str | None
    message_id: str | None
    id: str = field(default_factory=new_id)
    prev_hash: bytes = b""
    hash: bytes = b""

    def chain_row(self) -> dict[str, Any]:
        """The row as ``event_chain.row_hash`` takes it."""
        return {
            "id": self.id,
            "order_id": self.order_id,
            "sequence": self.sequence,
            "type": self.type,
            "payload": self.payload,
            "user_id": self.user_id,
            "timestamp": self.timestamp,
            "correlation_id": self.correlation_id,
            "message_id": self.message_id,
        }

    def as_chain_event(self) -> ChainEvent:
        """The row as ``./oms audit verify`` reads it back."""
        return ChainEvent(
            id=self.id,
            order_id=self.order_id,
            sequence=self.sequence,
            type=self.type,
            payload_json=jsonutil.dumps_bytes(self.payload),
            user_id=self.user_id,
            timestamp=self.timestamp,
            correlation_id=self.correlation_id,
            message_id=self.message_id,
            prev_hash=self.prev_hash,
            hash=self.hash,
        )


@dataclass(frozen=True)
class FakeMessage:
    """An outbox row; ``payload`` is the body as it was given, ``body`` the JSON the broker would carry."""

    message_id: str
    exchange: str
    routing_key: str
    type: str
    correlation_id: str | None
    body: str
    payload: Mapping[str, Any]
    headers: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredExecution:
    """An ``execution_reports`` row: what the report said and what it booked."""

    id: str
    execution_id: str
    report: StoredReport
    quantity: Decimal
    price: Decimal
    fees: Decimal
    unreported_delta: Decimal
    received_at: datetime
    busted: bool = False


@dataclass(frozen=True)
class StoredRequest:
    """An ``order_requests`` row."""

    request: VenueRequest
    created_at: datetime
    updated_at: datetime
    written: int  # the order rows were written in (created_at can tie)


class FakeStore:
    """What the fake units of work have committed, and the reference data they read."""

    def __init__(self) -> None:
        self.orders: dict[str, Order] = {}
        self.events: list[StoredEvent] = []
        self.heads: dict[str, bytes] = {}  # orders.last_event_hash: the hash of each order's last event
        self.outbox: list[FakeMessage] = []
        self.executions: dict[str, StoredExecution] = {}
        self.requests: dict[str, StoredRequest] = {}
        self.accounts: dict[str, Account] = {}
        self.instruments: dict[str, Instrument] = {}
        self.positions: dict[PositionKey, Position] = {}
        self.confirmations: list[dict[str, Any]] = []
        self.instructions: list[dict[str, Any]] = []
        self.commits = 0
        self._writes = itertools.count(1)
        self._slots: dict[RepositorySlot[Any], Callable[[FakeUnitOfWork], BufferedRepository]] = {}

    @classmethod
    def with_demo_data(cls) -> FakeStore:
        """A store with the demo accounts and instruments (``oms seed``), as the integration tests have."""
        from tools.seed import DEMO_ACCOUNTS, DEMO_INSTRUMENTS

        store = cls()
        for account_row in DEMO_ACCOUNTS:
            account: dict[str, Any] = dict(account_row)
            store.add_account(account["id"], account_type=account["account_type"], cash_balance=account["cash_balance"])
        for instrument_row in DEMO_INSTRUMENTS:
            instrument: dict[str, Any] = {
                "tradable": True,
                "settlement_days": None,
                "session_open": None,
                "session_close": None,
                "session_timezone": None,
                **instrument_row,
            }
            store.instruments[instrument["symbol"]] = Instrument(**instrument)
        return store

    def add_account(
        self,
        account_id: str,
        *,
        account_type: str = "MARGIN",
        cash_balance: Decimal = Decimal("1000000"),
        active: bool = True,
    ) -> Account:
        """Add (or replace) an account."""
        account = Account(account_id, account_id, account_type, "USD", cash_balance, active)
        self.accounts[account_id] = account
        return account

    def provide(self, slot: RepositorySlot[RepositoryT], factory: Callable[[FakeUnitOfWork], RepositoryT]) -> None:
        """Make ``factory`` build the implementation of ``slot`` for each unit of work on this store."""
        self._slots[slot] = factory

    def slot_factory(self, slot: RepositorySlot[Any]) -> Callable[[FakeUnitOfWork], BufferedRepository]:
        """The factory given for ``slot``."""
        factory = self._slots.get(slot)
        if factory is None:
            raise LookupError(f"no in-memory {slot.name} repository: FakeStore.provide one for this slot")
        return factory

    def unit_of_work(self) -> FakeUnitOfWork:
        """A unit of work on this store (a context manager, like the Postgres one)."""
        return FakeUnitOfWork(self)

    def next_write(self) -> int:
        """A rising number per row written (orders rows written in the same microsecond)."""
        return next(self._writes)

    # --- reading back, for the tests

    def order(self, order_id: str) -> Order:
        """A copy of the committed order (there must be one)."""
        return _snapshot(self.orders[order_id])

    def events_of(self, order_id: str) -> list[StoredEvent]:
        """The order's committed events, in sequence order."""
        return sorted((e for e in self.events if e.order_id == order_id), key=lambda e: e.sequence)

    def event_types(self, order_id: str) -> list[str]:
        """The types of the order's committed events, in sequence order."""
        return [e.type for e in self.events_of(order_id)]

    def messages(self, routing_key: str | None = None) -> list[FakeMessage]:
        """The committed outbox messages (of one routing key when given, whatever its partition), in the order they
        were added."""
        return [m for m in self.outbox if routing_key is None or base_key(m.routing_key) == routing_key]

    def requests_of(self, order_id: str) -> list[VenueRequest]:
        """The order's committed venue requests, oldest first."""
        rows = sorted((r for r in self.requests.values() if r.request.order_id == order_id), key=lambda r: r.written)
        return [r.request for r in rows]

    def last_sequence(self, order_id: str) -> int:
        """The order's last committed event sequence (0: none)."""
        return max((e.sequence for e in self.events if e.order_id == order_id), default=0)


# --------------------------------------------------------------------------- the repositories


class FakeOutbox:
    """``AbstractOutbox``: messages collected until the transaction commits."""

    def __init__(self) -> None:
        self._pending: list[FakeMessage] = []

    def add(
        self,
        exchange: str,
        routing_key: str,
        type: str,
        body: Mapping[str, Any],
        correlation_id: str | None,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> FakeMessage:
        """Queue a message for publication after commit; returns it."""
        message = FakeMessage(
            message_id=message_id or new_id(),
            exchange=exchange,
            routing_key=routing_key,
            type=type,
            correlation_id=correlation_id,
            body=jsonutil.dumps(body),  # fails as the real outbox would on a body JSON cannot carry
            payload=dict(body),
            headers=dict(headers or {}),
        )
        self._pending.append(message)
        return message

    def take(self) -> list[FakeMessage]:
        """What was queued, now written (the commit)."""
        taken, self._pending = self._pending, []
        return taken

    def discard(self) -> None:
        """Forget what was queued (a rollback)."""
        self._pending = []


class FakeOrderRepository:
    """``AbstractOrderRepository`` in memory."""

    def __init__(self, store: FakeStore, outbox: FakeOutbox) -> None:
        self._store = store
        self._outbox = outbox
        self.reset()

    def reset(self) -> None:
        """Forget what this transaction read and buffered."""
        self._orders: dict[str, Order] = {}
        self._loaded_at: dict[str, int] = {}  # order id -> its last committed sequence when loaded
        self._by_client_key: dict[tuple[str, str], str | None] = {}
        self._new: dict[str, Order] = {}
        self._dirty: dict[str, Order] = {}
        self._events: list[StoredEvent] = []
        self._sequence: dict[str, int] = {}
        self._seen: dict[str, PublicView] = {}
        self._creation_terms: dict[str, dict[str, Any]] = {}

    def _remember(self, order: Order, last_sequence: int) -> Order:
        self._orders[order.id] = order
        if order.client_order_id is not None:
            self._by_client_key[(order.account_id, order.client_order_id)] = order.id
        self._sequence[order.id] = last_sequence
        self._seen[order.id] = public_view(order)
        return order

    def _load(self, order_id: str) -> Order | None:
        stored = self._store.orders.get(order_id)
        if stored is None:
            return None
        last = self._store.last_sequence(order_id)
        self._loaded_at[order_id] = last
        return self._remember(_snapshot(stored), last)

    def visible(self) -> list[Order]:
        """Every order as this transaction sees it: the committed ones, with its own loaded and new ones on top."""
        return [self._orders.get(i, stored) for i, stored in self._store.orders.items()] + list(self._new.values())

    def lock(self, order_ids: Iterable[str]) -> None:
        """Load the orders not loaded yet (one thread: nothing to wait for)."""
        for order_id in sorted(set(order_ids)):
            if order_id not in self._orders:
                self._load(order_id)

    def get(self, order_id: str, for_update: bool = False) -> Order | None:
        """The order; the same object for every call in this transaction."""
        cached = self._orders.get(order_id)
        return cached if cached is not None else self._load(order_id)

    def prefetch_client_orders(self, keys: Iterable[tuple[str, str]]) -> None:
        """Look the idempotency keys up among the committed orders."""
        wanted = {k for k in keys if k not in self._by_client_key}
        for stored in self._store.orders.values():
            key = (stored.account_id, stored.client_order_id or "")
            if stored.client_order_id is not None and key in wanted and stored.id not in self._orders:
                self._load(stored.id)
        for key in wanted:
            self._by_client_key.setdefault(key, None)

    def find_by_client_order_id(self, account_id: str, client_order_id: str) -> Order | None:
        """The order an idempotency key already made, if any."""
        self.prefetch_client_orders([(account_id, client_order_id)])
        order_id = self._by_client_key.get((account_id, client_order_id))
        return None if order_id is None else self._orders[order_id]

    def creation_terms(self, order_id: str) -> Mapping[str, Any] | None:
        """The payload of the order's ``ORDER_CREATED`` event."""
        cached = self._creation_terms.get(order_id)
        if cached is not None:
            return cached
        created = [e for e in self._store.events_of(order_id) if e.type == OrderEventType.ORDER_CREATED.value]
        if not created:
            return None
        self._creation_terms[order_id] = dict(created[0].payload)
        return self._creation_terms[order_id]

    def add(
        self,
        order: Order,
        *,
        correlation_id: str | None,
        message_id: str | None,
        user_id: str | None = None,
    ) -> None:
        """Book a new order with its events, and announce it."""
        self._new[order.id] = order
        self._sequence[order.id] = 0
        self._write_events(order, correlation_id, message_id, user_id)
        self._announce(order, None)
        self._remember(order, self._sequence[order.id])

    def save(
        self,
        order: Order,
        *,
        correlation_id: str | None,
        message_id: str | None,
        user_id: str | None = None,
        latest_execution: Mapping[str, Any] | None = None,
    ) -> None:
        """Record the changes of an order, with its new events and (when subscribers see a change) an update."""
        if not order.events:
            return
        if order.id not in self._new:
            self._dirty[order.id] = order
        self._write_events(order, correlation_id, message_id, user_id)
        before = self._seen.get(order.id)
        after = public_view(order)
        if announces(before, after, latest_execution):
            self._announce(order, latest_execution)
        self._seen[order.id] = after

    def _write_events(
        self, order: Order, correlation_id: str | None, message_id: str | None, user_id: str | None
    ) -> None:
        sequence = self._sequence.get(order.id, 0)
        for event in order.pull_events():
            sequence += 1
            payload = _json_copy(event.payload)
            if event.type is OrderEventType.ORDER_CREATED:
                self._creation_terms[order.id] = payload
            self._events.append(
                StoredEvent(
                    order_id=order.id,
                    sequence=sequence,
                    type=event.type.value,
                    payload=payload,
                    user_id=event.user_id or user_id,
                    timestamp=event.timestamp,
                    correlation_id=correlation_id or order.id,
                    message_id=message_id,
                )
            )
        self._sequence[order.id] = sequence

    def _announce(self, order: Order, latest_execution: Mapping[str, Any] | None) -> None:
        ORDER_UPDATE.send(
            self._outbox,
            order_update_body(order, latest_execution),
            order.id,
            routing_key=order_update_routing_key(order),
        )

    def check(self) -> None:
        """Refuse what Postgres would: a new order under a client order id taken, an order changed meanwhile."""
        for order in self._new.values():
            if order.id in self._store.orders:
                raise UniqueViolation(f"order {order.id} exists")
            if order.client_order_id is not None:
                key = (order.account_id, order.client_order_id)
                if any((o.account_id, o.client_order_id) == key for o in self._store.orders.values()):
                    raise UniqueViolation(f"client order id {key} is taken (uq_orders_client_order_id)")
        for order_id in self._dirty:
            if self._store.last_sequence(order_id) != self._loaded_at.get(order_id, 0):
                raise ConcurrentWrite(f"order {order_id} changed since this unit of work loaded it")

    def flush(self) -> None:
        """Write the buffered orders and events into the store."""
        for order in itertools.chain(self._new.values(), self._dirty.values()):
            self._store.orders[order.id] = _snapshot(order)
        heads = self._store.heads
        for event in self._events:
            previous = heads.get(event.order_id, GENESIS)
            digest = row_hash(previous, event.chain_row())
            self._store.events.append(dataclasses.replace(event, prev_hash=previous, hash=digest))
            heads[event.order_id] = digest
        self._new.clear()
        self._dirty.clear()
        self._events = []


class FakeExecutionReportRepository:
    """``AbstractExecutionReportRepository`` in memory."""

    def __init__(self, store: FakeStore) -> None:
        self._store = store
        self.reset()

    def reset(self) -> None:
        """Forget what this transaction buffered."""
        self._pending: dict[str, StoredExecution] = {}
        self._busted: set[tuple[str, str]] = set()

    def _row(self, execution_id: str) -> StoredExecution | None:
        return self._pending.get(execution_id) or self._store.executions.get(execution_id)

    def prefetch(self, execution_ids: Iterable[str]) -> None:
        """Nothing to fetch: the store is at hand."""

    def known(self, execution_id: str) -> StoredReport | None:
        """The report recorded before under this id, if any."""
        row = self._row(execution_id)
        return None if row is None else row.report

    def record(
        self,
        report: ExecutionReportData,
        *,
        booked: FillDelta | None,
        unreported_delta: Decimal,
        received_at: datetime,
    ) -> str:
        """Record a report not recorded before; returns its row id."""
        if self._row(report.execution_id) is not None:
            raise UniqueViolation(f"execution {report.execution_id} is recorded (uq execution_id)")
        row_id = new_id()
        self._pending[report.execution_id] = StoredExecution(
            id=row_id,
            execution_id=report.execution_id,
            report=StoredReport.of(report),
            quantity=booked.quantity if booked else _ZERO,
            price=booked.price if booked else (report.last_px or _ZERO),
            fees=booked.fees if booked else _ZERO,
            unreported_delta=unreported_delta,
            received_at=received_at,
        )
        return row_id

    def booked(self, order_id: str, execution_id: str) -> BookedExecution | None:
        """What this order's execution booked; None if it has no such one."""
        row = self._row(execution_id)
        if row is None or row.report.order_id != order_id or row.report.exec_type == ExecType.TRADE_CANCEL.value:
            return None
        busted = row.busted or (order_id, execution_id) in self._busted
        return BookedExecution(execution_id, row.quantity, row.price, row.fees, busted=busted)

    def mark_busted(self, order_id: str, execution_id: str) -> None:
        """Flag a busted execution of this order."""
        self._busted.add((order_id, execution_id))

    def flush(self) -> None:
        """Write the buffered reports and flags into the store."""
        self._store.executions.update(self._pending)
        for order_id, execution_id in self._busted:
            row = self._store.executions.get(execution_id)
            if row is not None and row.report.order_id == order_id:
                self._store.executions[execution_id] = dataclasses.replace(row, busted=True)
        self.reset()


class FakeReferenceData:
    """``AbstractReferenceData`` on the store's accounts and instruments."""

    def __init__(self, store: FakeStore) -> None:
        self._store = store

    def prefetch(self, account_ids: Iterable[str], symbols: Iterable[str]) -> None:
        """Nothing to fetch: the store is at hand."""

    def account(self, account_id: str) -> Account | None:
        """The account, or None if unknown."""
        return self._store.accounts.get(account_id)

    def instrument(self, symbol: str) -> Instrument | None:
        """The instrument, or None if unknown."""
        return self._store.instruments.get(symbol)

    def flush(self) -> None:
        """Read only."""

    def reset(self) -> None:
        """Nothing kept."""


class FakeRequestRepository:
    """``AbstractRequestRepository`` in memory."""

    def __init__(self, store: FakeStore) -> None:
        self._store = store
        self.reset()

    def reset(self) -> None:
        """Forget what this transaction read and buffered."""
        self._rows: dict[str, StoredRequest] = {}  # as this transaction sees them
        self._changed: set[str] = set()

    def _row(self, request_id: str) -> StoredRequest | None:
        return self._rows.get(request_id) or self._store.requests.get(request_id)

    def prefetch(self, request_ids: Iterable[str]) -> None:
        """Nothing to fetch: the store is at hand."""

    def lock(self, request_ids: Iterable[str]) -> None:
        """Nothing to wait for in one thread."""

    def get(self, request_id: str) -> VenueRequest | None:
        """The request as this transaction sees it."""
        row = self._row(request_id)
        return None if row is None else row.request

    def latest(self, order_id: str, kind: str) -> VenueRequest | None:
        """The order's request of this kind written last."""
        rows = {**self._store.requests, **self._rows}.values()
        mine = [r for r in rows if r.request.order_id == order_id and r.request.kind == kind]
        return max(mine, key=lambda r: (r.created_at, r.written)).request if mine else None

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
        if self._row(request_id) is not None:
            raise UniqueViolation(f"request {request_id} exists")
        request = VenueRequest(request_id, order_id, kind, _json_copy(terms), status, reason, created_by)
        self._rows[request_id] = StoredRequest(request, now, now, self._store.next_write())
        self._changed.add(request_id)

    def set_status(self, request_id: str, status: str, now: datetime, reason: str | None = None) -> None:
        """Move a request to ``status`` (keeping its reason unless a new one is given)."""
        row = self._row(request_id)
        if row is None:
            return  # the UPDATE would match no row
        request = dataclasses.replace(
            row.request, status=status, reason=row.request.reason if reason is None else reason
        )
        self._rows[request_id] = dataclasses.replace(row, request=request, updated_at=now)
        self._changed.add(request_id)

    def answer(self, order_id: str, request_id: str, status: str, reason: str | None, now: datetime) -> bool:
        """Move this order's request to ``status``; False if unknown or already final."""
        row = self._row(request_id)
        if row is None or row.request.order_id != order_id or row.request.status in FINAL_REQUEST_STATUSES:
            return False
        self.set_status(request_id, status, now, reason)
        return True

    def flush(self) -> None:
        """Write the new and moved requests into the store."""
        for request_id in self._changed:
            self._store.requests[request_id] = self._rows[request_id]
        self.reset()


class FakeSettlementRepository:
    """``AbstractSettlementRepository`` in memory."""

    def __init__(self, store: FakeStore) -> None:
        self._store = store
        self.reset()

    def reset(self) -> None:
        """Forget what this transaction locked and buffered."""
        self._positions: dict[PositionKey, Position] = {}
        self._dirty: set[PositionKey] = set()
        self._confirmations: list[dict[str, Any]] = []
        self._instructions: list[dict[str, Any]] = []
        self._last_stamp: datetime | None = None

    def _all_confirmations(self) -> list[Mapping[str, Any]]:
        return [*self._store.confirmations, *self._confirmations]

    def load_instruments(self, symbols: Iterable[str]) -> None:
        """Nothing to fetch: the store is at hand."""

    def lock_positions(self, keys: Iterable[PositionKey], now: datetime) -> None:
        """Take these positions (flat when there is none) into the transaction."""
        for key in sorted(set(keys) - self._positions.keys()):
            self._positions[key] = self._store.positions.get(key, Position())

    def load_confirmations(self, execution_ids: Iterable[str]) -> None:
        """Nothing to fetch: the store is at hand."""

    def instrument(self, symbol: str) -> SettlementInstrument | None:
        """The instrument, or None if unknown."""
        found = self._store.instruments.get(symbol)
        if found is None:
            return None
        return SettlementInstrument(found.symbol, found.asset_class, found.currency, found.settlement_days)

    def position(self, account_id: str, symbol: str) -> Position:
        """The position as this transaction has it."""
        key = (account_id, symbol)
        if key not in self._positions:
            self.lock_positions([key], datetime.now(UTC))
        return self._positions[key]

    def confirmation(self, execution_id: str, reversal: bool) -> Confirmation | None:
        """The confirmation of an execution (or of its reversal), booked before or in this transaction."""
        for row in self._all_confirmations():
            if row["execution_id"] == execution_id and row["reversal"] == reversal:
                return Confirmation.of(row)
        return None

    def stamp(self) -> datetime:
        """Now, strictly later than the previous stamp of this transaction."""
        now = datetime.now(UTC)
        if self._last_stamp is not None and now <= self._last_stamp:
            now = self._last_stamp + _TICK
        self._last_stamp = now
        return now

    def add(self, confirmation: Mapping[str, Any], instruction: Mapping[str, Any]) -> None:
        """Buffer a confirmation and its instruction."""
        if self.confirmation(confirmation["execution_id"], confirmation["reversal"]) is not None:
            raise UniqueViolation(f"execution {confirmation['execution_id']} is confirmed (execution_id, reversal)")
        self._confirmations.append(dict(confirmation))
        self._instructions.append(dict(instruction))

    def set_position(self, account_id: str, symbol: str, position: Position, now: datetime) -> None:
        """Change a position this transaction holds."""
        key = (account_id, symbol)
        if key not in self._positions:
            raise RuntimeError(f"position {key} changed without its lock")
        self._positions[key] = position
        self._dirty.add(key)

    def standing_trades(self, account_id: str, symbol: str) -> list[BookedTrade]:
        """The account's confirmed trades in the symbol that no reversal undid, in booking order."""
        rows = self._all_confirmations()
        reversed_ids = {r["execution_id"] for r in rows if r["reversal"]}
        standing = [
            r
            for r in rows
            if r["account_id"] == account_id
            and r["symbol"] == symbol
            and not r["reversal"]
            and r["execution_id"] not in reversed_ids
        ]
        standing.sort(key=lambda r: (r["created_at"], r["id"]))
        return [BookedTrade(r["execution_id"], r["side"], r["quantity"], r["price"]) for r in standing]

    def flush(self) -> None:
        """Write the confirmations, instructions and positions (those locked are created flat) into the store."""
        self._store.confirmations.extend(self._confirmations)
        self._store.instructions.extend(self._instructions)
        for key, position in self._positions.items():
            if key in self._dirty or key not in self._store.positions:
                self._store.positions[key] = position
        self.reset()


# --------------------------------------------------------------------------- the unit of work


class FakeUnitOfWork:
    """``AbstractUnitOfWork`` on a ``FakeStore``: ``with store.unit_of_work() as uow: ...; uow.commit()``."""

    def __init__(self, store: FakeStore) -> None:
        self.store = store
        self.outbox = FakeOutbox()
        self.orders = FakeOrderRepository(store, self.outbox)
        self.executions = FakeExecutionReportRepository(store)
        self.reference = FakeReferenceData(store)
        self.requests = FakeRequestRepository(store)
        self.settlement = FakeSettlementRepository(store)
        self.committed: list[FakeMessage] = []
        self._after_commit: list[tuple[contextvars.Context, Callable[[], None]]] = []
        self._repositories: dict[RepositorySlot[Any], BufferedRepository] = {}

    def __enter__(self) -> FakeUnitOfWork:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.rollback()

    def repository(self, slot: RepositorySlot[RepositoryT]) -> RepositoryT:
        """The transaction's one instance of a stage's own repository (built by the store's factory for the slot)."""
        found = self._repositories.get(slot)
        if found is None:
            found = self._repositories[slot] = self.store.slot_factory(slot)(self)
        return cast(RepositoryT, found)

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` once this transaction commits (never if it rolls back)."""
        self._after_commit.append((contextvars.copy_context(), action))

    def _shared(self) -> tuple[BufferedRepository, ...]:
        return (self.orders, self.executions, self.requests, self.settlement, *self._repositories.values())

    def commit(self) -> list[FakeMessage]:
        """Write what is buffered into the store; returns the messages now owed to the broker."""
        self.orders.check()
        for repository in self._shared():
            repository.flush()
        self.committed = self.outbox.take()
        self.store.outbox.extend(self.committed)
        self.store.commits += 1
        self._reset()
        actions, self._after_commit = self._after_commit, []
        for context, action in actions:
            context.run(action)
        return self.committed

    def _reset(self) -> None:
        for repository in self._shared():
            repository.reset()

    def rollback(self) -> None:
        """Forget everything since the last commit."""
        self.outbox.discard()
        self._reset()
        self._after_commit.clear()
