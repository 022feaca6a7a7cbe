"""The simulated venue's I/O: consume OMS requests, run them through the book, publish execution reports.

One engine task owns the book. Requests (from the queue ``venue_sim.orders``) and price ticks go through one
event queue in arrival order; the engine takes what is waiting as a batch and applies each event to the
book. A sender task, behind it, takes every batch the engine has applied meanwhile as one (journaled in one
transaction, published with pipelined confirms), and only then acks their requests (one ack with ``multiple``).
So each order's reports leave in the order they happened, a request is acked only once its answer is safe
with the broker, and a busy venue pays one journal commit and one wait for confirms per round of the sender,
not per batch the engine applied (batches waiting behind the sender would each add a round to the latency).

Durable and exactly-once, as a real broker is (with a database; see ``services.venue_sim.journal``). For each
batch the sender, BEFORE publishing anything, commits in one transaction the batch's answered request ids, a
snapshot of every order the batch changed and the batch's reports (in the venue's outbox); then it publishes
the reports with confirms, then acks the requests; the reports' outbox rows go with the next commit. At start
the venue loads the request ids, rebuilds its working orders from the snapshots and publishes what its outbox
still holds, before it consumes. Like a real venue with ClOrdID it refuses a request whose ``requestId`` it
has answered, without a report (a REJECTED would wrongly end the live order), logging it and counting it in
``oms_venue_duplicate_requests_total``. Where a crash leaves things:

- before the journal commit: nothing of the batch happened. Its requests are unacked, so they are delivered
  again and answered again from the previous snapshot; fills on ticks are redone later, with new execution
  ids but from the same cumulative quantity, so the OMS sees one consistent sequence of reports;
- after the commit, before publishing: the restarted venue publishes the outbox rows, then goes on from the
  snapshot, which already counts them; the requests come back and are refused as seen;
- after publishing, before the outbox rows are deleted: they are published again with the same execution ids
  and terms, and the OMS drops a report it has seen.

Broker and database outages are waited out: the first connect and the loading of the journal retry with
back-off, the robust connection reconnects and consumes again, unconfirmed reports are published again, and
while the journal cannot be written the sender retries it and publishes nothing (a venue that cannot persist
must not report) while the engine waits behind the bounded outbound queue. The price feed is best effort and
not journaled: a restarted venue's prices start again from the reference prices.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection
from marshmallow import ValidationError
from prometheus_client import Counter
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, OperationalError

from common import jsonutil
from common.logging import log_context
from common.messages.bodies import price_body, price_routing_key
from common.messages.catalogue import (
    BROKER_REQUESTS,
    CANCEL_REQUEST,
    EXECUTION_REPORT,
    NEW_ORDER_REQUEST,
    PRICE,
    REPLACE_REQUEST,
    MessageKind,
)
from common.messaging.connection import connect_unless_stopped
from common.messaging.deadletter import dead_letter
from common.messaging.envelope import message_id_of
from common.messaging.publisher import Publisher
from common.messaging.topology import VENUE_QUEUE, declare_stage_queue, declare_topology
from common.schema_loading import load
from common.store import tables
from common.store.db import make_engine
from common.store.outbox import OutboxMessage
from services.venue_sim.book import Book, BrokerRequest, Report
from services.venue_sim.config import VenueConfig
from services.venue_sim.journal import Entry, Journal, request_key, snapshot
from services.venue_sim.prices import DEFAULT_REFERENCE_PRICE, InstrumentSpec, Market

log = logging.getLogger(__name__)

_DB_WAIT_SECONDS = 30.0

DUPLICATE_REQUESTS = Counter(
    "oms_venue_duplicate_requests_total",
    "Requests the simulated venue refused because their requestId was seen before",
    ["routing_key"],
)

# The requests the venue takes, by routing key (the queue is bound to exactly these: common/messaging/topology.py).
REQUEST_KINDS: Mapping[str, MessageKind] = {kind.routing_key: kind for kind in BROKER_REQUESTS}


class _Tick:
    """The event that moves prices and retries working orders."""


class _Stop:
    """The event that ends the engine loop."""


_TICK = _Tick()
_STOP = _Stop()
Event = AbstractIncomingMessage | _Tick | _Stop


@dataclass
class _Batch:
    """What applying a batch of events produced: its journal entry (with the reports to publish), deliveries to
    settle (arrival order)."""

    entry: Entry = field(default_factory=Entry)
    deliveries: list[tuple[AbstractIncomingMessage, Decoded]] = field(default_factory=list)

    @property
    def reports(self) -> list[OutboxMessage]:
        return self.entry.reports

    def absorb(self, later: _Batch) -> None:
        """Append a batch applied after this one: its requests, reports and deliveries follow these, and its
        snapshot of an order (or the order's end) replaces this one's."""
        self.entry.request_keys.extend(later.entry.request_keys)
        self.entry.orders.update(later.entry.orders)
        self.entry.sequence = max(self.entry.sequence, later.entry.sequence)
        self.entry.reports.extend(later.entry.reports)
        self.deliveries.extend(later.deliveries)


@dataclass(frozen=True)
class Decoded:
    """A delivery after validation: the request, or why it is not one."""

    message_id: str
    routing_key: str
    request: BrokerRequest | None = None
    error: str | None = None


def decode(message: AbstractIncomingMessage) -> Decoded:
    """Parse and validate a request against the schema of its routing key."""
    message_id = message_id_of(message)
    routing_key = message.routing_key or ""
    kind = REQUEST_KINDS.get(routing_key)
    schema = None if kind is None else kind.schema
    if schema is None:
        return Decoded(message_id, routing_key, error=f"no schema for routing key {routing_key!r}")
    try:
        raw = jsonutil.loads(message.body)
    except (ValueError, UnicodeDecodeError) as exc:
        return Decoded(message_id, routing_key, error=f"body is not JSON: {exc}")
    if not isinstance(raw, dict):
        return Decoded(message_id, routing_key, error="body is not a JSON object")
    try:
        body = load(schema, raw)
    except ValidationError as exc:
        return Decoded(message_id, routing_key, error="invalid body: " + jsonutil.dumps(exc.messages))
    return Decoded(message_id, routing_key, request=BrokerRequest.from_body(body))


def report_message(report: Report) -> OutboxMessage:
    """The AMQP message of a report; message id = execution id, so a copy published again is a duplicate."""
    return OutboxMessage(
        message_id=report.execution_id,
        exchange=EXECUTION_REPORT.exchange,
        routing_key=EXECUTION_REPORT.routing_key,
        type=EXECUTION_REPORT.type,
        correlation_id=report.order_id,
        body=jsonutil.dumps(report.to_body()),
        created_at=report.timestamp,
    )


def load_instruments(database_url: str) -> tuple[InstrumentSpec, ...]:
    """Every instrument's reference price, tick and lot from the database."""
    engine = make_engine(database_url, pool_size=1)
    t = tables.instruments
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(t.c.symbol, t.c.reference_price, t.c.tick_size, t.c.lot_size)).all()
    finally:
        engine.dispose()
    return tuple(
        InstrumentSpec(
            symbol=row.symbol,
            reference_price=row.reference_price if row.reference_price else DEFAULT_REFERENCE_PRICE,
            tick_size=row.tick_size,
            lot_size=row.lot_size,
        )
        for row in rows
    )


