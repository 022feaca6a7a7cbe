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
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from marshmallow import Schema, ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from common import jsonutil
from common.config import Settings
from common.logging import log_context
from common.messaging.connection import connect
from common.messaging.deadletter import dead_letter
from common.messaging.envelope import Envelope, message_id_of
from common.messaging.publisher import Publisher
from common.messaging.topology import STAGE_QUEUES, StageQueue, declare_stage_queue, declare_topology
from common.metrics import STAGE_BATCH_SIZE, STAGE_HANDLING_SECONDS, STAGE_MESSAGES
from common.store.outbox import OutboxMessage, claim_inbox, mark_sent, record_failure
from common.store.uow import UnitOfWork

log = logging.getLogger(__name__)

Handler = Callable[[UnitOfWork, Envelope], None]
# Work done once per batch, in its transaction, after the orders are locked and before the handler runs.
Prepare = Callable[[UnitOfWork, list[Envelope]], None]


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
    """What makes a stage: its queue, the schema of each routing key, and its handler.

    ``prepare`` (optional) is called once per batch transaction with the envelopes about to be handled, after
    their orders are locked: batch-wide locks and queries. ``companions`` are built when the worker starts and
    run beside its consumer, best effort: one that fails is restarted with back-off while the stage goes on.
    """

    stage: str
    schemas: Mapping[str, Schema]
    handler: Handler
    order_id_of: Callable[[Envelope], str | None] = field(default=lambda env: env.body.get("order_id"))
    queue_override: StageQueue | None = None  # tests and tools; stages use their entry in STAGE_QUEUES
    prepare: Prepare | None = None
    companions: tuple[CompanionFactory, ...] = ()

    @property
    def queue(self) -> StageQueue:
        """The queue this stage consumes."""
        return self.queue_override or STAGE_QUEUES[self.stage]


@dataclass
class _Delivery:
    message: AbstractIncomingMessage
    message_id: str
    envelope: Envelope | None = None
    error: str | None = None


@dataclass
class _Outcome:
    published: list[OutboxMessage] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # message_id -> error (retry via the broker)
    dead: dict[str, str] = field(default_factory=dict)  # message_id -> reason (dead-letter now)


def decode(spec: StageSpec, message: AbstractIncomingMessage) -> _Delivery:
    """Parse and validate a delivery against the schema of its routing key."""
    delivery = _Delivery(message=message, message_id=message_id_of(message))
    schema = spec.schemas.get(message.routing_key or "") or spec.schemas.get("*")
    if schema is None:
        delivery.error = f"no schema for routing key {message.routing_key!r}"
        return delivery
    try:
        raw = jsonutil.loads(message.body)
    except (ValueError, UnicodeDecodeError) as exc:
        delivery.error = f"body is not JSON: {exc}"
        return delivery
    if not isinstance(raw, dict):
        delivery.error = "body is not a JSON object"
        return delivery
    try:
        body = schema.load(raw)
    except ValidationError as exc:
        delivery.error = "invalid body: " + jsonutil.dumps(exc.messages)
        return delivery
    delivery.envelope = Envelope(
        message_id=delivery.message_id,
        routing_key=message.routing_key or "",
        body=body,
        correlation_id=message.correlation_id,
        type=message.type,
        headers=dict(message.headers or {}),
        redelivered=bool(message.redelivered),
    )
    return delivery


