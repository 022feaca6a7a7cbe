"""``oms dlq`` on the real broker and database, against a real stage worker that dead-letters for three reasons.

The stage here is a test stage of its own (queue ``oms.<stage>``, dead letters in ``oms.<stage>.dlq``) run by
the real stage runtime: a body that fails validation is dead-lettered by the runtime ("invalid"), a handler
that raises ``DeadLetter`` is dead-lettered at once ("refused"), and one that keeps raising is dead-lettered by
the broker after the delivery limit ("delivery_limit"). The tool runs as operators run it, in a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue, AbstractRobustConnection
from marshmallow import Schema, fields
from sqlalchemy import Engine, select

from common import jsonutil
from common.messages.catalogue import MessageKind
from common.messages.exchanges import DEAD_LETTER_EXCHANGE, OMS_EXCHANGE
from common.messages.headers import ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER
from common.messaging.envelope import Envelope
from common.messaging.publisher import Publisher
from common.messaging.topology import StageQueue, declare_exchanges
from common.orders.ports import AbstractUnitOfWork
from common.runtime.stage import DeadLetter, StageSpec, StageWorker
from common.settings import REPO_ROOT, InfraSettings, Settings, StageSettings
from common.store import tables
from common.store.db import make_engine
from common.store.outbox import OutboxMessage
from common.store.tables import dlq_replays, job_runs
from services.jobs.deadletters import dead_letter_queues
from tests.support.polling import async_wait_until

pytestmark = pytest.mark.integration

DELIVERY_LIMIT = 2
# Texts whose trouble has been "fixed" (the flaky dependency is back, the missing data arrived).
HEALED: set[str] = set()


class WorkSchema(Schema):
    text = fields.String(required=True)
    mode = fields.String(load_default="ok")


def work(uow: AbstractUnitOfWork, env: Envelope) -> None:
    """Echo the text; ``fail`` raises every time and ``refuse`` refuses, until the text is healed."""
    text, mode = env.body["text"], env.body["mode"]
    if text not in HEALED:
        if mode == "fail":
            raise RuntimeError(f"flaky dependency while handling {text}")
        if mode == "refuse":
            raise DeadLetter(f"cannot apply {text} yet")
    routing_key = env.routing_key.replace(".work", ".echoed")
    uow.outbox.add(OMS_EXCHANGE, routing_key, "Echoed", {"text": text}, env.correlation_id)


@dataclass
class Stage:
    queue: StageQueue
    channel: AbstractChannel
    connection: AbstractRobustConnection
    echoed: AbstractQueue
    engine: Engine
    database_url: str
    amqp_url: str

    @property
    def work_key(self) -> str:
        return f"{self.queue.stage}.work"

    @property
    def dlq(self) -> str:
        return self.queue.dead_letter_name

    async def publish(self, body: dict[str, Any] | bytes, message_id: str | None = None) -> str:
        message_id = message_id or str(uuid.uuid4())
        raw = body if isinstance(body, bytes) else jsonutil.dumps(body)
        message = OutboxMessage(message_id, OMS_EXCHANGE, self.work_key, "Work", f"corr-{message_id}", raw)
        assert await Publisher(self.connection).publish([message]) == [message_id]
        return message_id

    async def depth(self, queue: str | None = None) -> int:
        channel = await self.connection.channel()  # a channel of its own: a failed passive declare closes it
        try:
            declared = await channel.declare_queue(queue or self.dlq, passive=True)
            return int(declared.declaration_result.message_count or 0)
        finally:
            await channel.close()

    async def echoes(self) -> list[str]:
        texts = []
        while (message := await self.echoed.get(no_ack=True, fail=False)) is not None:
            texts.append(jsonutil.loads(message.body)["text"])
        return texts


@pytest.fixture
async def stage(database_url: str, amqp_url: str) -> AsyncIterator[Stage]:
    name = f"dlqtest_{uuid.uuid4().hex[:8]}"  # queues of its own: the session's vhost is shared
    queue = StageQueue(name, (f"{name}.work",))
    settings = Settings(
        infra=InfraSettings(database_url=database_url, amqp_url=amqp_url),
        stage=StageSettings(delivery_limit=DELIVERY_LIMIT, batch_size=20),
    )
    engine = make_engine(database_url)
    kind = MessageKind(type="Work", exchange=OMS_EXCHANGE, routing_key=f"{name}.work", schema=WorkSchema())
    spec = StageSpec(stage=name, handlers={kind: work}, queue_override=queue)
    worker = StageWorker(spec, settings, engine)
    connection = await aio_pika.connect_robust(amqp_url)
    channel = await connection.channel()
    exchanges = await declare_exchanges(channel)
    echoed = await channel.declare_queue(exclusive=True)
    await echoed.bind(exchanges[OMS_EXCHANGE], f"{name}.echoed")
    task = asyncio.create_task(worker.run())

    async def consuming() -> bool:
        probe = await connection.channel()  # a failed passive declare closes its channel
        try:
            declared = await probe.declare_queue(queue.name, passive=True)
        except Exception:
            return False
        finally:
            if not probe.is_closed:
                await probe.close()
        return (declared.declaration_result.consumer_count or 0) > 0

    await async_wait_until(consuming, timeout=60, message="stage worker consuming")
    yield Stage(queue, channel, connection, echoed, engine, database_url, amqp_url)
    worker.stop()
    await asyncio.wait_for(task, 20)
    await connection.close()
    engine.dispose()


async def oms_dlq(stage: Stage, *args: str, expect: int = 0) -> str:
    """Run ``oms dlq <args>`` as an operator would; returns its output."""
    env = {**os.environ, "OMS_DATABASE_URL": stage.database_url, "OMS_AMQP_URL": stage.amqp_url}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.cli",
        "dlq",
        *args,
        cwd=REPO_ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == expect, f"oms dlq {' '.join(args)} exited {process.returncode}:\n{out!r}\n{err!r}"
    return out.decode()


async def dead_letter_three_ways(stage: Stage, texts: dict[str, str]) -> dict[str, str]:
    """Publish one message per (text, mode); wait until all are dead-lettered; returns text -> message id."""
    ids = {text: await stage.publish({"text": text, "mode": mode}) for text, mode in texts.items()}
    invalid = await stage.publish({"mode": "ok"})  # no text: fails validation
    ids["<invalid>"] = invalid
    await async_wait_until(
        lambda: _depth_is(stage, len(ids)), timeout=60, message=f"{len(ids)} messages in {stage.dlq}"
    )
    return ids


async def _depth_is(stage: Stage, expected: int) -> bool:
    return await stage.depth() == expected


def audit(engine: Engine, queue: str) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(select(dlq_replays).where(dlq_replays.c.queue == queue)))


async def test_dead_letters_of_three_reasons_are_listed_and_shown_with_their_reasons(stage: Stage) -> None:
    ids = await dead_letter_three_ways(stage, {"f1": "fail", "r1": "refuse"})

    listed = json.loads(await oms_dlq(stage, "list", "--queue", stage.dlq, "--json"))
    assert {"queue": stage.dlq, "depth": 3} in listed
    assert [q["queue"] for q in listed][:-1] == dead_letter_queues()  # every known one, then the one asked for

    shown = [json.loads(line) for line in (await oms_dlq(stage, "show", "--queue", stage.dlq, "--json")).splitlines()]
    by_id = {m["message_id"]: m for m in shown}
    assert set(by_id) == set(ids.values())
    assert by_id[ids["<invalid>"]]["reason"] == "invalid"
    assert "text" in by_id[ids["<invalid>"]]["detail"]  # the marshmallow message names the missing field
    assert by_id[ids["r1"]]["reason"] == "refused"
    assert "cannot apply r1 yet" in by_id[ids["r1"]]["detail"]
    failed = by_id[ids["f1"]]
    assert failed["reason"] == "delivery_limit"
    assert "flaky dependency while handling f1" in failed["detail"]  # the last error, from message_failures
    assert failed["headers"]["x-death"][0]["reason"] == "delivery_limit"
    for message in shown:
        assert (message["original_exchange"], message["original_routing_key"]) == (OMS_EXCHANGE, stage.work_key)
        assert message["stage"] == stage.queue.stage
        assert json.loads(message["body"])["mode"] in {"ok", "fail", "refuse"}

    only_refused = await oms_dlq(stage, "show", "--queue", stage.dlq, "--reason", "refused", "--json")
    assert [json.loads(line)["message_id"] for line in only_refused.splitlines()] == [ids["r1"]]
    text_output = await oms_dlq(stage, "show", "--queue", stage.dlq, "--reason", "flaky")
    assert ids["f1"] in text_output and ids["r1"] not in text_output
    assert await stage.depth() == 3  # showing removes nothing


async def test_filtered_replay_sends_exactly_those_back_and_they_complete(stage: Stage) -> None:
    ids = await dead_letter_three_ways(stage, {"f1": "fail", "f2": "fail", "r1": "refuse"})
    HEALED.update({"f1", "f2", "r1"})

    plan = await oms_dlq(stage, "replay", "--queue", stage.dlq, "--reason", "delivery_limit", "--dry-run")
    assert "would replay 2 of 4" in plan
    assert await stage.depth() == 4 and audit(stage.engine, stage.dlq) == []

    out = await oms_dlq(
        stage, "replay", "--queue", stage.dlq, "--reason", "delivery_limit", "--yes", "--actor", "ops-test"
    )
    assert "replayed 2 of 2 selected" in out
    echoes: list[str] = []

    async def both_done() -> bool:
        echoes.extend(await stage.echoes())
        return sorted(echoes) == ["f1", "f2"]

    await async_wait_until(both_done, timeout=30, message="f1 and f2 handled after the replay")
    assert await stage.depth() == 2
    left = await oms_dlq(stage, "show", "--queue", stage.dlq, "--json")
    assert {json.loads(line)["message_id"] for line in left.splitlines()} == {ids["r1"], ids["<invalid>"]}
    rows = audit(stage.engine, stage.dlq)
    assert {(r.message_id, r.outcome, r.actor, r.action) for r in rows} == {
        (ids["f1"], "REPLAYED", "ops-test", "REPLAY"),
        (ids["f2"], "REPLAYED", "ops-test", "REPLAY"),
    }
    assert {(r.target_exchange, r.target_routing_key) for r in rows} == {(OMS_EXCHANGE, stage.work_key)}
    assert rows[0].filters == {"reason": "delivery_limit"}
    with stage.engine.connect() as connection:
        applied = set(
            connection.execute(
                select(tables.inbox.c.message_id).where(tables.inbox.c.stage == stage.queue.stage)
            ).scalars()
        )
    assert applied == {ids["f1"], ids["f2"]}

    # One selected message by id; the invalid one stays until someone purges it.
    await oms_dlq(stage, "replay", "--queue", stage.dlq, "--message-id", ids["r1"], "--yes")
    await async_wait_until(lambda: _echoed(stage, "r1"), timeout=30, message="r1 handled after the replay")
    assert await stage.depth() == 1
    await oms_dlq(stage, "purge", "--queue", stage.dlq, "--reason", "invalid", "--yes", "--actor", "ops-test")
    assert await stage.depth() == 0
    purged = [r for r in audit(stage.engine, stage.dlq) if r.action == "PURGE"]
    assert [(r.message_id, r.outcome) for r in purged] == [(ids["<invalid>"], "PURGED")]
    history = await oms_dlq(stage, "history", "--run-id", purged[0].run_id)
    assert ids["<invalid>"] in history and "PURGE" in history


async def _echoed(stage: Stage, text: str) -> bool:
    return text in await stage.echoes()


async def test_purge_without_confirmation_does_nothing(stage: Stage) -> None:
    await dead_letter_three_ways(stage, {})
    out = await oms_dlq(stage, "purge", "--queue", stage.dlq, expect=1)
    assert "nothing done" in out
    assert await stage.depth() == 1


async def test_a_replayed_duplicate_changes_nothing(stage: Stage) -> None:
    message_id = await stage.publish({"text": "d1"})
    await async_wait_until(lambda: _echoed(stage, "d1"), timeout=30, message="d1 handled")
    # A copy of the applied message sits in the dead-letter queue (say a replay killed before its ack).
    copy = OutboxMessage(
        message_id,
        DEAD_LETTER_EXCHANGE,
        stage.dlq,
        "Work",
        f"corr-{message_id}",
        jsonutil.dumps({"text": "d1"}),
        headers={ORIGINAL_EXCHANGE_HEADER: OMS_EXCHANGE, ORIGINAL_ROUTING_KEY_HEADER: stage.work_key},
    )
    assert await Publisher(stage.connection).publish([copy]) == [message_id]
    await async_wait_until(lambda: _depth_is(stage, 1), timeout=60, message="the copy in the dead-letter queue")

    out = await oms_dlq(stage, "replay", "--queue", stage.dlq, "--yes")
    assert "replayed 1 of 1" in out
    marker = await stage.publish({"text": "marker"})
    echoes: list[str] = []

    async def marker_seen() -> bool:
        echoes.extend(await stage.echoes())
        return "marker" in echoes

    await async_wait_until(marker_seen, timeout=30, message="the marker handled after the replayed copy")
    assert "d1" not in echoes  # the replayed copy was recognised and skipped
    assert await stage.depth() == 0
    with stage.engine.connect() as connection:
        outputs = connection.execute(
            select(tables.outbox.c.message_id).where(tables.outbox.c.correlation_id == f"corr-{message_id}")
        ).all()
    assert len(outputs) == 1  # one echo ever written for it
    assert marker


async def test_operator_requested_replay_runs_as_a_job(stage: Stage) -> None:
    from services.jobs import actors

    ids = await dead_letter_three_ways(stage, {"j1": "refuse", "j2": "refuse"})
    HEALED.update({"j1", "j2"})
    settings = Settings(infra=InfraSettings(database_url=stage.database_url, amqp_url=stage.amqp_url))
    actors.wire(settings, stage.engine)
    # What the jobs worker runs for ``oms dlq replay --background`` (the actor's function, in a thread of ours).
    await asyncio.to_thread(actors.replay_dead_letters.fn, queues=[stage.dlq], reason="refused", actor="ops via jobs")
    echoes: list[str] = []

    async def both_done() -> bool:
        echoes.extend(await stage.echoes())
        return sorted(echoes) == ["j1", "j2"]

    await async_wait_until(both_done, timeout=30, message="j1 and j2 handled after the job's replay")
    assert await stage.depth() == 1  # the invalid one was not selected
    rows = audit(stage.engine, stage.dlq)
    assert {(r.message_id, r.actor) for r in rows} == {(ids["j1"], "ops via jobs"), (ids["j2"], "ops via jobs")}
    with stage.engine.connect() as connection:
        run = connection.execute(
            select(job_runs.c.outcome, job_runs.c.summary)
            .where(job_runs.c.job == "replay_dead_letters")
            .order_by(job_runs.c.id.desc())
            .limit(1)
        ).one()
    assert run.outcome == "OK" and run.summary["replayed"] == 2


# ---- any message at all (issue 9, finding 3): poison bodies and odd headers ----------------------------


async def _taken_by_id(stage: Stage, message_id: str) -> bytes | None:
    """The body of ``message_id`` if it is in the dead-letter queue now (every other message is handed back)."""
    channel = await stage.connection.channel()
    try:
        source = await channel.declare_queue(stage.dlq, passive=True)
        held, body = [], None
        while (message := await source.get(no_ack=False, fail=False)) is not None:
            if message.message_id == message_id and body is None:
                body = message.body
            held.append(message)
        for message in held:
            await message.nack(requeue=True)
        return body
    finally:
        await channel.close()


async def test_poison_bodies_and_odd_headers_are_shown_filtered_replayed_and_purged(stage: Stage) -> None:
    deep = b'{"text":' * 5_000 + b'"x"' + b"}" * 5_000
    binary = b"\xff\xfe\x00\x01\x1b[31mnot json"
    huge = b'{"text":"' + b"x" * (1024 * 1024) + b'"}'
    ids = {
        "deep": await stage.publish(deep),
        "binary": await stage.publish(binary),
        "huge": await stage.publish(huge),
    }
    # Published straight into the dead-letter queue by someone: NUL everywhere, an x-death of the wrong shape.
    odd_id = "odd\x00id"
    odd = OutboxMessage(
        odd_id,
        DEAD_LETTER_EXCHANGE,
        stage.dlq,
        "Odd\x00Type",
        "corr\x00",
        deep,
        headers={
            "x-oms-error": "refused \x00 for a reason",
            "x-death": [{"count": "many", "reason": "delivery\x00limit", "queue": 7}],
            ORIGINAL_EXCHANGE_HEADER: OMS_EXCHANGE,
            ORIGINAL_ROUTING_KEY_HEADER: stage.work_key,
            "x-oms-user": bytearray(b"\x00\xff"),
        },
    )
    assert await Publisher(stage.connection).publish([odd]) == [odd_id]
    await async_wait_until(lambda: _depth_is(stage, 4), timeout=60, message=f"4 messages in {stage.dlq}")

    shown = [json.loads(line) for line in (await oms_dlq(stage, "show", "--queue", stage.dlq, "--json")).splitlines()]
    by_id = {m["message_id"]: m for m in shown}
    assert set(by_id) == {*ids.values(), odd_id}
    assert (by_id[ids["deep"]]["reason"], by_id[ids["deep"]]["detail"]) == (
        "invalid",
        "body refused: nested deeper than 32 levels",
    )
    assert by_id[ids["deep"]]["body_format"] == "text" and by_id[ids["deep"]]["body_bytes"] == len(deep)
    assert by_id[ids["deep"]]["body"].endswith(f"... ({len(deep)} bytes)")
    assert by_id[ids["binary"]]["reason"] == "invalid" and by_id[ids["binary"]]["detail"].startswith("body is not JSON")
    assert by_id[ids["binary"]]["body_format"] == "bytes"
    assert by_id[ids["binary"]]["body"] == repr(binary)  # escaped: NUL and the terminal escape show as text
    assert by_id[ids["huge"]]["detail"] == f"body too large: {len(huge)} bytes (limit {1024 * 1024})"
    assert by_id[odd_id]["reason"] == "refused" and by_id[odd_id]["deaths"] == 1

    text_output = await oms_dlq(stage, "show", "--queue", stage.dlq, "--body-chars", "60")
    assert "\x00" not in text_output and "\x1b" not in text_output
    assert f"body (bytes, {len(binary)} bytes) {binary!r}" in text_output
    assert "odd\\x00id" in text_output and "refused \\x00 for a reason" in text_output
    for filters in (["--order-id", "nothing"], ["--reason", "refused"], ["--type", "odd"], ["--reason", "nested"]):
        await oms_dlq(stage, "show", "--queue", stage.dlq, *filters)
    only_nested = await oms_dlq(stage, "show", "--queue", stage.dlq, "--reason", "nested", "--json")
    assert [json.loads(line)["message_id"] for line in only_nested.splitlines()] == [ids["deep"]]

    # Replay sends back the exact bytes: the stage refuses them again, at once, and the copy is the original.
    out = await oms_dlq(
        stage, "replay", "--queue", stage.dlq, "--message-id", ids["binary"], "--message-id", "odd\\x00id", "--yes"
    )
    assert "replayed 2 of 2 selected" in out
    await async_wait_until(lambda: _depth_is(stage, 4), timeout=60, message="both refused again by the stage")
    assert await _taken_by_id(stage, ids["binary"]) == binary
    assert await _taken_by_id(stage, odd_id) == deep

    out = await oms_dlq(stage, "purge", "--queue", stage.dlq, "--yes", "--actor", "ops-test")
    assert "purged 4 of 4 selected" in out
    assert await stage.depth() == 0
    purged = {r.message_id: r for r in audit(stage.engine, stage.dlq) if r.action == "PURGE"}
    assert set(purged) == {*ids.values(), "odd\\x00id"}  # stored escaped: Postgres text holds no NUL
    assert purged["odd\\x00id"].correlation_id == "corr\\x00"


# ---- the tool cannot claim what it did not do (issue 12, item 5) ----------------------------------------


async def _put_dead_letters(stage: Stage, count: int, message_type: str = "Work") -> list[str]:
    """Publish ``count`` dead letters straight into the stage's dead-letter queue; returns their ids."""
    messages = [
        OutboxMessage(
            str(uuid.uuid4()),
            DEAD_LETTER_EXCHANGE,
            stage.dlq,
            message_type,
            f"corr-{i}",
            jsonutil.dumps({"text": f"bulk-{i}"}),
            headers={ORIGINAL_EXCHANGE_HEADER: OMS_EXCHANGE, ORIGINAL_ROUTING_KEY_HEADER: stage.work_key},
        )
        for i in range(count)
    ]
    ids = [m.message_id for m in messages]
    assert await Publisher(stage.connection).publish(messages) == ids
    return ids