async def _instruments_with_retry(database_url: str) -> tuple[InstrumentSpec, ...]:
    """Wait a while for the database (it may still be starting); then go on with default prices."""
    deadline = time.monotonic() + _DB_WAIT_SECONDS
    delay = 0.5
    while True:
        try:
            return await asyncio.to_thread(load_instruments, database_url)
        except OperationalError as exc:
            if time.monotonic() >= deadline:
                log.error(
                    "instruments not loaded; every symbol starts at the default price",
                    extra={"error": repr(exc), "default_price": str(DEFAULT_REFERENCE_PRICE)},
                )
                return ()
            log.warning("database not reachable; retrying", extra={"error": repr(exc), "delay": delay})
            await asyncio.sleep(delay)  # back-off while the database starts
            delay = min(delay * 2, 5.0)
        except DBAPIError as exc:  # reachable but unusable (not migrated): waiting will not help
            log.error(
                "instruments not loaded; every symbol starts at the default price",
                extra={"error": repr(exc), "default_price": str(DEFAULT_REFERENCE_PRICE)},
            )
            return ()


async def declare_venue_topology(channel: AbstractChannel, config: VenueConfig) -> AbstractQueue:
    """The exchanges (market data's among them), the pipeline's queues unless told not to, the venue's queue and
    its dead-letter queue (all idempotent)."""
    if config.declare_pipeline:
        await declare_topology(channel, config.delivery_limit)
    return await declare_stage_queue(channel, VENUE_QUEUE, config.delivery_limit, declare=config.declare_queue)


