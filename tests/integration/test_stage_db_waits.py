"""A stage worker's waits on the database are bounded: a database that stops answering fails the batch after
``OMS_STAGE_DB_TIMEOUT_SECONDS`` (retried, and the worker can stop meanwhile), and a lock held past
``OMS_STAGE_DB_STATEMENT_TIMEOUT_SECONDS`` fails it as an outage (retried), never as a bad message."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue, AbstractRobustConnection
from sqlalchemy import Engine, event, select, text

from common import jsonutil
from common.bootstrap import stage_worker
from common.messages.exchanges import OMS_EXCHANGE
from common.messaging.publisher import Publisher
from common.messaging.topology import StageQueue, declare_exchanges
from common.runtime.stage import StageSpec, StageWorker
from common.settings import InfraSettings, Settings, StageSettings
from common.store import tables
from common.store.outbox import OutboxMessage
from tests.integration.test_stage_runtime import echo, echo_kind
from tests.support.broker import has_consumer
from tests.support.polling import async_wait_until

pytestmark = pytest.mark.integration


@pytest.fixture()
def silent_database() -> Iterator[str]:
    """A database URL whose server accepts TCP connections and never answers (a hung Postgres, as its clients
    see it: the kernel completes the handshake, nothing replies)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"postgresql+psycopg://oms:oms@127.0.0.1:{listener.getsockname()[1]}/oms"


class _Stage:
    """A test stage (echo) built as ``./oms up`` builds a stage worker, running on the real broker."""

    def __init__(self, database_url: str, amqp_url: str, stage_settings: StageSettings) -> None:
        self.name = f"test_{uuid.uuid4().hex[:8]}"
        self.queue = StageQueue(self.name, (f"{self.name}.echo",))
        spec = StageSpec(stage=self.name, handlers={echo_kind(f"{self.name}.echo"): echo}, queue_override=self.queue)
        settings = Settings(infra=InfraSettings(database_url=database_url, amqp_url=amqp_url), stage=stage_settings)
        self.worker: StageWorker = stage_worker(spec, settings)
        self.amqp_url = amqp_url

    async def start(self) -> tuple[AbstractRobustConnection, AbstractChannel, AbstractQueue]:
        connection = await aio_pika.connect_robust(self.amqp_url)
        channel = await connection.channel()
        exchanges = await declare_exchanges(channel)
        echoed = await channel.declare_queue(exclusive=True)
        await echoed.bind(exchanges[OMS_EXCHANGE], "test.echoed")
        self.task = asyncio.create_task(self.worker.run())

        await async_wait_until(
            lambda: has_consumer(connection, self.queue.name), timeout=60, message="worker consuming"
        )
        return connection, channel, echoed

    async def stop(self) -> None:
        """Stop the worker (a test that failed half-way included), so that it does not outlive its test."""
        self.worker.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, 20)
        self.worker.engine.dispose()

    async def publish(self, connection: AbstractRobustConnection, message_id: str) -> None:
        body = jsonutil.dumps({"text": message_id}).encode()
        message = OutboxMessage(message_id, OMS_EXCHANGE, f"{self.name}.echo", "Echo", message_id, body)
        assert await Publisher(connection).publish([message]) == [message_id]


@pytest.fixture()
def retries(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """The log, for the stage runtime's 'retrying the batch' records."""
    caplog.set_level(logging.ERROR, logger="common.runtime.stage")
    return caplog


def _retried(log: pytest.LogCaptureFixture) -> int:
    # ``log.records`` read each time: pytest starts a new list for each phase of a test.
    return sum(1 for r in log.records if r.getMessage() == "database error; retrying the batch")


async def test_a_silent_database_fails_each_attempt_within_the_timeout_and_the_worker_still_stops(
    silent_database: str, amqp_url: str, retries: pytest.LogCaptureFixture
) -> None:
    stage = _Stage(silent_database, amqp_url, StageSettings(db_timeout_seconds=0.5))
    connection, _channel, _echoed = await stage.start()
    try:
        await stage.publish(connection, str(uuid.uuid4()))
        started = time.perf_counter()
        # Back-off 0.2, 0.4, 0.8 s between attempts: three attempts of 0.5 s each within about 3 s. Without a
        # bound, the first attempt alone waits for the kernel to give up on the connection (minutes).
        await async_wait_until(lambda: _retried(retries) >= 3, timeout=30, message="three retries of the batch")
        three_attempts = time.perf_counter() - started
        stage.worker.stop()
        started = time.perf_counter()
        await asyncio.wait_for(asyncio.shield(stage.task), 10)
        stopped_in = time.perf_counter() - started
    finally:
        await stage.stop()
        await connection.close()
    assert three_attempts < 10, three_attempts
    assert stopped_in < 3, stopped_in


async def test_a_lock_held_past_the_statement_timeout_fails_the_batch_as_an_outage_and_it_is_retried(
    database_url: str, amqp_url: str, retries: pytest.LogCaptureFixture
) -> None:
    stage = _Stage(database_url, amqp_url, StageSettings(db_statement_timeout_seconds=0.3))
    engine: Engine = stage.worker.engine
    cancelled: list[str] = []

    @event.listens_for(engine, "handle_error")
    def _note(context: Any) -> None:
        cancelled.append(type(context.original_exception).__name__)

    connection, _channel, echoed = await stage.start()
    message_id = str(uuid.uuid4())
    blocker = engine.connect()  # an uncommitted claim of the same message: the worker's claim waits for it
    try:
        blocker.execute(
            text("INSERT INTO inbox (stage, message_id, processed_at) VALUES (:stage, :mid, now())"),
            {"stage": stage.name, "mid": message_id},
        )
        await stage.publish(connection, message_id)
        await async_wait_until(lambda: _retried(retries) >= 2, timeout=30, message="two retries of the batch")
        assert set(cancelled) == {"QueryCanceled"}, cancelled
        blocker.rollback()  # the lock goes: the retry claims the message and handles it, once
        got: list[Any] = []

        async def echoed_once() -> bool:
            while (message := await echoed.get(no_ack=True, fail=False)) is not None:
                got.append(message)
            return bool(got)

        await async_wait_until(echoed_once, timeout=30, message="the message handled after the lock went")
        assert [jsonutil.loads(m.body)["text"] for m in got] == [message_id]
        with engine.connect() as db:
            failures = db.execute(
                select(tables.message_failures.c.message_id).where(tables.message_failures.c.stage == stage.name)
            ).all()
        assert failures == []  # an outage, not a failing message: nothing counted against its delivery limit
    finally:
        blocker.close()
        await stage.stop()
        await connection.close()
