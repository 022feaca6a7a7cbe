"""The stage runtime on the real broker and database: confirms, acks, dead letters, delivery limit, inbox."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection
from marshmallow import Schema, fields
from sqlalchemy import Engine, select, text

from common import jsonutil
from common.messages.catalogue import MessageKind
from common.messages.exchanges import OMS_EXCHANGE
from common.messages.headers import ERROR_HEADER
from common.messaging.batch import CARRIER_TYPE, is_carrier, pack
from common.messaging.envelope import Envelope
from common.messaging.publisher import Publisher
from common.messaging.topology import StageQueue, declare_exchanges
from common.orders.ports import AbstractUnitOfWork
from common.runtime.stage import GENERIC_PLANS_UP_TO, StageSpec, StageWorker
from common.settings import InfraSettings, Settings, StageSettings
from common.store import tables
from common.store.db import make_engine
from common.store.orders_repo import OrderRepository
from common.store.outbox import OutboxMessage
from common.store.uow import UnitOfWork
from tests.support.broker import has_consumer
from tests.support.db import statements
from tests.support.polling import async_wait_until

pytestmark = pytest.mark.integration

DELIVERY_LIMIT = 2
_CONNECTIONS: dict[int, AbstractRobustConnection] = {}


class EchoSchema(Schema):
    text = fields.String(required=True)
    fail = fields.Boolean(load_default=False)


def echo(uow: AbstractUnitOfWork, env: Envelope) -> None:
    """Echo the text to ``test.echoed``; a body asking to fail raises every time."""
    if env.body["fail"]:
        raise RuntimeError("asked to fail")
    uow.outbox.add(OMS_EXCHANGE, "test.echoed", "Echoed", {"text": env.body["text"]}, env.correlation_id)


def echo_kind(routing_key: str) -> MessageKind:
    """The kind a test stage consumes: an ``Echo`` on ``routing_key`` of the ``oms`` exchange."""
    return MessageKind(type="Echo", exchange=OMS_EXCHANGE, routing_key=routing_key, schema=EchoSchema())


@pytest.fixture
async def setup(
    database_url: str, amqp_url: str
) -> AsyncIterator[tuple[StageWorker, AbstractChannel, AbstractQueue, Engine, StageQueue]]:
    stage = f"test_{uuid.uuid4().hex[:8]}"  # a queue of its own per test, so tests share nothing
    queue_def = StageQueue(stage, (f"{stage}.echo",))
    settings = Settings(
        infra=InfraSettings(database_url=database_url, amqp_url=amqp_url),
        stage=StageSettings(delivery_limit=DELIVERY_LIMIT, batch_size=20),
    )
    engine = make_engine(database_url)
    spec = StageSpec(stage=queue_def.stage, handlers={echo_kind(f"{stage}.echo"): echo}, queue_override=queue_def)
    worker = StageWorker(spec, settings, engine)
    connection = await aio_pika.connect_robust(amqp_url)
    channel = await connection.channel()
    _CONNECTIONS[id(channel)] = connection
    exchanges = await declare_exchanges(channel)
    echoed = await channel.declare_queue(exclusive=True)
    await echoed.bind(exchanges[OMS_EXCHANGE], "test.echoed")
    task = asyncio.create_task(worker.run())
    await async_wait_until(lambda: has_consumer(connection, queue_def.name), timeout=60, message="worker consuming")
    yield worker, channel, echoed, engine, queue_def
    worker.stop()
    await asyncio.wait_for(task, 20)
    await connection.close()
    engine.dispose()


async def _publish(channel: AbstractChannel, routing_key: str, body: bytes, message_id: str) -> None:
    publisher = Publisher(_CONNECTIONS[id(channel)])
    confirmed = await publisher.publish(
        [OutboxMessage(message_id, OMS_EXCHANGE, routing_key, "Echo", message_id, body)]
    )
    assert confirmed == [message_id]


async def _drain(queue: AbstractQueue) -> list[AbstractIncomingMessage]:
    got = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        got.append(message)
    return got


async def _collect(queue: AbstractQueue, count: int, timeout: float = 20) -> list[AbstractIncomingMessage]:
    got: list[AbstractIncomingMessage] = []

    async def enough() -> bool:
        got.extend(await _drain(queue))
        return len(got) >= count

    await async_wait_until(enough, timeout=timeout, message=f"{count} messages")
    return got


async def test_published_with_confirm_is_consumed_handled_and_acked(setup: Any) -> None:
    worker, channel, echoed, engine, queue_def = setup
    ids = [str(uuid.uuid4()) for _ in range(50)]
    for i, mid in enumerate(ids):
        await _publish(channel, f"{queue_def.stage}.echo", jsonutil.dumps({"text": f"m{i}"}).encode(), mid)
    got = await _collect(echoed, 50)
    assert sorted(jsonutil.loads(m.body)["text"] for m in got) == sorted(f"m{i}" for i in range(50))
    declared = await channel.declare_queue(queue_def.name, passive=True)
    assert declared.declaration_result.message_count == 0  # everything acked
    with engine.connect() as connection:
        processed = connection.execute(
            select(tables.inbox.c.message_id).where(tables.inbox.c.stage == queue_def.stage)
        ).scalars()
        assert set(processed) == set(ids)

    def unsent() -> int:  # marked sent shortly after the confirms, a few batches to a statement
        with engine.connect() as connection:
            return int(
                connection.execute(
                    text("SELECT count(*) FROM outbox WHERE sent_at IS NULL AND routing_key = 'test.echoed'")
                ).scalar_one()
            )

    await async_wait_until(lambda: unsent() == 0, timeout=10, message="every published row marked sent")


async def test_redelivered_message_is_applied_once(setup: Any) -> None:
    worker, channel, echoed, engine, queue_def = setup
    mid = str(uuid.uuid4())
    body = jsonutil.dumps({"text": "once"}).encode()
    await _publish(channel, f"{queue_def.stage}.echo", body, mid)
    await _collect(echoed, 1)
    await _publish(channel, f"{queue_def.stage}.echo", body, mid)  # the same message id again
    marker = str(uuid.uuid4())
    await _publish(channel, f"{queue_def.stage}.echo", jsonutil.dumps({"text": "after"}).encode(), marker)
    got = await _collect(echoed, 1)
    assert [jsonutil.loads(m.body)["text"] for m in got] == ["after"]


async def test_malformed_body_is_dead_lettered_with_reason_and_consumer_goes_on(setup: Any) -> None:
    worker, channel, echoed, engine, queue_def = setup
    bad_json, bad_shape = str(uuid.uuid4()), str(uuid.uuid4())
    await _publish(channel, f"{queue_def.stage}.echo", b"{not json", bad_json)
    await _publish(channel, f"{queue_def.stage}.echo", jsonutil.dumps({"txet": 1}).encode(), bad_shape)
    await _publish(channel, f"{queue_def.stage}.echo", jsonutil.dumps({"text": "fine"}).encode(), str(uuid.uuid4()))
    got = await _collect(echoed, 1)
    assert jsonutil.loads(got[0].body)["text"] == "fine"
    dlq = await channel.declare_queue(queue_def.dead_letter_name, passive=True)
    dead = {m.message_id: m for m in await _collect(dlq, 2)}
    assert set(dead) == {bad_json, bad_shape}
    assert "not JSON" in str(dead[bad_json].headers[ERROR_HEADER])
    assert "text" in str(dead[bad_shape].headers[ERROR_HEADER])
    assert dead[bad_json].body == b"{not json"  # the original bytes, for replay after a fix


async def test_message_failing_every_time_is_dead_lettered_after_delivery_limit(setup: Any) -> None:
    worker, channel, echoed, engine, queue_def = setup
    poison = str(uuid.uuid4())
    body = jsonutil.dumps({"text": "x", "fail": True}).encode()
    await _publish(channel, f"{queue_def.stage}.echo", body, poison)
    await _publish(channel, f"{queue_def.stage}.echo", jsonutil.dumps({"text": "neighbour"}).encode(), "n-" + poison)
    got = await _collect(echoed, 1)
    assert jsonutil.loads(got[0].body)["text"] == "neighbour"  # its batch-mate was not failed with it
    dlq = await channel.declare_queue(queue_def.dead_letter_name, passive=True)
    dead = await _collect(dlq, 1, timeout=30)
    assert dead[0].message_id == poison
    deaths = dead[0].headers["x-death"]
    assert deaths[0]["reason"] == "delivery_limit"  # type: ignore[call-overload,index]
    with engine.connect() as connection:
        failure = connection.execute(
            select(tables.message_failures).where(tables.message_failures.c.message_id == poison)
        ).one()
    assert "asked to fail" in failure.error
    assert failure.attempts == DELIVERY_LIMIT + 1


# --------------------------------------------------------------------------- carriers: many records, one message


async def _publish_carrier(channel: AbstractChannel, routing_key: str, records: list[tuple[str, bytes]]) -> str:
    """Pack records as a stage does (``pack``) and publish the carrier to ``routing_key``; returns its id."""
    rows = [OutboxMessage(mid, OMS_EXCHANGE, "risk.check", "Echo", mid, body.decode()) for mid, body in records]
    (carrier,) = pack(rows)
    assert is_carrier(carrier.message.type) and carrier.record_ids == [mid for mid, _ in records]
    message = dataclasses.replace(carrier.message, routing_key=routing_key)
    confirmed = await Publisher(_CONNECTIONS[id(channel)]).publish([message])
    assert confirmed == [message.message_id]
    return message.message_id


async def test_a_carrier_s_records_are_handled_and_its_bad_ones_dead_lettered_alone(setup: Any) -> None:
    worker, channel, echoed, engine, queue_def = setup
    good = [str(uuid.uuid4()) for _ in range(5)]
    bad_json, bad_shape, poison = (str(uuid.uuid4()) for _ in range(3))
    records = [(mid, jsonutil.dumps({"text": f"g{i}"}).encode()) for i, mid in enumerate(good)]
    records[2:2] = [
        (bad_json, b"{not json"),
        (bad_shape, jsonutil.dumps({"txet": 1}).encode()),
        (poison, jsonutil.dumps({"text": "p", "fail": True}).encode()),
    ]
    await _publish_carrier(channel, f"{queue_def.stage}.echo", records)
    got = await _collect(echoed, 5)
    assert sorted(jsonutil.loads(m.body)["text"] for m in got) == [f"g{i}" for i in range(5)]
    dlq = await channel.declare_queue(queue_def.dead_letter_name, passive=True)
    dead = {m.message_id: m for m in await _collect(dlq, 3, timeout=30)}
    assert set(dead) == {bad_json, bad_shape, poison}  # each alone, never the carrier
    assert dead[bad_json].body == b"{not json" and dead[bad_json].type == "Echo"
    assert "not JSON" in str(dead[bad_json].headers[ERROR_HEADER])
    assert "text" in str(dead[bad_shape].headers[ERROR_HEADER])
    assert "asked to fail" in str(dead[poison].headers[ERROR_HEADER])  # at its last delivery, by the stage
    assert jsonutil.loads(dead[poison].body) == {"text": "p", "fail": True}
    declared = await channel.declare_queue(queue_def.name, passive=True)
    assert declared.declaration_result.message_count == 0
    with engine.connect() as connection:
        processed = set(
            connection.execute(
                select(tables.inbox.c.message_id).where(tables.inbox.c.stage == queue_def.stage)
            ).scalars()
        )
    assert processed == set(good)  # the good records once each, although the carrier came three times


async def test_a_record_seen_in_a_carrier_and_then_alone_is_applied_once(setup: Any) -> None:
    worker, channel, echoed, engine, queue_def = setup
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    body = jsonutil.dumps({"text": "once"}).encode()
    await _publish_carrier(channel, f"{queue_def.stage}.echo", [(first, body), (second, b'{"text":"two"}')])
    await _collect(echoed, 2)
    await _publish(channel, f"{queue_def.stage}.echo", body, first)  # the relay publishing the same row alone
    marker = str(uuid.uuid4())
    await _publish(channel, f"{queue_def.stage}.echo", jsonutil.dumps({"text": "after"}).encode(), marker)
    got = await _collect(echoed, 1)
    assert [jsonutil.loads(m.body)["text"] for m in got] == ["after"]  # no second echo, and not a conflict
    dlq = await channel.declare_queue(queue_def.dead_letter_name, passive=True)
    assert dlq.declaration_result.message_count == 0


async def test_a_carrier_that_is_not_one_is_dead_lettered_whole_with_the_reason(setup: Any) -> None:
    worker, channel, echoed, engine, queue_def = setup
    garbage = OutboxMessage(
        "batch:" + str(uuid.uuid4()), OMS_EXCHANGE, f"{queue_def.stage}.echo", CARRIER_TYPE, None, b'[{"id": 1}]'
    )
    assert await Publisher(_CONNECTIONS[id(channel)]).publish([garbage]) == [garbage.message_id]
    await _publish(channel, f"{queue_def.stage}.echo", jsonutil.dumps({"text": "fine"}).encode(), str(uuid.uuid4()))
    got = await _collect(echoed, 1)
    assert jsonutil.loads(got[0].body)["text"] == "fine"
    dlq = await channel.declare_queue(queue_def.dead_letter_name, passive=True)
    (dead,) = await _collect(dlq, 1)
    assert dead.message_id == garbage.message_id and dead.body == garbage.body
    assert "invalid batch" in str(dead.headers[ERROR_HEADER])


# --------------------------------------------------------------------------- hooks: prepare and companions


def test_prepare_runs_once_per_batch_after_the_locks_and_before_the_handler(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, Any]] = []
    original_lock = OrderRepository.lock

    def lock(self: OrderRepository, order_ids: Any) -> None:
        calls.append(("lock", None))
        original_lock(self, order_ids)

    def prepare(uow: AbstractUnitOfWork, envelopes: list[Envelope]) -> None:
        assert isinstance(uow, UnitOfWork)  # the Postgres one: its transaction is what this test compares
        calls.append(("prepare", ([e.message_id for e in envelopes], uow.connection.get_transaction())))

    def handler(uow: AbstractUnitOfWork, env: Envelope) -> None:
        assert isinstance(uow, UnitOfWork)
        calls.append(("handle", (env.message_id, uow.connection.get_transaction())))

    monkeypatch.setattr(OrderRepository, "lock", lock)
    stage = f"test_{uuid.uuid4().hex[:8]}"
    spec = StageSpec(stage=stage, handlers={echo_kind(f"{stage}.echo"): handler}, prepare=prepare)
    engine = make_engine(database_url)
    worker = StageWorker(spec, Settings(infra=InfraSettings(database_url=database_url)), engine)
    try:
        envelopes = [Envelope(str(uuid.uuid4()), f"{stage}.echo", {"text": str(i)}) for i in range(3)]
        outcome = worker.process([*envelopes, envelopes[0]])  # a duplicate within the batch runs once
        assert not outcome.failed and not outcome.dead
        ids = [e.message_id for e in envelopes]
        assert [kind for kind, _ in calls] == ["lock", "prepare", "handle", "handle", "handle"]
        prepared_ids, transaction = calls[1][1]
        assert prepared_ids == ids
        assert [value for kind, value in calls[2:]] == [(i, transaction) for i in ids]  # one transaction

        calls.clear()
        worker.process(envelopes[:1])  # already applied: nothing to prepare, nothing to handle
        assert [kind for kind, _ in calls] == ["lock"]
    finally:
        engine.dispose()


def test_adaptive_plans_generic_for_a_small_batch_and_as_postgres_chooses_for_a_large_one(database_url: str) -> None:
    modes: list[str] = []

    def handler(uow: AbstractUnitOfWork, env: Envelope) -> None:
        assert isinstance(uow, UnitOfWork)
        if env.body["text"] == "boom":
            raise RuntimeError("asked to fail")
        modes.append(uow.connection.execute(text("SHOW plan_cache_mode")).scalar_one())

    stage = f"test_{uuid.uuid4().hex[:8]}"
    spec = StageSpec(stage=stage, handlers={echo_kind(f"{stage}.echo"): handler})

    def batch(size: int, text_: str = "x") -> list[Envelope]:
        return [Envelope(str(uuid.uuid4()), f"{stage}.echo", {"text": text_}) for _ in range(size)]

    engine = make_engine(database_url, pool_size=1)  # one connection: each batch meets the last one's setting
    adaptive = StageWorker(spec, Settings(infra=InfraSettings(database_url=database_url)), engine)  # the default
    try:
        adaptive.process(batch(1))
        assert modes == ["force_generic_plan"]
        with statements(engine, session_settings=True) as sent:
            adaptive.process(batch(GENERIC_PLANS_UP_TO))
        assert set(modes) == {"force_generic_plan"}
        assert not [s for s in sent if "set_config" in s]  # set already: nothing sent for it
        modes.clear()
        adaptive.process(batch(GENERIC_PLANS_UP_TO + 1))
        assert set(modes) == {"auto"}

        # A batch that rolls back keeps the mode it switched to: the switch is committed before the batch begins.
        outcome = adaptive.process(batch(1, "boom"))
        assert outcome.failed
        with engine.connect() as connection:
            assert connection.execute(text("SHOW plan_cache_mode")).scalar_one() == "force_generic_plan"
        with statements(engine, session_settings=True) as sent:
            modes.clear()
            adaptive.process(batch(1))
        assert modes == ["force_generic_plan"] and not [s for s in sent if "set_config" in s]

        fixed = StageWorker(
            spec,
            Settings(infra=InfraSettings(database_url=database_url), stage=StageSettings(plan_cache_mode="auto")),
            engine,
        )
        modes.clear()
        fixed.process(batch(GENERIC_PLANS_UP_TO + 1))
        assert set(modes) == {"force_generic_plan"}  # the connection's, as it was: the worker leaves it alone
    finally:
        engine.dispose()


class FlakyCompanion:
    """Fails on its first run, then runs until stopped."""

    def __init__(self) -> None:
        self.runs = 0
        self.stopped = asyncio.Event()

    async def run(self) -> None:
        self.runs += 1
        if self.runs == 1:
            raise RuntimeError("first run fails")
        await self.stopped.wait()

    def stop(self) -> None:
        self.stopped.set()


async def test_companions_run_beside_the_consumer_restart_after_a_failure_and_stop_with_it(
    database_url: str, amqp_url: str
) -> None:
    companions: list[FlakyCompanion] = []

    def factory(settings: Settings, engine: Engine) -> FlakyCompanion:
        assert settings.infra.amqp_url == amqp_url
        companions.append(FlakyCompanion())
        return companions[-1]

    queue_def = StageQueue(f"test_{uuid.uuid4().hex[:8]}", ("test.companion",))
    spec = StageSpec(
        stage=queue_def.stage,
        handlers={echo_kind("test.companion"): echo},
        queue_override=queue_def,
        companions=(factory,),
    )
    engine = make_engine(database_url)
    worker = StageWorker(spec, Settings(infra=InfraSettings(database_url=database_url, amqp_url=amqp_url)), engine)
    task = asyncio.create_task(worker.run())
    try:
        await async_wait_until(lambda: bool(companions) and companions[0].runs == 2, timeout=60, message="restart")
        assert not task.done()  # the stage went on while its companion failed
        worker.stop()
        await asyncio.wait_for(task, 20)
        [companion] = companions
        assert companion.stopped.is_set() and companion.runs == 2
    finally:
        worker.stop()
        engine.dispose()