class VenueSim:
    """The running venue: ``await run()`` until ``stop()``."""

    def __init__(self, config: VenueConfig) -> None:
        self.config = config
        self.ready = asyncio.Event()
        self.market: Market | None = None
        self.book: Book | None = None
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        # Every batch applied during a round of the sender goes out in its next round (it takes them all as one);
        # the bound holds the engine back only while the journal or the confirms are stuck.
        self._outbound: asyncio.Queue[_Batch | None] = asyncio.Queue(maxsize=32)
        self._delayed: asyncio.Queue[tuple[float, AbstractIncomingMessage]] = asyncio.Queue()
        self._stopping = asyncio.Event()
        self._tick_pending = False
        self._journal = Journal(config.database_url if config.journaled else None)
        self._publisher: Publisher | None = None
        self._feed: Publisher | None = None
        self._feed_task: asyncio.Task[None] | None = None

    def stop(self) -> None:
        """Finish the batch at hand and return from ``run``."""
        if not self._stopping.is_set():
            self._stopping.set()
            self._events.put_nowait(_STOP)

    async def run(self) -> None:
        """Load instruments, declare the topology, consume and match until stopped."""
        config = self.config
        instruments = config.instruments
        if instruments is None:
            instruments = await _instruments_with_retry(config.database_url)
        self.market = Market(instruments, config.venue.seed, config.venue.volatility, config.venue.mean_reversion)
        self.book = Book(self.market, config.rules)
        restored = await self._journal.load(self._stopping)
        self.book.restore(restored.orders, restored.sequence)
        connection = await self._connect()
        if connection is None:
            self._journal.close()
            return  # stopped while waiting for the broker
        background: list[asyncio.Task[None]] = []
        try:
            # Reports and the price feed on channels of their own: a busy feed never delays a report.
            self._publisher = Publisher(connection)
            self._feed = Publisher(connection)
            # Before anything new: reports journaled but maybe never published (their rows go with the next
            # commit). Unconfirmed only when stopping: they stay in the outbox for the next start.
            if restored.outbox and await self._publish_reports(restored.outbox):
                self._journal.published(m.message_id for m in restored.outbox)
                log.info("venue outbox published again", extra={"count": len(restored.outbox)})
            channel = await connection.channel()
            queue = await declare_venue_topology(channel, config)
            await channel.set_qos(prefetch_count=config.venue.prefetch)
            if config.venue.latency_ms > 0:
                background.append(asyncio.create_task(self._delay_line()))
            background.append(asyncio.create_task(self._tick_loop()))
            tag = await queue.consume(self._on_message)
            log.info(
                "venue consuming",
                extra={"queue": queue.name, "instruments": len(instruments), "seed": config.venue.seed},
            )
            self.ready.set()
            try:
                await self._engine()
            finally:
                with contextlib.suppress(Exception):
                    await queue.cancel(tag)
        finally:
            for task in background:
                task.cancel()
            if self._feed_task is not None:
                self._feed_task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await connection.close()
            self._journal.close()
            log.info("venue stopped")

    async def _connect(self) -> AbstractRobustConnection | None:
        """Connect, waiting for the broker with back-off; None if stopped first."""
        return await connect_unless_stopped(
            self.config.amqp_urls or self.config.amqp_url, "oms.venue_sim", self._stopping
        )

    # --- intake ------------------------------------------------------------------------------------

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self.config.venue.latency_ms > 0:
            self._delayed.put_nowait((time.monotonic() + self.config.venue.latency_ms / 1000, message))
        else:
            self._events.put_nowait(message)

    async def _delay_line(self) -> None:
        """Hold each request for the configured latency, keeping arrival order (due times only grow)."""
        while True:
            due, message = await self._delayed.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # the simulated venue latency
            self._events.put_nowait(message)

    async def _tick_loop(self) -> None:
        interval = self.config.venue.tick_ms / 1000
        next_at = time.monotonic()
        while True:
            next_at += interval
            await asyncio.sleep(max(next_at - time.monotonic(), 0))  # the price clock
            if not self._tick_pending:  # a slow engine skips ticks rather than piling them up
                self._tick_pending = True
                self._events.put_nowait(_TICK)

    # --- engine ------------------------------------------------------------------------------------

    async def _engine(self) -> None:
        """Apply events to the book in arrival order; the sender publishes and acks behind it."""
        sender = asyncio.create_task(self._sender())
        try:
            while True:
                events = [await self._events.get()]
                while len(events) < self.config.venue.prefetch + 1:
                    try:
                        events.append(self._events.get_nowait())
                    except asyncio.QueueEmpty:
                        break
                stop = any(isinstance(e, _Stop) for e in events)
                # Bounded: when confirms lag, the engine waits rather than running ahead of what is acked.
                await self._outbound.put(self._apply(events))
                if stop:
                    return
        finally:
            await self._outbound.put(None)
            await sender

    def _apply(self, events: list[Event]) -> _Batch:
        """Run a batch of events through the book (no awaits: the book is never seen half-changed)."""
        assert self.book is not None and self.market is not None
        now = datetime.now(UTC)
        batch = _Batch()
        ticked = False
        for event in events:
            if isinstance(event, _Tick):
                self._tick_pending = False
                self.market.step()
                traded = self.book.on_tick(now)
                for report in traded:
                    _log_report(report)
                batch.reports.extend(report_message(r) for r in traded)
                ticked = True
            elif not isinstance(event, _Stop):
                decoded = decode(event)
                if decoded.request is not None:
                    try:
                        batch.reports.extend(self._answer(event, decoded, decoded.request, now, batch.entry))
                    except Exception as exc:  # a bug, not the broker: retrying the same request cannot help
                        log.exception("request failed", extra={"message_id": decoded.message_id})
                        decoded = Decoded(decoded.message_id, decoded.routing_key, error=f"venue failed: {exc!r}")
                batch.deliveries.append((event, decoded))
        if ticked:
            self._publish_prices(now)
        # The state after the whole batch: what its reports lead to (the engine runs ahead of the sender, so
        # this is taken now, not when the entry is written). A finished order is no longer needed.
        changed = self.book.take_changed()
        if self._journal.durable:
            for order in changed:
                batch.entry.orders[order.order_id] = None if order.done else snapshot(order)
        batch.entry.sequence = self.book.sequence
        return batch

    async def _taken(self) -> _Batch | None:
        """The next batch with every one queued behind it absorbed; None once the engine has stopped (after
        what it queued before stopping)."""
        batch = await self._outbound.get()
        if batch is None:
            return None
        while not self._outbound.empty():
            later = self._outbound.get_nowait()
            if later is None:
                self._outbound.put_nowait(None)  # the engine put nothing after it: room for it, and seen next
                break
            batch.absorb(later)
        return batch

    async def _sender(self) -> None:
        """Journal what the engine applied, publish its reports with confirms, dead-letter its bad requests,
        then ack it."""
        dropped = False
        while (batch := await self._taken()) is not None:
            if dropped:
                continue  # a batch journaled after one that was not would skip that one's changes
            # Before publishing: a venue that cannot persist must not report (retried until it can, or stop).
            if not await self._journal.write(batch.entry, self._stopping):
                dropped = True  # stopping with the database away: these requests come back to the next venue
                continue
            if not await self._publish_reports(batch.reports):
                # Stopping with reports unconfirmed: the journal has them for the next start, which refuses
                # the requests (unacked, they come back) as seen.
                dropped = True
                continue
            self._journal.published(m.message_id for m in batch.reports)
            last_ok: AbstractIncomingMessage | None = None
            for message, decoded in batch.deliveries:
                if decoded.error is None or await self._dead_letter(message, decoded):
                    last_ok = message
            if last_ok is not None:
                # Deliveries are applied in arrival order and everything before this batch is settled,
                # so one ack with multiple=True settles the batch (a requeued one was nacked already).
                await _settle(functools.partial(last_ok.ack, multiple=True))
        # A clean stop leaves no published report in the outbox to be published again at the next start.
        await self._journal.forget_published()

    def _answer(
        self, message: AbstractIncomingMessage, decoded: Decoded, request: BrokerRequest, now: datetime, entry: Entry
    ) -> list[OutboxMessage]:
        assert self.book is not None
        key = request_key(decoded.routing_key, request.request_id)
        with log_context(
            order_id=request.order_id, message_id=decoded.message_id, correlation_id=message.correlation_id
        ):
            if self._journal.seen(key):
                # Its answer went out the first time; a second answer would be a second order at the venue.
                log.warning(
                    "duplicate request refused",
                    extra={"request_id": request.request_id, "routing_key": decoded.routing_key},
                )
                DUPLICATE_REQUESTS.labels(decoded.routing_key).inc()
                return []
            self._journal.remember(key)
            entry.request_keys.append(key)  # journaled with this batch's reports, not before
            handle: Callable[[BrokerRequest, datetime], list[Report]] = {
                NEW_ORDER_REQUEST.routing_key: self.book.new_order,
                CANCEL_REQUEST.routing_key: self.book.cancel,
                REPLACE_REQUEST.routing_key: self.book.replace,
            }[decoded.routing_key]
            reports = handle(request, now)
            if not reports:
                log.warning("new order for an order id the venue already has; ignored")
            for report in reports:
                if report.reason:
                    log.info(
                        "request refused",
                        extra={"exec_type": report.exec_type.value, "reason": report.reason},
                    )
                else:
                    _log_report(report)
        return [report_message(r) for r in reports]

    async def _publish_reports(self, messages: list[OutboxMessage]) -> bool:
        """Publish with confirms; what is not confirmed is published again until it is (or we stop)."""
        assert self._publisher is not None
        delay = 0.1
        while True:
            try:
                confirmed = set(await self._publisher.publish(messages))
            except Exception as exc:  # no channel while the robust connection reconnects
                log.warning("publish failed", extra={"error": repr(exc)})
                confirmed = set()
            messages = [m for m in messages if m.message_id not in confirmed]
            if not messages:
                return True
            if self._stopping.is_set():
                log.error(
                    "reports not confirmed at shutdown; their requests stay unacked",
                    extra={"count": len(messages)},
                )
                return False
            log.warning("reports not confirmed; publishing again", extra={"count": len(messages), "delay": delay})
            await asyncio.sleep(delay)  # back-off while the broker refuses
            delay = min(delay * 2, 5.0)

    async def _dead_letter(self, message: AbstractIncomingMessage, decoded: Decoded) -> bool:
        """Copy a bad request to the dead-letter queue; False if that failed and the request was requeued."""
        assert self._publisher is not None and decoded.error is not None
        with log_context(message_id=decoded.message_id, correlation_id=message.correlation_id):
            log.warning(
                "bad request dead-lettered",
                extra={"reason": decoded.error, "routing_key": decoded.routing_key},
            )
            try:
                await dead_letter(self._publisher, VENUE_QUEUE, message, decoded.message_id, decoded.error)
            except Exception as exc:
                # Requeued: the broker's delivery limit dead-letters it if this keeps failing.
                log.error("dead-lettering failed; the request is requeued", extra={"error": repr(exc)})
                await _settle(functools.partial(message.nack, requeue=True))
                return False
        return True

    def _publish_prices(self, now: datetime) -> None:
        """Send the tick's prices without waiting; skipped while the previous tick's are in flight."""
        if not self.config.publish_prices or self._feed is None or self.market is None:
            return
        if self._feed_task is not None and not self._feed_task.done():
            return
        self._feed_task = asyncio.create_task(self._send_prices(self.market.prices(), now))

    async def _send_prices(self, prices: dict[str, Decimal], now: datetime) -> None:
        assert self._feed is not None
        messages = [
            OutboxMessage(
                message_id=f"price-{symbol}-{now.isoformat()}",
                exchange=PRICE.exchange,
                routing_key=price_routing_key(symbol),
                type=PRICE.type,
                correlation_id=None,
                body=jsonutil.dumps(price_body(symbol, price, now)),
                created_at=now,
            )
            for symbol, price in prices.items()
        ]
        try:
            await self._feed.publish(messages, timeout=5.0)
        except Exception as exc:  # the feed is best effort; the next tick sends fresh prices
            log.warning("price feed publish failed", extra={"error": repr(exc)})


def _log_report(report: Report) -> None:
    """One INFO line per report the venue makes, so an order can be followed through the venue's log."""
    log.info(
        "venue report",
        extra={
            "order_id": report.order_id,
            "correlation_id": report.order_id,
            "execution_id": report.execution_id,
            "exec_type": report.exec_type.value,
            "last_qty": str(report.last_qty),
            "cum_qty": str(report.cum_qty),
        },
    )


async def _settle(action: Callable[[], Awaitable[None]]) -> None:
    """Ack or nack; if the channel closed meanwhile, the broker redelivers and the copy is answered again."""
    try:
        await action()
    except Exception as exc:
        log.warning("ack or nack failed; the broker will redeliver", extra={"error": repr(exc)})
