"""The simulated venue's write-ahead journal in Postgres: what it has answered, its working orders, its reports.

A real venue neither forgets its orders nor the ClOrdIDs it has taken when it restarts, and neither does this
one. Each batch the engine applies is written in ONE transaction before any of its reports is published:

- ``venue_sim_requests``: the ``routing key/requestId`` of every request answered, so that a restarted venue
  refuses a request it has answered (kept ``KEEP_DAYS``);
- ``venue_sim_orders``: a snapshot of every order the batch changed (deleted once it is done), from which a
  restarted venue rebuilds its book;
- ``venue_sim_outbox``: the batch's reports, deleted (in the next batch's transaction) once the broker has
  confirmed them, and published again by a restarted venue if it finds any;
- ``venue_sim_state``: the book's order sequence, so broker order ids are not handed out twice.

The tables are the simulator's own, created at start with plain SQL: it is the simulator's state, not the
OMS's schema (no Alembic revision). A venue without a database (tests that give their own instruments) keeps
the answered request ids in memory only and writes nothing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

import psycopg
from sqlalchemy.engine import make_url

from common import jsonutil
from common.domain.enums import OrderType, Side, TimeInForce
from common.store.outbox import OutboxMessage
from services.venue_sim.book import SimOrder

log = logging.getLogger(__name__)
T = TypeVar("T")

KEEP_DAYS = 7
CONNECT_TIMEOUT_SECONDS = 5
_MAX_DELAY_SECONDS = 5.0

_CREATE = (
    """
    CREATE TABLE IF NOT EXISTS venue_sim_requests (
        request_key VARCHAR(200) PRIMARY KEY,
        seen_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS venue_sim_orders (
        order_id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS venue_sim_outbox (
        position BIGSERIAL PRIMARY KEY,
        message_id TEXT NOT NULL,
        exchange TEXT NOT NULL,
        routing_key TEXT NOT NULL,
        type TEXT NOT NULL,
        correlation_id TEXT,
        headers TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS venue_sim_state (
        name TEXT PRIMARY KEY,
        value BIGINT NOT NULL
    )
    """,
)
TABLES = ("venue_sim_requests", "venue_sim_orders", "venue_sim_outbox", "venue_sim_state")
_MISSING = "SELECT count(*) FROM unnest(%s::text[]) AS t(name) WHERE to_regclass(t.name) IS NULL"
_PRUNE = "DELETE FROM venue_sim_requests WHERE seen_at < now() - make_interval(days => %s)"
_LOAD_KEYS = "SELECT request_key FROM venue_sim_requests"
_LOAD_ORDERS = "SELECT state FROM venue_sim_orders"
_LOAD_SEQUENCE = "SELECT value FROM venue_sim_state WHERE name = 'sequence'"
_LOAD_OUTBOX = (
    "SELECT message_id, exchange, routing_key, type, correlation_id, headers, body, created_at "
    "FROM venue_sim_outbox ORDER BY position"
)
_INSERT_KEYS = "INSERT INTO venue_sim_requests (request_key) SELECT unnest(%s::varchar[]) ON CONFLICT DO NOTHING"
_UPSERT_ORDER = (
    "INSERT INTO venue_sim_orders (order_id, state) VALUES (%s, %s) "
    "ON CONFLICT (order_id) DO UPDATE SET state = EXCLUDED.state, updated_at = now()"
)
_DELETE_ORDERS = "DELETE FROM venue_sim_orders WHERE order_id = ANY(%s)"
_INSERT_OUTBOX = (
    "INSERT INTO venue_sim_outbox (message_id, exchange, routing_key, type, correlation_id, headers, body, "
    "created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)
_DELETE_OUTBOX = "DELETE FROM venue_sim_outbox WHERE message_id = ANY(%s)"
_SET_SEQUENCE = (
    "INSERT INTO venue_sim_state (name, value) VALUES ('sequence', %s) "
    "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value"
)

_DECIMALS = ("quantity", "price", "stop_price", "cum_qty", "notional")


def create_tables(connection: psycopg.Connection[tuple[Any, ...]]) -> None:
    """Create the journal's tables where missing (the venue at start, or the owner before it starts)."""
    for create in _CREATE:
        connection.execute(create)


def request_key(routing_key: str, request_id: str) -> str:
    """What identifies a request: its kind (new, cancel, replace) and its requestId."""
    return f"{routing_key}/{request_id}"


def snapshot(order: SimOrder) -> str:
    """Everything needed to rebuild the order (Decimals as text: exact; the heap epoch is rebuilt)."""
    state: dict[str, Any] = {
        "order_id": order.order_id,
        "request_id": order.request_id,
        "broker_order_id": order.broker_order_id,
        "account_id": order.account_id,
        "symbol": order.symbol,
        "side": order.side.value,
        "type": order.type.value,
        "time_in_force": order.time_in_force.value,
        "sequence": order.sequence,
        "triggered": order.triggered,
        "done": order.done,
    }
    for name in _DECIMALS:
        value = getattr(order, name)
        state[name] = None if value is None else str(value)
    return jsonutil.dumps(state)


def order_from_snapshot(text: str) -> SimOrder:
    """The order a ``snapshot`` describes."""
    state = jsonutil.loads(text)

    def optional(name: str) -> Decimal | None:
        return None if state[name] is None else Decimal(state[name])

    return SimOrder(
        order_id=state["order_id"],
        request_id=state["request_id"],
        broker_order_id=state["broker_order_id"],
        account_id=state["account_id"],
        symbol=state["symbol"],
        side=Side(state["side"]),
        type=OrderType(state["type"]),
        time_in_force=TimeInForce(state["time_in_force"]),
        quantity=Decimal(state["quantity"]),
        price=optional("price"),
        stop_price=optional("stop_price"),
        sequence=int(state["sequence"]),
        cum_qty=Decimal(state["cum_qty"]),
        notional=Decimal(state["notional"]),
        triggered=bool(state["triggered"]),
        done=bool(state["done"]),
    )


@dataclass
class Entry:
    """One batch's journal entry: requests answered, orders changed (None: done, forget it), reports."""

    request_keys: list[str] = field(default_factory=list)
    orders: dict[str, str | None] = field(default_factory=dict)
    sequence: int = 0
    reports: list[OutboxMessage] = field(default_factory=list)


@dataclass
class Restored:
    """What a restarting venue finds in its journal."""

    orders: list[SimOrder] = field(default_factory=list)
    sequence: int = 0
    outbox: list[OutboxMessage] = field(default_factory=list)


class Journal:
    """The venue's durable state; in memory only (request ids) when no database URL is given."""

    def __init__(self, database_url: str | None) -> None:
        self._url = (
            make_url(database_url).set(drivername="postgresql").render_as_string(False) if database_url else None
        )
        self._connection: psycopg.Connection[tuple[Any, ...]] | None = None
        self._seen: set[str] = set()
        self._published: list[str] = []  # outbox rows confirmed by the broker, deleted with the next write
        self._sequence_written = 0

    @property
    def durable(self) -> bool:
        """Whether the venue's state outlives the process."""
        return self._url is not None

    # --- requests seen -----------------------------------------------------------------------------

    def seen(self, key: str) -> bool:
        """Whether the request was answered before (by this process or, when durable, an earlier one)."""
        return key in self._seen

    def remember(self, key: str) -> None:
        """Note a request as answered in memory (so that a copy redelivered to this process is refused at once);
        it reaches the database with its batch's entry."""
        self._seen.add(key)

    # --- database ----------------------------------------------------------------------------------

    def _transact(self, work: Callable[[psycopg.Connection[tuple[Any, ...]]], T]) -> T:
        """Run ``work`` in one transaction (run in a worker thread, one at a time). A kept connection the
        database has dropped meanwhile (a restart) only shows when used: then once more on a new one."""
        assert self._url is not None
        for fresh in (self._connection is None, True):
            if self._connection is None:
                self._connection = psycopg.connect(self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS)
            connection = self._connection
            try:
                with connection.transaction():
                    return work(connection)
            except psycopg.OperationalError:
                self._drop_connection()
                if fresh:
                    raise
        raise AssertionError("unreachable: the second attempt is on a fresh connection")

    def _drop_connection(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except psycopg.Error:
                pass  # already broken: that is why it is dropped
            self._connection = None

    def close(self) -> None:
        """Close the database connection (the journal reconnects if used again)."""
        self._drop_connection()

    @staticmethod
    def _load(connection: psycopg.Connection[tuple[Any, ...]]) -> tuple[set[str], Restored]:
        # Created only when missing: under the workers' role the venue may use its tables but not create any
        # (the owner made them: tools/infra/postgres.py), and even CREATE ... IF NOT EXISTS asks for that right.
        missing = connection.execute(_MISSING, (list(TABLES),)).fetchone()
        if missing and missing[0]:
            create_tables(connection)
        connection.execute(_PRUNE, (KEEP_DAYS,))
        keys = {str(row[0]) for row in connection.execute(_LOAD_KEYS)}
        orders = [order_from_snapshot(str(row[0])) for row in connection.execute(_LOAD_ORDERS)]
        row = connection.execute(_LOAD_SEQUENCE).fetchone()
        outbox = [
            OutboxMessage(
                message_id=r[0],
                exchange=r[1],
                routing_key=r[2],
                type=r[3],
                correlation_id=r[4],
                headers=jsonutil.loads(r[5]),
                body=r[6],
                created_at=r[7],
            )
            for r in connection.execute(_LOAD_OUTBOX)
        ]
        return keys, Restored(orders, int(row[0]) if row else 0, outbox)

    async def load(self, stopping: asyncio.Event) -> Restored:
        """Create the tables and read the journal back, waiting with back-off while the database is away."""
        if self._url is None:
            return Restored()
        delay = 0.5
        attempt = 0
        while not stopping.is_set():
            attempt += 1
            try:
                keys, restored = await asyncio.to_thread(self._transact, self._load)
            except psycopg.Error as exc:
                self._drop_connection()
                log.warning(
                    "database not reachable; the venue waits for it to load its journal",
                    extra={"attempt": attempt, "delay": delay, "error": repr(exc)},
                )
            else:
                self._seen |= keys
                self._sequence_written = restored.sequence
                log.info(
                    "venue journal loaded",
                    extra={"requests": len(keys), "orders": len(restored.orders), "outbox": len(restored.outbox)},
                )
                return restored
            await _pause(stopping, delay)
            delay = min(delay * 2, _MAX_DELAY_SECONDS)
        return Restored()

    def published(self, message_ids: Iterable[str]) -> None:
        """Note reports the broker confirmed: their outbox rows go with the next write."""
        if self._url is not None:
            self._published.extend(message_ids)

    def _write(self, entry: Entry, published: list[str]) -> None:
        self._transact(functools.partial(self._statements, entry, published))

    def _statements(self, entry: Entry, published: list[str], connection: psycopg.Connection[tuple[Any, ...]]) -> None:
        with connection.cursor() as cursor:
            if entry.request_keys:
                cursor.execute(_INSERT_KEYS, (entry.request_keys,))
            upserts = [(order_id, state) for order_id, state in entry.orders.items() if state is not None]
            if upserts:
                cursor.executemany(_UPSERT_ORDER, upserts)
            done = [order_id for order_id, state in entry.orders.items() if state is None]
            if done:
                cursor.execute(_DELETE_ORDERS, (done,))
            if published:
                cursor.execute(_DELETE_OUTBOX, (published,))
            if entry.reports:
                cursor.executemany(
                    _INSERT_OUTBOX,
                    [
                        (
                            m.message_id,
                            m.exchange,
                            m.routing_key,
                            m.type,
                            m.correlation_id,
                            jsonutil.dumps(dict(m.headers)),
                            m.body.decode() if isinstance(m.body, bytes) else m.body,
                            m.created_at,
                        )
                        for m in entry.reports
                    ],
                )
            if entry.sequence > self._sequence_written:
                cursor.execute(_SET_SEQUENCE, (entry.sequence,))

    async def write(self, entry: Entry, stopping: asyncio.Event) -> bool:
        """Commit the entry (and the deletion of the outbox rows published since the last write) in one
        transaction, retrying with back-off while the database is away; False only if stopped first."""
        if self._url is None:
            return True
        published = self._published
        empty = not (entry.request_keys or entry.orders or entry.reports or published)
        if empty and entry.sequence <= self._sequence_written:
            return True  # an idle tick: nothing to make durable
        delay = 0.1
        attempt = 0
        while True:
            attempt += 1
            try:
                await asyncio.to_thread(self._write, entry, published)
            except Exception as exc:  # the database or a bug: either way the sender must not die, nor report
                self._drop_connection()
                if stopping.is_set():
                    log.error("journal not written at shutdown; the batch is dropped", extra={"error": repr(exc)})
                    return False
                # A venue that cannot persist must not report: the engine waits behind the bounded queue.
                log.warning(
                    "journal not written; the venue reports nothing until it is",
                    extra={"attempt": attempt, "delay": delay, "error": repr(exc)},
                )
            else:
                self._published = []  # the sender is the only writer, and it waits for this
                self._sequence_written = max(self._sequence_written, entry.sequence)
                return True
            await _pause(stopping, delay)
            delay = min(delay * 2, _MAX_DELAY_SECONDS)

    async def forget_published(self) -> None:
        """At a clean stop: delete the outbox rows already published (one try; left, they are only sent again)."""
        if self._url is None or not self._published:
            return
        try:
            await asyncio.to_thread(self._write, Entry(), self._published)
            self._published = []
        except psycopg.Error as exc:
            self._drop_connection()
            log.warning("published reports left in the venue outbox", extra={"error": repr(exc)})


async def _pause(stopping: asyncio.Event, delay: float) -> None:
    """Back-off between attempts, ended early by stop()."""
    try:
        await asyncio.wait_for(stopping.wait(), delay)
    except TimeoutError:
        pass