async def _queued_ids(stage: Stage) -> list[str]:
    """The ids of every message in the dead-letter queue now (all handed back)."""
    channel = await stage.connection.channel()
    try:
        source = await channel.declare_queue(stage.dlq, passive=True)
        held = []
        while (message := await source.get(no_ack=False, fail=False)) is not None:
            held.append(message)
        if held:
            await held[-1].nack(multiple=True, requeue=True)
        return [str(m.message_id) for m in held]
    finally:
        await channel.close()


async def test_a_purge_of_many_leaves_none_it_reports_and_audits_exactly_those(stage: Stage) -> None:
    purged = await _put_dead_letters(stage, 240)
    kept = await _put_dead_letters(stage, 30, message_type="Other")
    await async_wait_until(lambda: _depth_is(stage, 270), timeout=30, message="270 messages in the dead-letter queue")

    out = await oms_dlq(stage, "purge", "--queue", stage.dlq, "--type", "Work", "--yes", "--actor", "ops-test")
    assert "purged 240 of 240 selected (270 in the queue)" in out
    assert "failed" not in out
    left = await _queued_ids(stage)
    assert sorted(left) == sorted(kept)
    assert not set(left) & set(purged)
    rows = audit(stage.engine, stage.dlq)
    assert sorted(r.message_id for r in rows) == sorted(purged)  # one row per removed message, no more
    assert {(r.action, r.outcome, r.actor) for r in rows} == {("PURGE", "PURGED", "ops-test")}


