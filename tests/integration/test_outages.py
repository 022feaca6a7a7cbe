"""Processes outlive broker and database outages: the stage runtime, the initial connect, the outbox relay.

A broker outage is the broker force-closing the process's connection (``tests.support.outages``), exactly what
a broker restart looks like to the client; a database outage is the session database refusing connections and
dropping those it had. The shared servers themselves are never stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection
from marshmallow import Schema, fields
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from common import jsonutil
from common.messages.catalogue import MessageKind
from common.messages.exchanges import OMS_EXCHANGE
from common.messages.headers import ERROR_HEADER
from common.messaging import connection as amqp_connection
from common.messaging.deadletter import dead_letter
from common.messaging.envelope import Envelope
from common.messaging.publisher import Publisher
from common.messaging.topology import StageQueue, declare_exchanges
from common.orders.ports import AbstractUnitOfWork
from common.runtime import stage as stage_module
from common.runtime.outbox_relay import OutboxRelay
from common.runtime.stage import StageSpec, StageWorker
from common.settings import REPO_ROOT, InfraSettings, Settings, StageSettings
from common.store.db import make_engine
from common.store.outbox import OutboxMessage, mark_sent
from tests.support import outages
from tests.support.broker import has_consumer
from tests.support.polling import async_wait_until, wait_until

pytestmark = pytest.mark.integration


class EchoSchema(Schema):
    text = fields.String(required=True)
    hold = fields.Boolean(load_default=False)


@dataclass
class Gate:
    """Holds the handler of a ``hold`` message inside its transaction until released."""

    entered: threading.Event
    release: threading.Event

    def handler(self, uow: AbstractUnitOfWork, env: Envelope) -> None:
        if env.body["hold"] and not self.release.is_set():
            self.entered.set()
            self.release.wait(30)
        uow.outbox.add(OMS_EXCHANGE, "test.echoed", "Echoed", {"text": env.body["text"]}, env.correlation_id)


@dataclass
class Rig:
    worker: StageWorker
    task: asyncio.Task[None]
    connection: AbstractRobustConnection
    channel: AbstractChannel
    echoed: AbstractQueue
    engine: Engine
    queue_def: StageQueue
    gate: Gate
    management_url: str
    vhost: str

    async def publish(self, body: dict[str, Any], message_id: str | None = None) -> str:
        mid = message_id or str(uuid.uuid4())
        publisher = Publisher(self.connection)
        message = OutboxMessage(
            mid, OMS_EXCHANGE, f"{self.queue_def.stage}.echo", "Echo", mid, jsonutil.dumps(body).encode()
        )
        assert await publisher.publish([message]) == [mid]
        return mid

    async def queue_settled(self) -> bool:
        """Nothing ready and nothing unacked on the stage queue (every delivery settled)."""
        declared = await self.channel.declare_queue(self.queue_def.name, passive=True)
        return declared.declaration_result.message_count == 0 and await _no_unacked(self)


async def _no_unacked(rig: Rig) -> bool:
    # The management API's figure includes unacknowledged deliveries (the AMQP declare-ok does not).
    import requests

    from tools.infra.tls import verify_for

    url = f"{rig.management_url.rstrip('/')}/api/queues/{outages.quote(rig.vhost)}/{rig.queue_def.name}"
    answer = await asyncio.to_thread(requests.get, url, auth=outages.AUTH, timeout=5, verify=verify_for(url))
    return answer.status_code == 200 and answer.json().get("messages_unacknowledged", 1) == 0


async def _collect_texts(queue: AbstractQueue, into: list[str]) -> list[str]:
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        into.append(jsonutil.loads(message.body)["text"])
    return into


@pytest.fixture
def management_url(infra_urls: Any) -> str:
    if not infra_urls.management_url:
        pytest.skip("needs the RabbitMQ management API")
    return str(infra_urls.management_url)


@pytest.fixture
async def rig(database_url: str, amqp_url: str, management_url: str) -> AsyncIterator[Rig]:
    stage = f"test_{uuid.uuid4().hex[:8]}"
    queue_def = StageQueue(stage, (f"{stage}.echo",))
    # Batches of one: a held batch leaves the next deliveries waiting in the worker's memory.
    settings = Settings(
        infra=InfraSettings(database_url=database_url, amqp_url=amqp_url),
        stage=StageSettings(delivery_limit=5, batch_size=1),
    )
    engine = make_engine(database_url, pre_ping=False)  # as stage workers run (common.bootstrap.stage_worker)
    gate = Gate(threading.Event(), threading.Event())
    kind = MessageKind(type="Echo", exchange=OMS_EXCHANGE, routing_key=f"{stage}.echo", schema=EchoSchema())
    spec = StageSpec(stage=stage, handlers={kind: gate.handler}, queue_override=queue_def)
    worker = StageWorker(spec, settings, engine)
    connection = await aio_pika.connect_robust(amqp_url)
    channel = await connection.channel()
    exchanges = await declare_exchanges(channel)
    echoed = await channel.declare_queue(f"{stage}.echoed", auto_delete=True)
    await echoed.bind(exchanges[OMS_EXCHANGE], "test.echoed")
    task = asyncio.create_task(worker.run())
    await async_wait_until(lambda: has_consumer(connection, queue_def.name), timeout=60, message="worker consuming")
    yield Rig(
        worker, task, connection, channel, echoed, engine, queue_def, gate, management_url, outages.vhost_of(amqp_url)
    )
    gate.release.set()
    worker.stop()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, 30)
    await connection.close()
    engine.dispose()


async def _kill(management_url: str, vhost: str, name: str) -> list[str]:
    """Force-close the client's connections, once the management API lists them (it lags a little)."""
    return await async_wait_until(
        lambda: asyncio.to_thread(outages.kill_connections, management_url, vhost, name),
        timeout=30,
        message=f"{name}'s connection listed and closed",
    )