def _is_infrastructure_error(exc: BaseException) -> bool:
    # The database went away: retrying later will work, and nacking would burn the delivery limit.
    return isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


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

    # --- database side (runs in a worker thread) ---------------------------------------------------

    def _handle_in_transaction(self, uow: UnitOfWork, envelopes: list[Envelope]) -> None:
        fresh = claim_inbox(uow.connection, self.spec.stage, [e.message_id for e in envelopes])
        todo: list[Envelope] = []
        for env in envelopes:
            if env.message_id in fresh:
                fresh.discard(env.message_id)  # a duplicate within one batch runs once
                todo.append(env)
        uow.orders.lock(oid for oid in (self.spec.order_id_of(e) for e in todo) if oid)
        if todo and self.spec.prepare is not None:
            self.spec.prepare(uow, todo)
        for env in todo:
            with log_context(
                message_id=env.message_id,
                correlation_id=env.correlation_id,
                order_id=self.spec.order_id_of(env),
            ):
                self.spec.handler(uow, env)

    def process(self, envelopes: list[Envelope]) -> _Outcome:
        """Handle a batch in one transaction; on failure, each message alone. Blocking: call in a thread."""
        outcome = _Outcome()
        with UnitOfWork(self.engine, claim_outbox=True) as uow:
            try:
                self._handle_in_transaction(uow, envelopes)
                outcome.published = uow.commit()
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
                    self._handle_in_transaction(uow, [env])
                    outcome.published.extend(uow.commit())
                except Exception as exc:
                    uow.rollback()
                    if _is_infrastructure_error(exc):
                        raise
                    self._settle_failure(uow, env, exc, outcome)
        return outcome

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
            mark_sent(connection, message_ids)

    # --- broker side -------------------------------------------------------------------------------

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        await self._inbox.put(message)

    async def _next_batch(self) -> list[AbstractIncomingMessage]:
        first = await self._inbox.get()
        batch = [first]
        deadline = time.monotonic() + self.settings.batch_linger_ms / 1000
        while len(batch) < self.settings.batch_size:
            try:
                batch.append(self._inbox.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._inbox.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run_batch(self, messages: list[AbstractIncomingMessage]) -> None:
        assert self._publisher is not None
        started = time.perf_counter()
        deliveries = [decode(self.spec, m) for m in messages]
        for d in deliveries:
            if d.error is not None:
                log.warning(
                    "bad message dead-lettered",
                    extra={
                        "message_id": d.message_id,
                        "reason": d.error,
                        "routing_key": d.message.routing_key,
                    },
                )
                await dead_letter(self._publisher, self.spec.queue, d.message, d.message_id, d.error)
                await d.message.ack()
                STAGE_MESSAGES.labels(self.spec.stage, "invalid").inc()
        valid = [d for d in deliveries if d.envelope is not None]
        if not valid:
            return
        envelopes = [d.envelope for d in valid if d.envelope is not None]
        outcome = await self._process_with_retry(envelopes)
        confirmed = await self._publisher.publish(outcome.published)
        if confirmed:
            await asyncio.to_thread(self._mark_sent, confirmed)
        handled = []
        for d in valid:
            if d.message_id in outcome.dead:
                await dead_letter(self._publisher, self.spec.queue, d.message, d.message_id, outcome.dead[d.message_id])
                await d.message.ack()
                STAGE_MESSAGES.labels(self.spec.stage, "dead_lettered").inc()
            elif d.message_id in outcome.failed:
                await d.message.nack(requeue=True)
                STAGE_MESSAGES.labels(self.spec.stage, "failed").inc()
            else:
                handled.append(d)
        if handled:
            # Acked even if a publish was not confirmed: the committed outbox row is the durable copy, and the
            # relay publishes it. One frame for the batch: every delivery before the highest handled tag on this
            # channel is settled (earlier batches entirely, this one above), so a multiple ack takes exactly these.
            last = max(handled, key=lambda d: d.message.delivery_tag or 0)
            await last.message.ack(multiple=True)
            STAGE_MESSAGES.labels(self.spec.stage, "handled").inc(len(handled))
        STAGE_BATCH_SIZE.labels(self.spec.stage).observe(len(messages))
        STAGE_HANDLING_SECONDS.labels(self.spec.stage).observe(time.perf_counter() - started)

    async def _process_with_retry(self, envelopes: list[Envelope]) -> _Outcome:
        delay = 0.2
        while True:
            try:
                return await asyncio.to_thread(self.process, envelopes)
            except Exception as exc:
                if not _is_infrastructure_error(exc):
                    raise
                log.error("database unavailable; retrying the batch", extra={"error": repr(exc), "delay": delay})
                await asyncio.sleep(delay)  # back-off while the database is down, not a wait for state
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
        try:
            await self._consume()
        finally:
            for companion in self._companions:
                companion.stop()
            await asyncio.gather(*companion_tasks, return_exceptions=True)

    async def _consume(self) -> None:
        self._connection = await connect(self.settings.amqp_url, f"oms.{self.spec.stage}")
        self._publisher = Publisher(self._connection)
        channel = await self._connection.channel()
        if self.spec.queue_override is None:
            # Every stage queue, so a hand-over to a stage that has not started yet is queued, not returned.
            await declare_topology(channel, self.settings.delivery_limit)
        # Two batches' worth in flight: one being handled while the next arrives.
        await channel.set_qos(prefetch_count=self.settings.batch_size * 2)
        queue = await declare_stage_queue(channel, self.spec.queue, self.settings.delivery_limit)
        tag = await queue.consume(self._on_message)
        log.info("stage consuming", extra={"stage": self.spec.stage, "queue": queue.name})
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
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
            await self._connection.close()

    def stop(self) -> None:
        """Finish the batch at hand and return from ``run`` (companions are stopped too)."""
        self._stopping.set()
        for companion in self._companions:
            companion.stop()


def run_stage_forever(spec: StageSpec, worker_factory: Callable[[StageSpec], StageWorker]) -> None:
    """Process entry point: run the stage until SIGTERM or SIGINT."""

    async def main() -> None:
        worker = worker_factory(spec)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        await worker.run()

    asyncio.run(main())


__all__ = [
    "Companion",
    "CompanionFactory",
    "DeadLetter",
    "Envelope",
    "Handler",
    "Prepare",
    "StageSpec",
    "StageWorker",
    "decode",
    "run_stage_forever",
]