def _lose_acks_of(monkeypatch: pytest.MonkeyPatch, lost: set[str]) -> None:
    """Make the client's ack of these messages vanish, as the broker drops acks sent just before a close."""
    real_ack = aio_pika.IncomingMessage.ack

    async def ack(self: aio_pika.IncomingMessage, multiple: bool = False) -> None:
        if self.message_id in lost:
            return
        await real_ack(self, multiple)

    monkeypatch.setattr(aio_pika.IncomingMessage, "ack", ack)


def _lose_first_acks_of(monkeypatch: pytest.MonkeyPatch, lost: set[str]) -> list[str]:
    """Make the client's first ack of these messages vanish, as a quorum queue's channel drops the settlements it
    stashed when it closes; later acks of them work. Returns the ids of the acks that vanished, in order."""
    real_ack = aio_pika.IncomingMessage.ack
    dropped: list[str] = []

    async def ack(self: aio_pika.IncomingMessage, multiple: bool = False) -> None:
        if self.message_id in lost and self.message_id not in dropped:
            dropped.append(self.message_id)
            return
        await real_ack(self, multiple)

    monkeypatch.setattr(aio_pika.IncomingMessage, "ack", ack)
    return dropped


async def test_acks_the_broker_dropped_are_sent_again_and_everything_is_removed(
    stage: Stage, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.jobs import deadletters

    ids = await _put_dead_letters(stage, 120)
    kept = await _put_dead_letters(stage, 10, message_type="Other")
    await async_wait_until(lambda: _depth_is(stage, 130), timeout=30, message="130 messages in the dead-letter queue")
    # More than three reads' worth of re-acks (REACK_LIMIT each), so the check needs four rounds: as many acks as
    # a busy broker once dropped in a purge of 240, more than a check of four reads could send again.
    lost = set(ids[: 3 * deadletters.REACK_LIMIT + 8])
    dropped = _lose_first_acks_of(monkeypatch, lost)

    report = await deadletters.purge(
        stage.amqp_url,
        stage.engine,
        stage.dlq,
        deadletters.Selection(type="Work"),
        actor="ops-test",
        batch_size=40,
        progress=None,
    )
    assert sorted(dropped) == sorted(lost)  # the pass's acks of them did vanish
    assert (report.selected, report.done, report.failed, report.not_removed) == (120, 120, 0, 0), report.errors
    assert sorted(await _queued_ids(stage)) == sorted(kept)
    rows = audit(stage.engine, stage.dlq)
    assert sorted(r.message_id for r in rows) == sorted(ids)
    assert {(r.outcome, r.detail) for r in rows} == {("PURGED", None)}


async def test_a_lost_ack_is_reported_not_removed_and_not_audited(
    stage: Stage, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.jobs import deadletters
    from tools import dlq

    ids = await _put_dead_letters(stage, 60)
    await async_wait_until(lambda: _depth_is(stage, 60), timeout=30, message="60 messages in the dead-letter queue")
    lost = set(ids[5:60:10])  # 6 of them, spread over the batches
    _lose_acks_of(monkeypatch, lost)

    report = await deadletters.purge(
        stage.amqp_url, stage.engine, stage.dlq, actor="ops-test", batch_size=25, progress=None
    )
    assert (report.selected, report.done, report.failed, report.not_removed) == (60, 54, 6, 6)
    assert set(report.errors) == lost
    assert sorted(await _queued_ids(stage)) == sorted(lost)
    rows = audit(stage.engine, stage.dlq)
    assert sorted(r.message_id for r in rows) == sorted(set(ids) - lost)
    # No row left "acked, not yet checked", none for the lost ones.
    assert {(r.outcome, r.detail) for r in rows} == {("PURGED", None)}

    dlq._summarise(report, "purge")
    printed = capsys.readouterr().out
    assert "purged 54 of 60 selected" in printed
    assert "6 of them acked but still there, not audited" in printed

    # A replay whose ack is lost: republished (the stage handles it), but it stays in the dead-letter queue,
    # and the audit says exactly that.
    HEALED.update(f"bulk-{i}" for i in range(60))
    again = sorted(lost)[:2]
    monkeypatch.undo()  # acks work again, but for one
    _lose_acks_of(monkeypatch, {again[0]})
    report = await deadletters.replay(
        stage.amqp_url,
        stage.engine,
        stage.dlq,
        deadletters.Selection(message_ids=frozenset(again)),
        actor="ops-test",
    )
    assert (report.done, report.not_removed) == (1, 1)
    assert set(report.errors) == {again[0]}
    assert sorted(await _queued_ids(stage)) == sorted(lost - {again[1]})
    replays = {r.message_id: r for r in audit(stage.engine, stage.dlq) if r.action == "REPLAY"}
    assert {k: v.outcome for k, v in replays.items()} == {again[0]: "FAILED", again[1]: "REPLAYED"}
    assert "still in the dead-letter queue" in replays[again[0]].detail


async def test_show_prompts_and_history_say_what_there_is(stage: Stage) -> None:
    await _put_dead_letters(stage, 1)
    await async_wait_until(lambda: _depth_is(stage, 1), timeout=30, message="1 message in the dead-letter queue")
    shown = await oms_dlq(stage, "show", "--queue", stage.dlq)
    assert "order -" in shown and "None" not in shown  # no order id in the body: a dash, not "None"
    history = await oms_dlq(stage, "history", "--run-id", str(uuid.uuid4()))
    assert "no audit rows for run" in history

    # The prompts say how many messages they would touch (asked only on a terminal: a pty stands in for one).
    purge = await _answer(stage, "no", "purge", "--queue", stage.dlq)
    assert f"Purge 1 message(s) (1 in {stage.dlq}) for good?" in purge and "nothing done" in purge
    replay = await _answer(stage, "n", "replay", "--queue", stage.dlq, "--type", "Nothing")
    assert "Replay 0 message(s) (none anywhere) now selected?" in replay and "nothing done" in replay
    assert await stage.depth() == 1


async def _answer(stage: Stage, answer: str, *args: str) -> str:
    """Run ``oms dlq <args>`` on a terminal, answering its question with ``answer``; returns its output."""
    import pty

    controller, terminal = pty.openpty()
    try:
        env = {**os.environ, "OMS_DATABASE_URL": stage.database_url, "OMS_AMQP_URL": stage.amqp_url}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tools.cli",
            "dlq",
            *args,
            cwd=REPO_ROOT,
            env=env,
            stdin=terminal,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        os.write(controller, f"{answer}\n".encode())  # waits in the terminal until the prompt reads it
        out, err = await asyncio.wait_for(process.communicate(), 120)
    finally:
        os.close(controller)
        os.close(terminal)
    assert process.returncode == 1, f"{out!r} {err!r}"
    return out.decode()


async def test_rows_a_killed_pass_left_unchecked_are_settled_by_the_next(stage: Stage) -> None:
    from services.jobs import deadletters

    (still_there,) = await _put_dead_letters(stage, 1)
    await async_wait_until(lambda: _depth_is(stage, 1), timeout=30, message="1 message in the dead-letter queue")
    # What a purge and a replay killed between their acks and their checks leave: rows that claim nothing yet.
    killed = [("PURGE", "gone-purged"), ("PURGE", still_there), ("REPLAY", "gone-replayed"), ("REPLAY", still_there)]
    with stage.engine.begin() as connection:
        connection.execute(
            dlq_replays.insert(),
            [
                {
                    "run_id": str(uuid.uuid4()),
                    "action": action,
                    "actor": "killed",
                    "queue": stage.dlq,
                    "message_id": message_id,
                    "outcome": "FAILED",
                    "detail": deadletters.UNCHECKED,
                    "filters": {},
                    "created_at": datetime.now(UTC),
                }
                for action, message_id in killed
            ],
        )

    await oms_dlq(stage, "purge", "--queue", stage.dlq, "--type", "NoSuchType", "--yes")  # selects nothing
    rows = {(r.action, r.message_id): r for r in audit(stage.engine, stage.dlq) if r.actor == "killed"}
    assert {key: (r.outcome, r.detail) for key, r in rows.items()} == {
        ("PURGE", "gone-purged"): ("PURGED", None),
        ("REPLAY", "gone-replayed"): ("REPLAYED", None),
        ("REPLAY", still_there): (
            "FAILED",
            "republished (confirmed), but still in the dead-letter queue after its ack",
        ),
    }  # the purge row of the message still there is gone: that purge removed nothing
    assert await _queued_ids(stage) == [still_there]