async def _reconnected(management_url: str, vhost: str, name: str, closed: list[str]) -> None:
    async def fresh() -> bool:
        listed = await asyncio.to_thread(outages.connections, management_url, vhost, name)
        return any(c["name"] not in closed for c in listed)

    await async_wait_until(fresh, timeout=30, message=f"{name} reconnected")


def _worker_alive(rig: Rig) -> None:
    if rig.task.done():
        exc = rig.task.exception()
        raise AssertionError(f"the stage worker exited: {exc!r}")


# ------------------------------------------------------------------------------------------------ broker


async def test_stage_outlives_a_broker_restart_mid_batch_and_drops_stale_deliveries(rig: Rig) -> None:
    held = await rig.publish({"text": "held", "hold": True})
    await asyncio.to_thread(rig.gate.entered.wait, 20)
    assert rig.gate.entered.is_set()
    # Deliveries that reach the worker's memory while its batch is held: stale once the channel dies.
    for i in range(3):
        await rig.publish({"text": f"next-{i}"})
    name = f"oms.{rig.queue_def.stage}"
    closed = await _kill(rig.management_url, rig.vhost, name)
    # The broker has requeued the held delivery; the worker reconnects while its batch is still open.
    await _reconnected(rig.management_url, rig.vhost, name, closed)
    rig.gate.release.set()  # the batch commits and acks on a channel that is gone

    got: list[str] = []

    async def all_echoed() -> bool:
        await _collect_texts(rig.echoed, got)
        return {"next-0", "next-1", "next-2"} <= set(got)

    await async_wait_until(all_echoed, timeout=30, message=lambda: f"every message handled (got {got})")
    await async_wait_until(rig.queue_settled, timeout=30, message="every delivery settled")
    _worker_alive(rig)
    await _collect_texts(rig.echoed, got)
    # The redelivered copy of the held message was a no-op (inbox); the stale copies were not handled twice.
    assert got.count("held") <= 1
    assert all(got.count(f"next-{i}") == 1 for i in range(3)), got
    with rig.engine.connect() as connection:
        rows = connection.execute(
            text("SELECT count(*) FROM inbox WHERE stage = :stage"), {"stage": rig.queue_def.stage}
        ).scalar()
    assert rows == 4
    assert held


