"""The stage runtime: consume a batch, handle it in one transaction with inbox and outbox, publish, ack.

One delivery's life: decode and validate (a bad body is dead-lettered with the reason and acked); claim the
inbox row (a message already applied is acked and skipped); lock the batch's orders in id order; run the
stage's handler; commit; publish the batch's outbox rows with pipelined confirms; mark them sent; ack.
A batch that raises is rolled back and handled one message at a time, so a bad message never fails its
neighbours; one that keeps failing alone is nacked and the broker's delivery limit dead-letters it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import ChannelInvalidStateError
from marshmallow import ValidationError
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from common import jsonutil
from common.contracts import text_problem
from common.logging import log_context
from common.messages.catalogue import MessageKind
from common.messages.headers import USER_HEADER
from common.messages.partitions import base_key
from common.messaging.batch import Record, is_carrier, pack, record_count, unpack
from common.messaging.connection import connect_unless_stopped
from common.messaging.deadletter import dead_letter
from common.messaging.envelope import Envelope, body_digest, message_id_of
from common.messaging.publisher import Publisher
from common.messaging.topology import (
    STAGE_QUEUES,
    StageQueue,
    declare_stage_queue,
    declare_topology,
    replica_queues,
)
from common.metrics import STAGE_BATCH_SIZE, STAGE_HANDLING_SECONDS, STAGE_MESSAGES
from common.orders.ports import AbstractUnitOfWork
from common.schema_loading import load
from common.settings import Settings
from common.store.inbox import claim_inbox, record_failure
from common.store.outbox import OutboxMessage, mark_sent
from common.store.replicas import claim_replica_index
from common.store.uow import UnitOfWork

log = logging.getLogger(__name__)

# Test hook for the fault suite: a stage named here (``OMS_TEST_CRASH_AFTER_COMMIT=router``) kills itself with
# os._exit(137) right after committing a batch that wrote outbox rows, before publishing or marking them sent:
# the crash the outbox relay and the consumers' inboxes must absorb. With ``router:/some/file`` it crashes only
# while that file exists (and removes it first), so a supervised stage crashes once when a test asks, not at
# every restart. Never set outside tests; a test hook, hence read here from the environment and not a setting.
CRASH_AFTER_COMMIT_ENV = "OMS_TEST_CRASH_AFTER_COMMIT"
# How long marking published rows sent is retried while the database is away before giving up on it: the
# relay publishes unsent rows again after the grace period, and the consumers' inboxes make that harmless.
MARK_SENT_GIVE_UP_SECONDS = 60.0
# How often published rows are marked sent, all those of the interval in one statement. A mark is a transaction
# of its own (about 1.4 ms of CPU, client and server, at a steady rate): every second rather than every 200 ms
# took 6% off an order's CPU at 10 orders/s (docs/design.md, Session 12). A row left unmarked by a crash is only
# published again after the relay's grace period (10 s), and the consumers' inboxes skip the copy.
MARK_SENT_INTERVAL_SECONDS = 1.0
# Under ``OMS_STAGE_PLAN_CACHE_MODE=adaptive``, the largest batch whose transaction uses generic plans. A generic
# plan of a look-up by an array of keys is costed for about ten keys (Postgres's guess for an array parameter):
# right for the batches of a steady flow, where planning each statement again cost Postgres more than running
# it; a burst's batches of hundreds get plans made for their arrays, the planning spread over all their orders.
GENERIC_PLANS_UP_TO = 32

# Typed with the port: a handler runs on Postgres here, and on the in-memory fakes in the unit tests.
Handler = Callable[[AbstractUnitOfWork, Envelope], None]
# Work done once per batch, in its transaction, after the orders are locked and before the handler runs.
Prepare = Callable[[AbstractUnitOfWork, list[Envelope]], None]
# Work done once per batch before its transaction opens, holding no lock: a call to a service outside the process
# whose answer the handlers then use (the risk gate's Risk Analysis Service), so its latency never stretches a
# transaction. It runs in the thread (and context) that runs the transaction right after it. It must not raise,
# but for the database being away (the batch is then retried, the hook with it).
BeforeTransaction = Callable[[Engine, list[Envelope]], None]


class Companion(Protocol):
    """A long-running task a stage process runs beside its consumer (the risk gate's reference price feed)."""

    async def run(self) -> None:
        """Run until ``stop``."""

    def stop(self) -> None:
        """Make ``run`` return soon."""


CompanionFactory = Callable[[Settings, Engine], Companion]


class DeadLetter(Exception):
    """Raised by a handler when retrying cannot help (an unknown order): the message is dead-lettered at once."""


@dataclass(frozen=True)
class StageSpec:
    """What makes a stage: the kinds of message it consumes, each with its handler (``handle_<kind>``).

    The queue is the stage's own (``STAGE_QUEUES``, bound to the keys of exactly these kinds: checked here), each
    delivery is validated with its kind's schema and handed to its kind's handler. ``prepare`` (optional) is
    called once per batch transaction with the envelopes about to be handled, after their orders are locked:
    batch-wide locks and queries. ``companions`` are built when the worker starts and run beside its consumer,
    best effort: one that fails is restarted with back-off while the stage goes on. ``before_transaction``
    (optional) is called once per batch before its transaction opens (see ``BeforeTransaction``).
    """

    stage: str
    handlers: Mapping[MessageKind, Handler]
    order_id_of: Callable[[Envelope], str | None] = field(default=lambda env: env.body.get("order_id"))
    queue_override: StageQueue | None = None  # tests and tools; stages use their entry in STAGE_QUEUES
    prepare: Prepare | None = None
    companions: tuple[CompanionFactory, ...] = ()
    before_transaction: BeforeTransaction | None = None

    def __post_init__(self) -> None:
        keys = sorted(kind.routing_key for kind in self.handlers)
        own = STAGE_QUEUES.get(self.stage) if self.queue_override is None else None
        if own is not None and keys != sorted(own.routing_keys):
            raise ValueError(f"stage {self.stage} handles {keys}, its queue takes {own.routing_keys}")
        if any(kind.schema is None for kind in self.handlers):
            raise ValueError(f"stage {self.stage} consumes a kind without a schema")

    @property
    def queue(self) -> StageQueue:
        """The queue this stage consumes."""
        return self.queue_override or STAGE_QUEUES[self.stage]

    @cached_property
    def kinds(self) -> dict[str, MessageKind]:
        """The kinds this stage consumes, by routing key."""
        return {kind.routing_key: kind for kind in self.handlers}

    def kind_for(self, routing_key: str) -> MessageKind | None:
        """The kind of a delivery with ``routing_key`` (a hand-over's key may carry its partition); None when the
        stage takes no such key."""
        kind = self.kinds.get(routing_key)
        if kind is None:
            kind = self.kinds.get(base_key(routing_key))
            if kind is not None and not kind.internal:
                return None  # only the OMS's own hand-overs carry a partition
        return kind

    def handle(self, uow: AbstractUnitOfWork, env: Envelope) -> None:
        """Run the handler of the envelope's kind (``DeadLetter`` for a key the stage does not take)."""
        kind = self.kinds.get(env.routing_key)
        if kind is None:
            raise DeadLetter(f"stage {self.stage} does not handle routing key {env.routing_key!r}")
        self.handlers[kind](uow, env)


@dataclass
class _Delivery:
    """One message to handle: a plain delivery, or one record of a carrier (which then shares ``message``)."""

    message: AbstractIncomingMessage
    message_id: str
    envelope: Envelope | None = None
    error: str | None = None
    record: Record | None = None


class _Source(Protocol):
    """What decoding reads of a message: a delivery's properties, or a record's."""

    @property
    def message_id(self) -> Any: ...
    @property
    def correlation_id(self) -> Any: ...
    @property
    def headers(self) -> Any: ...
    @property
    def routing_key(self) -> Any: ...
    @property
    def body(self) -> bytes: ...
    @property
    def type(self) -> Any: ...
    @property
    def redelivered(self) -> Any: ...


@dataclass
class _Outcome:
    published: list[OutboxMessage] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # message_id -> error (retry via the broker)
    dead: dict[str, str] = field(default_factory=dict)  # message_id -> reason (dead-letter now)
    # (message_id, digest) -> reason: a different message reusing an id already applied (dead-letter now). By
    # digest, not id: the message the id was first used for may be in the same batch and is handled.
    conflicts: dict[tuple[str, str | None], str] = field(default_factory=dict)


# What the database can store of a delivery's properties (inbox.message_id, order_events.correlation_id and
# user_id are VARCHAR(100)): anything else fails every transaction it is in, so it is refused as the body is.
_MAX_PROPERTY_LENGTH = 100


def _property_problem(name: str, value: object) -> str | None:
    if value is None:
        return None
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    if len(text) > _MAX_PROPERTY_LENGTH:
        return f"{name} is longer than {_MAX_PROPERTY_LENGTH} characters"
    problem = text_problem(text)
    return None if problem is None else f"{name}: {problem}"


def _decode(spec: StageSpec, message: _Source, delivery: _Delivery) -> None:
    for name, value in (
        ("message_id", message.message_id),
        ("correlation_id", message.correlation_id),
        (f"header {USER_HEADER}", (message.headers or {}).get(USER_HEADER)),
    ):
        problem = _property_problem(name, value)
        if problem is not None:
            delivery.error = f"invalid properties: {problem}"
            return
    kind = spec.kind_for(message.routing_key or "")
    schema = None if kind is None else kind.schema
    if kind is None or schema is None:
        delivery.error = f"no schema for routing key {message.routing_key!r}"
        return
    body = message.body
    if len(body) > jsonutil.MAX_BODY_BYTES:
        delivery.error = f"body too large: {len(body)} bytes (limit {jsonutil.MAX_BODY_BYTES})"
        return
    try:
        raw = jsonutil.loads(body)
    except jsonutil.JSONLimitError as exc:
        delivery.error = f"body refused: {exc}"
        return
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of too many digits
        delivery.error = f"body is not JSON: {exc}"
        return
    if not isinstance(raw, dict):
        delivery.error = "body is not a JSON object"
        return
    try:
        loaded = load(schema, raw)
    except ValidationError as exc:
        delivery.error = "invalid body: " + jsonutil.dumps(exc.messages)
        return
    delivery.envelope = Envelope(
        message_id=delivery.message_id,
        routing_key=kind.routing_key,  # without its partition: handlers see the kind's key
        body=loaded,
        correlation_id=message.correlation_id,
        type=message.type,
        headers=dict(message.headers or {}),
        redelivered=bool(message.redelivered),
        digest=body_digest(body),
    )


def decode(spec: StageSpec, message: AbstractIncomingMessage) -> _Delivery:
    """Parse and validate a delivery against the schema of its routing key.

    Total: any delivery whatsoever gives either an envelope or an error (the reason it is dead-lettered with),
    never an exception, because an exception here fails the whole batch and the worker with it.
    """
    try:
        delivery = _Delivery(message=message, message_id=message_id_of(message))
    except Exception as exc:  # a message id that cannot even be read: name the copy by its body
        delivery = _Delivery(message=message, message_id="sha256:" + body_digest(bytes(message.body or b"")))
        delivery.error = f"invalid properties: message_id unreadable ({type(exc).__name__})"
        return delivery
    try:
        _decode(spec, message, delivery)
    except Exception as exc:  # the limits above should make this unreachable; a crash must not be the answer
        delivery.envelope = None
        delivery.error = f"body could not be decoded: {type(exc).__name__}: {exc}"[:1000]
    return delivery


def expand(spec: StageSpec, message: AbstractIncomingMessage) -> list[_Delivery]:
    """The deliveries a message holds: itself, or each record of a carrier, decoded (total, as ``decode``)."""
    if not is_carrier(message.type):
        return [decode(spec, message)]
    try:
        records = unpack(bytes(message.body or b""), message.routing_key or "", bool(message.redelivered))
    except Exception as exc:  # a carrier that is not one: dead-lettered whole, with the reason
        delivery = decode(spec, message)
        delivery.envelope = None
        delivery.error = f"invalid batch: {exc}"[:1000]
        return [delivery]
    deliveries = []
    for record in records:
        delivery = _Delivery(message=message, message_id=record.message_id, record=record)
        try:
            _decode(spec, record, delivery)
        except Exception as exc:  # as in decode: never an exception out of here
            delivery.envelope = None
            delivery.error = f"body could not be decoded: {type(exc).__name__}: {exc}"[:1000]
        deliveries.append(delivery)
    return deliveries


def _is_infrastructure_error(exc: BaseException) -> bool:
    # The database went away: retrying later will work, and nacking would burn the delivery limit.
    return isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


def _reused_id_reason(message_id: str) -> str:
    return f"message id {message_id} was already used for a different body"


def _open_channel_of(message: AbstractIncomingMessage) -> object | None:
    """The channel a delivery came on, or None when it has closed (the broker requeued the delivery)."""
    try:
        return message.channel
    except ChannelInvalidStateError:
        return None


class StageWorker:
    """Runs one stage: consumes its queue in batches until stopped."""

    def __init__(self, spec: StageSpec, settings: Settings, engine: Engine) -> None:
        self.spec = spec
        self.settings = settings
        self.engine = engine
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._stopping = asyncio.Event()
        self._connection: AbstractRobustConnection | None = None
        self._publisher: Publisher | None = None
        self._companions: list[Companion] = []
        self._unmarked: list[str] = []
        self._marker: asyncio.Task[None] | None = None
        self._pending_work: set[asyncio.Future[None]] = set()
        self._replica = settings.stage.replica_index or 0  # claimed in ``run`` when not configured
        self._replica_lock: Connection | None = None
        # Read once: the test hook (see CRASH_AFTER_COMMIT_ENV) is decided when the process starts.
        stage, _, trigger = os.environ.get(CRASH_AFTER_COMMIT_ENV, "").partition(":")
        self._crash_after_commit = stage == spec.stage
        self._crash_trigger = trigger or None

    def _crash_now(self) -> bool:
        if self._crash_trigger is None:
            return True
        try:
            os.remove(self._crash_trigger)  # consumed: the restarted process runs normally
        except FileNotFoundError:
            return False
        return True

    # --- database side (runs in a worker thread) ---------------------------------------------------

    def _handle_in_transaction(self, uow: UnitOfWork, envelopes: list[Envelope]) -> dict[tuple[str, str | None], str]:
        """Claim the inbox rows and run the handler on what is new; returns the envelopes reusing an id."""
        digests: dict[str, str | None] = {}
        for env in envelopes:
            digests.setdefault(env.message_id, env.digest)
        fresh, previous = claim_inbox(uow.connection, self.spec.stage, digests)
        conflicts: dict[tuple[str, str | None], str] = {}
        claimed: dict[str, str | None] = {}  # message id -> digest of the copy this batch handles
        todo: list[Envelope] = []
        for env in envelopes:
            mid = env.message_id
            if mid in fresh:
                fresh.discard(mid)  # a duplicate within one batch runs once
                claimed[mid] = env.digest
                todo.append(env)
                continue
            recorded = claimed[mid] if mid in claimed else previous.get(mid)
            if env.digest is not None and recorded is not None and env.digest != recorded:
                conflicts[(mid, env.digest)] = _reused_id_reason(mid)
        uow.orders.lock(oid for oid in (self.spec.order_id_of(e) for e in todo) if oid)
        if todo and self.spec.prepare is not None:
            self.spec.prepare(uow, todo)
        for env in todo:
            with log_context(
                message_id=env.message_id,
                correlation_id=env.correlation_id,
                order_id=self.spec.order_id_of(env),
            ):
                self.spec.handle(uow, env)
        return conflicts

    def process(self, envelopes: list[Envelope]) -> _Outcome:
        """Handle a batch in one transaction; on failure, each message alone. Blocking: call in a thread."""
        outcome = _Outcome()
        if self.spec.before_transaction is not None:
            self.spec.before_transaction(self.engine, envelopes)
        with UnitOfWork(self.engine, claim_outbox=True, plan_cache_mode=self._plan_cache_mode(len(envelopes))) as uow:
            try:
                conflicts = self._handle_in_transaction(uow, envelopes)
                outcome.published = uow.commit()
                outcome.conflicts.update(conflicts)
                return outcome
            except Exception as exc:
                uow.rollback()
                if _is_infrastructure_error(exc):
                    raise
                if len(envelopes) == 1:
                    self._settle_failure(uow, envelopes[0], exc, outcome)
                    return outcome
                log.info("batch failed; handling its messages one by one", extra={"error": repr(exc)})
            for env in envelopes:
                try:
                    conflicts = self._handle_in_transaction(uow, [env])
                    outcome.published.extend(uow.commit())
                    outcome.conflicts.update(conflicts)
                except Exception as exc:
                    uow.rollback()
                    if _is_infrastructure_error(exc):
                        raise
                    self._settle_failure(uow, env, exc, outcome)
        return outcome

    def _plan_cache_mode(self, batch_size: int) -> str | None:
        """Postgres's plan cache mode for a batch's transaction; None: the engine's, as it opened the connection."""
        if self.settings.stage.plan_cache_mode != "adaptive":
            return None
        return "force_generic_plan" if batch_size <= GENERIC_PLANS_UP_TO else "auto"

    def _settle_failure(self, uow: UnitOfWork, env: Envelope, exc: Exception, outcome: _Outcome) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        with log_context(message_id=env.message_id, correlation_id=env.correlation_id):
            if isinstance(exc, DeadLetter):
                log.warning("message dead-lettered", extra={"reason": reason})
                outcome.dead[env.message_id] = reason
                return
            log.exception("handler failed; the broker will redeliver", exc_info=exc)
        outcome.failed[env.message_id] = reason
        record_failure(uow.connection, self.spec.stage, env.message_id, reason)
        uow.commit()

    def _mark_sent(self, message_ids: list[str]) -> None:
        with self.engine.begin() as connection:
            # A mark lost in a crash only makes the relay publish the row again, which the consumers' inboxes
            # absorb: not worth waiting for the WAL flush.
            connection.exec_driver_sql("SET LOCAL synchronous_commit = off")
            mark_sent(connection, message_ids)

    def _mark_sent_soon(self, message_ids: list[str]) -> None:
        """Queue confirmed rows to be marked sent with the others of the next few batches, in one statement
        (a transaction per batch for this alone was a fifth of a stage's round trips at a steady rate)."""
        self._unmarked.extend(message_ids)
        if self._marker is None:  # driven without ``run`` (tests): mark at once
            ids, self._unmarked = self._unmarked, []
            self._background(self._mark_sent_with_retry(ids))

    def _background(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._pending_work.add(task)
        task.add_done_callback(self._pending_work.discard)

    async def _mark_sent_loop(self) -> None:
        """Mark queued rows sent every ``MARK_SENT_INTERVAL_SECONDS`` (well inside the relay's grace period)."""
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), MARK_SENT_INTERVAL_SECONDS)
            if self._unmarked:
                ids, self._unmarked = self._unmarked, []
                await self._mark_sent_with_retry(ids)

    async def _mark_sent_with_retry(self, message_ids: list[str]) -> None:
        """Mark published rows sent; never fails the stage (unmarked rows are only published again later)."""
        delay = 0.2
        give_up_at = time.monotonic() + MARK_SENT_GIVE_UP_SECONDS
        while True:
            try:
                await asyncio.to_thread(self._mark_sent, message_ids)
                return
            except Exception as exc:
                retry = _is_infrastructure_error(exc) and not self._stopping.is_set() and time.monotonic() < give_up_at
                if not retry:
                    log.warning(
                        "published outbox rows not marked sent; the relay publishes them again after the grace "
                        "period and the consumers' inboxes skip the copies",
                        extra={"count": len(message_ids), "error": repr(exc)},
                    )
                    return
                log.error(
                    "database unavailable; retrying to mark rows sent", extra={"error": repr(exc), "delay": delay}
                )
                await asyncio.sleep(delay)  # back-off while the database is down
                delay = min(delay * 2, 5.0)

    # --- broker side -------------------------------------------------------------------------------

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        await self._inbox.put(message)

    async def _next_batch(self) -> list[AbstractIncomingMessage]:
        first = await self._inbox.get()
        batch = [first]
        size = record_count(first.headers)  # records, not deliveries: a carrier holds many
        deadline = time.monotonic() + self.settings.stage.batch_linger_ms / 1000
        while size < self.settings.stage.batch_size:
            try:
                message = self._inbox.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    message = await asyncio.wait_for(self._inbox.get(), remaining)
                except TimeoutError:
                    break
            batch.append(message)
            size += record_count(message.headers)
        return batch

    async def _settle(self, message_id: str, what: str, action: Callable[[], Awaitable[None]]) -> bool:
        """Ack or nack; False when the delivery's channel is gone (a broker restart, a dropped connection).

        Then there is nothing to settle: the broker has requeued the delivery and brings it back, and the
        inbox makes the copy a no-op. Dropping it here is the normal path after an outage, not an error.
        """
        try:
            await action()
            return True
        except Exception as exc:
            log.warning(
                "delivery not settled: its channel is gone; the broker redelivers it",
                extra={"stage": self.spec.stage, "message_id": message_id, "action": what, "error": repr(exc)},
            )
            return False

    async def _copy_to_dead_letters(self, delivery: _Delivery, reason: str) -> bool:
        """Copy to the stage's DLQ; False if the copy was not confirmed (its message is then requeued)."""
        assert self._publisher is not None
        try:
            await dead_letter(
                self._publisher, self.spec.queue, delivery.message, delivery.message_id, reason, delivery.record
            )
            return True
        except Exception as exc:
            log.warning(
                "dead-lettering failed; the message is requeued and comes back",
                extra={"stage": self.spec.stage, "message_id": delivery.message_id, "error": repr(exc)},
            )
            return False

    async def _publish(self, messages: list[OutboxMessage]) -> list[str]:
        """Publish committed outbox rows, internal hops packed in carriers; returns the confirmed rows' ids."""
        assert self._publisher is not None
        carriers = pack(messages)
        try:
            confirmed = set(await self._publisher.publish([c.message for c in carriers]))
        except Exception as exc:  # the committed rows are the durable copies: the relay publishes them
            log.warning("outbox rows not published; the relay will", extra={"error": repr(exc)})
            return []
        return [rid for c in carriers if c.message.message_id in confirmed for rid in c.record_ids]

    def _verdict(self, d: _Delivery, outcome: _Outcome) -> tuple[str, str | None]:
        """What became of one delivery: handled, failed (retry), dead (dead-letter) or invalid, and why."""
        if d.error is not None:
            return "invalid", d.error
        assert d.envelope is not None
        conflict = outcome.conflicts.get((d.message_id, d.envelope.digest))
        if conflict is not None:
            log.warning(
                "message id reused for a different body; dead-lettered",
                extra={"message_id": d.message_id, "reason": conflict, "correlation_id": d.envelope.correlation_id},
            )
            return "dead_lettered", conflict
        if d.message_id in outcome.dead:
            return "dead_lettered", outcome.dead[d.message_id]
        if d.message_id in outcome.failed:
            return "failed", outcome.failed[d.message_id]
        return "handled", None

    async def _run_batch(self, messages: list[AbstractIncomingMessage]) -> None:
        started = time.perf_counter()
        # Deliveries still queued here from a channel that has since closed were requeued by the broker, which
        # delivers them again on the new channel; handling these copies would only be undone.
        live = [m for m in messages if _open_channel_of(m) is not None]
        if len(live) < len(messages):
            log.warning(
                "deliveries from a closed channel dropped; the broker redelivers them",
                extra={"stage": self.spec.stage, "count": len(messages) - len(live)},
            )
        deliveries = [d for m in live for d in expand(self.spec, m)]
        for d in deliveries:
            if d.error is not None:
                log.warning(
                    "bad message dead-lettered",
                    extra={"message_id": d.message_id, "reason": d.error, "routing_key": d.message.routing_key},
                )
        envelopes = [d.envelope for d in deliveries if d.envelope is not None]
        outcome = _Outcome()
        if envelopes:
            processed = await self._process_with_retry(envelopes)
            if processed is None:
                return  # stopping while the database is away: left unacked, the broker redelivers them
            outcome = processed
            if outcome.published and self._crash_after_commit and self._crash_now():
                log.warning("test hook: crashing after commit, before publishing", extra={"stage": self.spec.stage})
                os._exit(137)
            confirmed = await self._publish(outcome.published)
            if confirmed:
                self._mark_sent_soon(confirmed)
        counts = await self._settle_messages(live, deliveries, outcome)
        STAGE_BATCH_SIZE.labels(self.spec.stage).observe(len(deliveries))
        STAGE_HANDLING_SECONDS.labels(self.spec.stage).observe(time.perf_counter() - started)
        self._log_batch(len(deliveries), started, **counts)

    def _last_attempt(self, message: AbstractIncomingMessage) -> bool:
        """Whether a carrier is on the delivery the broker's limit allows last (quorum ``x-delivery-count``)."""
        if not is_carrier(message.type):
            return False  # a plain message is dead-lettered by the broker at the limit, as it is
        count = (message.headers or {}).get("x-delivery-count")
        return isinstance(count, int) and count >= self.settings.stage.delivery_limit

    async def _settle_messages(
        self, live: list[AbstractIncomingMessage], deliveries: list[_Delivery], outcome: _Outcome
    ) -> dict[str, int]:
        """Settle every AMQP message of the batch by what became of its deliveries; returns the counts.

        A message with a delivery to retry is requeued whole (its handled records are in the inbox, so they are
        skipped when it comes back, and its bad ones are dead-lettered then). Otherwise its bad deliveries are
        copied to the DLQ (a copy not confirmed requeues the message) and it is acked.
        """
        verdicts: dict[int, list[tuple[_Delivery, str, str | None]]] = {}
        for d in deliveries:
            verdicts.setdefault(id(d.message), []).append((d, *self._verdict(d, outcome)))
        counts = {"handled": 0, "failed": 0, "dead_lettered": 0, "invalid": 0}
        to_ack: list[tuple[AbstractIncomingMessage, list[tuple[_Delivery, str, str | None]]]] = []
        for message in live:
            items = verdicts.get(id(message), [])
            first_id = items[0][0].message_id if items else str(message.message_id)
            if any(kind == "failed" for _, kind, _ in items) and self._last_attempt(message):
                # A carrier's records fail alone: at its last attempt the ones still failing are dead-lettered
                # one by one, as plain messages with their reason, rather than the broker dead-lettering the
                # whole carrier (whose other records are handled) with no reason at all.
                items = [
                    (d, "dead_lettered", f"failed at every delivery: {reason}")
                    if kind == "failed"
                    else (d, kind, reason)
                    for d, kind, reason in items
                ]
            if any(kind == "failed" for _, kind, _ in items):
                if await self._settle(first_id, "nack", lambda m=message: m.nack(requeue=True)):  # type: ignore[misc]
                    failed = sum(1 for _, kind, _ in items if kind == "failed")
                    STAGE_MESSAGES.labels(self.spec.stage, "failed").inc(failed)
                    counts["failed"] += failed
                continue
            copied = True
            for d, kind, reason in items:
                if kind in ("invalid", "dead_lettered") and reason is not None:
                    copied = await self._copy_to_dead_letters(d, reason)
                    if not copied:
                        break
            if not copied:
                # Settled now, or a later multiple ack on this channel would take it without a copy in the DLQ.
                await self._settle(first_id, "nack", lambda m=message: m.nack(requeue=True))  # type: ignore[misc]
                continue
            to_ack.append((message, items))
        # One frame per channel: every delivery before the highest tag acked here on a channel is settled
        # (earlier batches entirely, this one above), so a multiple ack takes exactly these. After a reconnect a
        # batch can hold deliveries of two channels, whose tags are unrelated.
        by_channel: dict[int, list[tuple[AbstractIncomingMessage, list[tuple[_Delivery, str, str | None]]]]] = {}
        for entry in to_ack:
            by_channel.setdefault(id(_open_channel_of(entry[0])), []).append(entry)
        for group in by_channel.values():
            last = max(group, key=lambda e: e[0].delivery_tag or 0)[0]
            if not await self._settle(str(last.message_id), "ack", lambda m=last: m.ack(multiple=True)):  # type: ignore[misc]
                continue
            for _, items in group:
                for _, kind, _ in items:
                    counts[kind] += 1
        for kind in ("handled", "dead_lettered", "invalid"):
            if counts[kind]:
                STAGE_MESSAGES.labels(self.spec.stage, kind).inc(counts[kind])
        return counts

    def _log_batch(
        self, size: int, started: float, *, handled: int = 0, failed: int = 0, dead_lettered: int = 0, invalid: int = 0
    ) -> None:
        """One line per batch: what the stage did with it and how long it took. INFO when something in it went
        wrong (failed, dead-lettered, invalid), DEBUG otherwise: at a steady rate a batch is one message, and a
        line per message is a measurable share of its CPU."""
        level = logging.INFO if failed or dead_lettered or invalid else logging.DEBUG
        if not log.isEnabledFor(level):
            return
        log.log(
            level,
            "batch done",
            extra={
                "stage": self.spec.stage,
                "size": size,
                "handled": handled,
                "failed": failed,
                "dead_lettered": dead_lettered,
                "invalid": invalid,
                "ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )

    async def _process_with_retry(self, envelopes: list[Envelope]) -> _Outcome | None:
        """The batch's outcome, retried with back-off while the database is away; None if stopped meanwhile."""
        delay = 0.2
        while True:
            try:
                return await asyncio.to_thread(self.process, envelopes)
            except Exception as exc:
                if not _is_infrastructure_error(exc):
                    raise
                if self._stopping.is_set():
                    return None
                # Down, restarting, or a deadlock or serialization failure: the same batch again will do.
                log.error("database error; retrying the batch", extra={"error": repr(exc), "delay": delay})
                with contextlib.suppress(TimeoutError):
                    # back-off while the database is down, ended early by stop()
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, 5.0)

    async def _keep_running(self, companion: Companion) -> None:
        delay = 1.0
        while not self._stopping.is_set():
            try:
                await companion.run()
                return
            except Exception as exc:
                log.error(
                    "stage companion failed; restarting",
                    extra={"stage": self.spec.stage, "companion": type(companion).__name__, "error": repr(exc)},
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)  # back-off, ended early by stop()
                delay = min(delay * 2, 30.0)

    async def run(self) -> None:
        """Consume (and run the stage's companions) until ``stop`` is called (or SIGTERM/SIGINT)."""
        # Built first: a companion that cannot be configured stops the process before it consumes anything.
        self._companions = [factory(self.settings, self.engine) for factory in self.spec.companions]
        companion_tasks = [asyncio.create_task(self._keep_running(c)) for c in self._companions]
        self._marker = asyncio.create_task(self._mark_sent_loop())
        try:
            await self._claim_replica()
            await self._consume()
        finally:
            if self._replica_lock is not None:
                with contextlib.suppress(Exception):
                    self._replica_lock.close()
            for companion in self._companions:
                companion.stop()
            self._stopping.set()
            await asyncio.gather(*companion_tasks, self._marker, return_exceptions=True)
            if self._unmarked:  # best effort: whatever is left is published again by the relay, harmlessly
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self._mark_sent, self._unmarked)
                self._unmarked = []

    async def _claim_replica(self) -> None:
        """Which replica this is: as configured, else the first index no live replica of the stage holds."""
        stage = self.settings.stage
        if stage.replica_index is not None or stage.replicas == 1:
            return  # the index set in __init__
        delay = 0.5
        while not self._stopping.is_set():
            try:
                self._replica, self._replica_lock = await asyncio.to_thread(
                    claim_replica_index, self.engine, self.spec.stage, stage.replicas
                )
                return
            except OperationalError as exc:  # the database is not up yet: as the consumer waits for the broker
                log.warning("replica index not claimed; retrying", extra={"error": repr(exc), "delay": delay})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, 30.0)

    async def _connect(self) -> AbstractRobustConnection | None:
        """Connect (waiting for the broker with back-off), unless stopped first."""
        stage = self.settings.stage
        # The connection's name shows in the management UI: which replica consumes which partition.
        name = f"oms.{self.spec.stage}" + (f".r{self._replica + 1}" if stage.replicas > 1 else "")
        return await connect_unless_stopped(self.settings.infra.amqp_urls, name, self._stopping)

    async def _consume(self) -> None:
        delay = 0.5
        while True:
            connection = await self._connect()
            if connection is None:
                return
            try:
                channel = await connection.channel()
                declare = self.settings.infra.amqp_declare_topology
                if self.spec.queue_override is None and declare:
                    # Every stage queue, so a hand-over to a stage that has not started yet is queued.
                    await declare_topology(channel, self.settings.stage.delivery_limit)
                own = replica_queues(self.spec.queue, self._replica, self.settings.stage.replicas)
                # Two batches' worth in flight over the partitions consumed (the prefetch counts per consumer).
                await channel.set_qos(prefetch_count=max(1, -(-self.settings.stage.batch_size * 2 // len(own))))
                queues = [
                    await declare_stage_queue(channel, queue, self.settings.stage.delivery_limit, declare=declare)
                    for queue in own
                ]
                # The robust channel consumes again by itself after a reconnect; deliveries keep arriving here,
                # from every partition: a key lives in one, so its messages still come in order.
                tags = [(queue, await queue.consume(self._on_message)) for queue in queues]
                break
            except Exception as exc:  # the broker went away again while we set up: start over
                log.warning("stage setup failed; retrying", extra={"error": repr(exc), "delay": delay})
                with contextlib.suppress(Exception):
                    await connection.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)  # back-off, ended early by stop()
                if self._stopping.is_set():
                    return
                delay = min(delay * 2, 30.0)
        self._connection = connection
        self._publisher = Publisher(connection)
        log.info(
            "stage consuming",
            extra={
                "stage": self.spec.stage,
                "queue": ",".join(queue.name for queue, _ in tags),
                "replica": f"{self._replica + 1}/{self.settings.stage.replicas}",
            },
        )
        try:
            while not self._stopping.is_set():
                get_batch = asyncio.ensure_future(self._next_batch())
                stop = asyncio.ensure_future(self._stopping.wait())
                done, _ = await asyncio.wait({get_batch, stop}, return_when=asyncio.FIRST_COMPLETED)
                if get_batch not in done:
                    get_batch.cancel()
                    break
                stop.cancel()
                await self._run_batch(get_batch.result())
        finally:
            for queue, tag in tags:
                with contextlib.suppress(Exception):
                    await queue.cancel(tag)
            with contextlib.suppress(Exception):
                await connection.close()

    def stop(self) -> None:
        """Finish the batch at hand and return from ``run`` (companions are stopped too)."""
        self._stopping.set()
        for companion in self._companions:
            companion.stop()


__all__ = [
    "BeforeTransaction",
    "Companion",
    "CompanionFactory",
    "DeadLetter",
    "Envelope",
    "Handler",
    "Prepare",
    "StageSpec",
    "StageWorker",
    "decode",
]