async def test_dead_letter_publish_failure_requeues_instead_of_exiting(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    real = dead_letter  # the stage calls the name it imported, so that is the one patched below

    async def flaky_dead_letter(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("dead-letter publish of x was not confirmed")
        await real(*args, **kwargs)

    monkeypatch.setattr(stage_module, "dead_letter", flaky_dead_letter)
    bad = await rig.publish({"txet": "no text"})
    dlq = await rig.channel.declare_queue(rig.queue_def.dead_letter_name, passive=True)

    async def dead_lettered() -> AbstractIncomingMessage | None:
        return await dlq.get(no_ack=True, fail=False)

    message: AbstractIncomingMessage = await async_wait_until(
        dead_lettered, timeout=30, message="the bad message in the DLQ"
    )
    assert message.message_id == bad
    assert calls == 2  # requeued after the failed copy, copied on the next delivery
    await rig.publish({"text": "after"})
    got: list[str] = []
    await async_wait_until(lambda: _collect_texts(rig.echoed, got), timeout=60, message="the next message handled")
    _worker_alive(rig)


# ------------------------------------------------------------------------------------------------ database


async def test_mark_sent_failure_does_not_kill_the_stage(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    failures = 0
    real = mark_sent  # the stage calls the name it imported, so that is the one patched below

    def flaky_mark_sent(connection: Any, ids: Any) -> None:
        nonlocal failures
        if failures < 2:
            failures += 1
            raise OperationalError("UPDATE outbox", {}, Exception("server closed the connection unexpectedly"))
        real(connection, ids)

    monkeypatch.setattr(stage_module, "mark_sent", flaky_mark_sent)
    await rig.publish({"text": "one"})
    got: list[str] = []
    await async_wait_until(lambda: _collect_texts(rig.echoed, got), timeout=60, message="echoed")

    def marked() -> bool:
        with rig.engine.connect() as connection:
            unsent = connection.execute(
                text("SELECT count(*) FROM outbox WHERE sent_at IS NULL AND body LIKE '%\"one\"%'")
            ).scalar()
        return unsent == 0

    await async_wait_until(lambda: asyncio.to_thread(marked), timeout=60, message="the row marked sent")
    assert failures == 2
    _worker_alive(rig)


async def test_mark_sent_gives_up_gracefully_on_a_non_infrastructure_error(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(connection: Any, ids: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(stage_module, "mark_sent", broken)
    await rig.publish({"text": "a"})
    await rig.publish({"text": "b"})
    got: list[str] = []

    async def both() -> bool:
        await _collect_texts(rig.echoed, got)
        return {"a", "b"} <= set(got)

    await async_wait_until(both, timeout=60, message="both handled")
    await async_wait_until(rig.queue_settled, timeout=60, message="acked")
    _worker_alive(rig)


async def test_stage_outlives_a_database_outage(rig: Rig, database_url: str) -> None:
    await rig.publish({"text": "held", "hold": True})
    await asyncio.to_thread(rig.gate.entered.wait, 20)
    with outages.database_down(database_url):
        rig.gate.release.set()  # its transaction is gone: the commit fails and the batch is retried
        for i in range(5):
            await rig.publish({"text": f"during-{i}"})
        # Retried with back-off while the database refuses connections.
        await asyncio.sleep(2.0)  # the length of the outage (not a wait for state)
        _worker_alive(rig)
    got: list[str] = []

    async def all_echoed() -> bool:
        await _collect_texts(rig.echoed, got)
        return {"held", *(f"during-{i}" for i in range(5))} <= set(got)

    await async_wait_until(all_echoed, timeout=40, message=lambda: f"every message handled (got {got})")
    await async_wait_until(rig.queue_settled, timeout=60, message="acked")
    _worker_alive(rig)
    assert got.count("held") == 1


# ------------------------------------------------------------------------------------------------ inbox digest


async def test_a_different_message_reusing_an_applied_id_is_dead_lettered_with_the_reason(rig: Rig) -> None:
    mid = str(uuid.uuid4())
    await rig.publish({"text": "original"}, mid)
    got: list[str] = []
    await async_wait_until(lambda: _collect_texts(rig.echoed, got), timeout=60, message="original handled")
    await rig.publish({"text": "original"}, mid)  # a redelivery: same id, same bytes -> skipped
    await rig.publish({"text": "impostor"}, mid)  # another message reusing the id
    await rig.publish({"text": "marker"})
    dlq = await rig.channel.declare_queue(rig.queue_def.dead_letter_name, passive=True)

    async def dead() -> AbstractIncomingMessage | None:
        return await dlq.get(no_ack=True, fail=False)

    message: AbstractIncomingMessage = await async_wait_until(dead, timeout=60, message="the impostor in the DLQ")
    assert jsonutil.loads(message.body)["text"] == "impostor"
    assert message.headers[ERROR_HEADER] == f"message id {mid} was already used for a different body"

    async def marker() -> bool:
        await _collect_texts(rig.echoed, got)
        return "marker" in got

    await async_wait_until(marker, timeout=60, message="the marker handled")
    assert got.count("original") == 1 and "impostor" not in got
    assert await dlq.get(no_ack=True, fail=False) is None  # the plain redelivery was not dead-lettered


async def test_an_inbox_row_without_a_digest_treats_the_id_as_a_plain_duplicate(rig: Rig) -> None:
    mid = str(uuid.uuid4())
    with rig.engine.begin() as connection:
        connection.execute(
            text("INSERT INTO inbox (stage, message_id, processed_at) VALUES (:s, :m, now())"),
            {"s": rig.queue_def.stage, "m": mid},
        )
    await rig.publish({"text": "legacy"}, mid)
    await rig.publish({"text": "marker"})
    got: list[str] = []

    async def marker() -> bool:
        await _collect_texts(rig.echoed, got)
        return "marker" in got

    await async_wait_until(marker, timeout=60, message="the marker handled")
    assert "legacy" not in got
    dlq = await rig.channel.declare_queue(rig.queue_def.dead_letter_name, passive=True)
    assert await dlq.get(no_ack=True, fail=False) is None


# ------------------------------------------------------------------------------------------------ first connect


async def test_connect_waits_for_a_broker_that_is_down_at_start(
    infra_urls: Any, amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A process started while the broker is down waits with back-off: a port nothing listens on, then a
    relay to the real broker appears there."""
    real = aio_pika.connection.make_url(amqp_url)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = str(real.with_host("127.0.0.1").with_port(port))
    caplog.set_level(logging.WARNING, logger="common.messaging.connection")
    connecting = asyncio.create_task(amqp_connection.connect(url, "oms.test_first_connect"))

    def attempts() -> int:
        return sum("broker not reachable" in r.getMessage() for r in caplog.records)

    await async_wait_until(lambda: attempts() >= 2, timeout=60, message="two failed attempts logged")
    assert not connecting.done()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(real.host, real.port)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(relay, "127.0.0.1", port)
    try:
        connection = await asyncio.wait_for(connecting, 40)
        assert not connection.is_closed
        await connection.close()
    finally:
        server.close()


async def test_connect_gives_up_after_the_attempts_asked_for() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OSError):
        await amqp_connection.connect(f"amqp://guest:guest@127.0.0.1:{port}/", "oms.test", attempts=2, max_delay=0.1)


async def test_a_connect_cancelled_midway_leaves_nothing_reconnecting() -> None:
    """A process stopped while it connects (SIGTERM during a connect: asyncio.run cancels every task and waits
    for them) must not wait for ever: aio-pika's robust connection keeps a reconnecting task that a cancellation
    alone does not end. A server that accepts and never answers holds the connect midway."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        before = asyncio.all_tasks()
        connecting = asyncio.create_task(amqp_connection.connect(f"amqp://guest:guest@127.0.0.1:{port}/", "oms.test"))
        await async_wait_until(lambda: len(asyncio.all_tasks() - before) > 1, timeout=10, message="connecting")
        connecting.cancel()
        others = asyncio.all_tasks() - before - {asyncio.current_task()}
        # As asyncio.run's shutdown does: cancel what is left and wait for it.
        for task in others:
            task.cancel()
        done, pending = await asyncio.wait(others, timeout=5)
        assert not pending, [t.get_coro() for t in pending]


# ------------------------------------------------------------------------------------------------ outbox relay


def _unclaimed_row(engine: Engine, routing_key: str) -> str:
    mid = str(uuid.uuid4())
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO outbox (message_id, exchange, routing_key, type, correlation_id, headers, body, "
                "claimed, created_at) VALUES (:m, 'oms', :rk, 'Test', :m, '{}', '{}', false, now())"
            ),
            {"m": mid, "rk": routing_key},
        )
        connection.execute(text("NOTIFY oms_outbox"))
    return mid


@dataclass
class _RelayRig:
    engine: Engine
    task: asyncio.Task[None]
    routing_key: str
    arrived: Callable[[str], Awaitable[bool]]  # whether a message id reached the rig's queue


@contextlib.asynccontextmanager
async def _running_relay(database_url: str, amqp_url: str, poll_seconds: float) -> AsyncIterator[_RelayRig]:
    """A relay polling every ``poll_seconds``, and a queue of its own bound to a fresh routing key."""
    engine = make_engine(database_url)
    settings = Settings(
        infra=InfraSettings(database_url=database_url, amqp_url=amqp_url),
        stage=StageSettings(outbox_poll_seconds=poll_seconds),
    )
    relay = OutboxRelay(settings, engine)
    task = asyncio.create_task(relay.run())
    connection = await aio_pika.connect_robust(amqp_url)
    try:
        channel = await connection.channel()
        exchanges = await declare_exchanges(channel)
        target = await channel.declare_queue(exclusive=True)
        routing_key = f"test.relay.{uuid.uuid4().hex[:8]}"
        await target.bind(exchanges[OMS_EXCHANGE], routing_key)
        received: set[str] = set()

        async def arrived(mid: str) -> bool:
            while (message := await target.get(no_ack=True, fail=False)) is not None:
                received.add(str(message.message_id))
            return mid in received

        yield _RelayRig(engine, task, routing_key, arrived)
    finally:
        relay.stop()
        task.cancel()  # not waiting for it to sleep out its poll
        with contextlib.suppress(BaseException):
            await task
        await connection.close()
        engine.dispose()


async def test_outbox_relay_outlives_database_and_broker_outages(
    database_url: str, amqp_url: str, management_url: str
) -> None:
    async with _running_relay(database_url, amqp_url, poll_seconds=0.5) as rig:
        vhost = outages.vhost_of(amqp_url)
        await async_wait_until(
            lambda: asyncio.to_thread(outages.connections, management_url, vhost, "oms.outbox_relay"),
            timeout=20,
            message="the relay connected",
        )
        first = await asyncio.to_thread(_unclaimed_row, rig.engine, rig.routing_key)
        await async_wait_until(partial(rig.arrived, first), timeout=60, message="relayed before the outages")

        with outages.database_down(database_url):  # the LISTEN connection and the pool die
            await asyncio.sleep(1.5)  # the length of the outage (not a wait for state)
            assert not rig.task.done(), repr(rig.task.exception() if rig.task.done() else None)
        second = await asyncio.to_thread(_unclaimed_row, rig.engine, rig.routing_key)
        await async_wait_until(partial(rig.arrived, second), timeout=40, message="relayed after the database outage")

        await _kill(management_url, vhost, "oms.outbox_relay")
        third = await asyncio.to_thread(_unclaimed_row, rig.engine, rig.routing_key)
        await async_wait_until(partial(rig.arrived, third), timeout=40, message="relayed after the broker outage")
        assert not rig.task.done()


async def test_an_unclaimed_outbox_row_wakes_the_relay_at_commit(database_url: str, amqp_url: str) -> None:
    """The API's rows (unclaimed) carry the relay's wake-up in their insert (pg_notify): they go out at once, not
    at the next poll, which is set here far beyond the wait."""
    from common.store.uow import UnitOfWork

    async with _running_relay(database_url, amqp_url, poll_seconds=120) as rig:

        def write() -> str:
            with UnitOfWork(rig.engine) as uow:  # claim_outbox False: the API's kind of row
                message = uow.outbox.add(OMS_EXCHANGE, rig.routing_key, "Test", {"n": 1}, None)
                uow.commit()
            return message.message_id

        # The first may go out with the relay's start-up sweep; by the second the relay waits on its LISTEN.
        for _ in range(2):
            mid = await asyncio.to_thread(write)
            await async_wait_until(partial(rig.arrived, mid), timeout=30, message="relayed without waiting for a poll")
        assert not rig.task.done()


# ------------------------------------------------------------------------------------------------ crash hook


@pytest.fixture
def seeded(database_url: str) -> Iterator[Engine]:
    from tests.support.db import open_engine

    with open_engine(database_url) as engine:
        yield engine


async def test_crash_after_commit_hook_exits_137_before_publishing(
    seeded: Engine, database_url: str, amqp_url: str, tmp_path: Any
) -> None:
    log_path = tmp_path / "intake.log"
    log_file = log_path.open("wb")
    env = {
        **os.environ,
        "OMS_DATABASE_URL": database_url,
        "OMS_AMQP_URL": amqp_url,
        stage_module.CRASH_AFTER_COMMIT_ENV: "intake",
        "OMS_METRICS_PORT": "0",
    }
    process = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-m", "services.intake"],
        cwd=REPO_ROOT,
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    try:
        connection = await aio_pika.connect_robust(amqp_url)
        try:
            await async_wait_until(
                lambda: has_consumer(connection, "oms.intake"),
                timeout=30,
                message=lambda: "intake up:\n" + log_path.read_text(errors="replace")[-3000:],
            )
            decision_id = str(uuid.uuid4())
            body = {
                "decisionId": decision_id,
                "strategyId": "STRAT-TEST",
                "accountId": "ACC-001",
                "symbol": "AAPL",
                "side": "BUY",
                "type": "MARKET",
                "quantity": 10,
            }
            publisher = Publisher(connection)
            await publisher.publish_json(OMS_EXCHANGE, "intake.decision", "TradeDecision", body)
        finally:
            await connection.close()
        code = await asyncio.to_thread(wait_until, lambda: process.poll() is not None, 30)
        assert code and process.returncode == 137
        with seeded.connect() as db:
            unsent = db.execute(
                text("SELECT count(*) FROM outbox WHERE sent_at IS NULL AND claimed AND routing_key LIKE 'risk.check%'")
            ).scalar()
        assert unsent and unsent >= 1  # committed, never published: the relay's job after the grace period
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        log_file.close()
