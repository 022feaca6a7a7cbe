"""Operations end to end: every process's metrics and health, the jobs worker, and dead-letter replays.

The system here runs like ``oms up`` runs it: every worker, the relay, the simulated venue, the front end, the
jobs worker and the scheduler, each with its own metrics port.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dramatiq
import pytest
from aio_pika.abc import AbstractRobustConnection
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, func, select

from common import jsonutil
from common.messages.exchanges import DEAD_LETTER_EXCHANGE, OMS_EXCHANGE
from common.messages.headers import ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER
from common.messaging.connection import connect
from common.messaging.publisher import Publisher
from common.messaging.topology import declare_topology
from common.settings import REPO_ROOT
from common.store import tables
from common.store.db import make_engine
from common.store.field_crypto import DataKeys, with_data_keys
from common.store.outbox import OutboxMessage
from common.store.tables import dlq_replays, job_runs
from services.api.order_events import order_events
from services.jobs.config import JOBS_QUEUE
from services.jobs.session import SessionCalendar
from tests.e2e.conftest import E2E_ENV, VENUE_ENV
from tests.e2e.support import count, wait_for_order, wait_for_state
from tests.support.api import TEST_SECRET, bearer
from tests.support.orders import event_records, trade_decision
from tests.support.polling import async_wait_until, wait_until
from tools import infra, migrate
from tools.processes import STAGES, ProcessSpec, Supervisor, system
from tools.sandbox import consumers_ready
from tools.seed import seed_demo

if TYPE_CHECKING:
    from tools.infra import InfraUrls

pytestmark = pytest.mark.e2e
D = Decimal
INTAKE_DLQ = "oms.intake.dlq"
# Processes that serve /health/live and /health/ready beside /metrics, and what their readiness checks.
WITH_HEALTH = {*STAGES, "outbox_relay", "jobs_worker", "jobs_scheduler", "venue_sim"}
READINESS = {"database": "UP", "broker": "UP"}
READINESS_OF = {"venue_sim": {"broker": "UP"}}  # the venue reads the database only at start
# The metrics each process must name.
EXPECTED = {
    **{stage: {"oms_stage_messages", "oms_stage_batch_seconds", "oms_stage_batch_size"} for stage in STAGES},
    "outbox_relay": {"oms_outbox_relayed", "oms_outbox_lag_seconds"},
    "jobs_worker": {"oms_orders", "oms_dead_letter_depth", "oms_job_runs", "oms_job_seconds"},
    "jobs_scheduler": {"oms_jobs_enqueued"},
    "venue_sim": set(),
    "api": {"oms_http_requests", "oms_http_request_seconds"},
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class OpsSystem:
    database_url: str
    amqp_url: str
    vhost: str
    engine: Engine
    supervisor: Supervisor
    ports: dict[str, int]  # process -> metrics port (the api: its REST port)
    management_url: str
    data_keys_file: Path  # the processes' key ring (cancel reasons are stored encrypted)

    def url(self, process: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[process]}{path}"


@pytest.fixture(scope="module")
def ops(infra_urls: InfraUrls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpsSystem]:
    name = f"oms_ops_{uuid.uuid4().hex[:10]}"
    database_url = infra.create_database(name, infra_urls.database_url)
    infra.create_vhost(name, infra_urls.management_url)
    amqp_url = infra.amqp_url_for_vhost(infra_urls.amqp_url, name)
    migrate.upgrade(database_url)
    engine = make_engine(database_url)
    with engine.begin() as connection:
        seed_demo(connection)
    specs = system(with_venue=True, with_api=True, with_jobs=True)
    ports = {spec.name: _free_port() for spec in specs}
    grpc_port = _free_port()
    env = {
        "OMS_DATABASE_URL": database_url,
        "OMS_AMQP_URL": amqp_url,
        **E2E_ENV,
        **VENUE_ENV,
        "OMS_METRICS_HOST": "127.0.0.1",
        "OMS_GAUGES_EVERY_SECONDS": "0.5",
        # The jobs the scheduler starts must not race the tests: reconcile only what is stuck for an hour.
        "OMS_RECONCILE_AFTER_SECONDS": "3600",
        "OMS_JWT_SECRET": TEST_SECRET,
        "OMS_REST_PORT": str(ports["api"]),
        "OMS_GRPC_PORT": str(grpc_port),
        "OMS_API_HOST": "127.0.0.1",
        "OMS_DATA_DIR": str(tmp_path_factory.mktemp("ops-data")),
        "OMS_DATA_KEYS_FILE": str(tmp_path_factory.mktemp("ops-keys") / "data-keys.json"),
    }
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the front end makes its own
    supervisor = Supervisor(env, REPO_ROOT / ".data" / "logs" / name, REPO_ROOT, die_with_parent=True)
    supervisor.start_all(
        ProcessSpec(
            s.name,
            s.module,
            ("--workers", "1") if s.name == "api" else s.args,
            {"OMS_METRICS_PORT": str(ports[s.name])},
        )
        for s in specs
    )
    try:
        missing = consumers_ready(infra_urls.management_url, name, [f"oms.{s}" for s in STAGES] + [JOBS_QUEUE], 90)
        if missing or supervisor.dead():
            logs = "\n".join(f"--- {r.spec.name}\n{supervisor.tail(r.spec.name)}" for r in supervisor.dead())
            pytest.fail(f"system did not start: no consumer on {missing}\n{logs}")
        running = OpsSystem(
            database_url,
            amqp_url,
            name,
            engine,
            supervisor,
            ports,
            infra_urls.management_url,
            Path(env["OMS_DATA_KEYS_FILE"]),
        )
        wait_until(lambda: _status(running.url("api", "/health/ready")) == 200, timeout=60, message="api ready")
        yield running
    finally:
        supervisor.stop_all()
        engine.dispose()
        infra.delete_vhost(name, infra_urls.management_url)
        infra.drop_database(name, infra_urls.database_url)


@pytest.fixture
async def amqp(ops: OpsSystem) -> AsyncIterator[AbstractRobustConnection]:
    connection = await connect(ops.amqp_url, "oms.e2e-ops-test")
    await declare_topology(await connection.channel(), 5)
    yield connection
    await connection.close()


# --------------------------------------------------------------------------- helpers


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


def scrape(ops: OpsSystem, process: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The process's metrics: family name -> [(labels, value)] of its samples."""
    status, text = _get(ops.url(process, "/metrics"))
    assert status == 200, f"{process} /metrics answered {status}"
    families: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = [(dict(s.labels), s.value) for s in family.samples if not s.name.endswith("_created")]
    return families


def value(ops: OpsSystem, process: str, family: str, **labels: str) -> float:
    """The sum of a family's samples whose labels include ``labels`` (0 when there are none yet)."""
    samples = scrape(ops, process).get(family, [])
    return sum(v for sample_labels, v in samples if labels.items() <= sample_labels.items())


def post_order(ops: OpsSystem, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        ops.url("api", "/orders"),
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": bearer()},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


async def send(connection: AbstractRobustConnection, body: dict[str, Any]) -> str:
    """Publish a trade decision; returns its message id."""
    return await Publisher(connection).publish_json(
        OMS_EXCHANGE, "intake.decision", "TradeDecision", body, correlation_id=body.get("decisionId")
    )


def dead_letter_copy(message_id: str, body: dict[str, Any]) -> OutboxMessage:
    """A trade decision as it sits in ``oms.intake.dlq`` after the intake dead-lettered it."""
    return OutboxMessage(
        message_id=message_id,
        exchange=DEAD_LETTER_EXCHANGE,
        routing_key=INTAKE_DLQ,
        type="TradeDecision",
        correlation_id=str(body["decisionId"]),
        body=jsonutil.dumps(body),
        headers={ORIGINAL_EXCHANGE_HEADER: OMS_EXCHANGE, ORIGINAL_ROUTING_KEY_HEADER: "intake.decision"},
    )


async def dlq_depth(connection: AbstractRobustConnection) -> int:
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(INTAKE_DLQ, passive=True)
        return int(declared.declaration_result.message_count or 0)
    finally:
        await channel.close()


async def replay_process(ops: OpsSystem, *args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "OMS_DATABASE_URL": ops.database_url, "OMS_AMQP_URL": ops.amqp_url}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.cli",
        "dlq",
        "replay",
        "--stage",
        "intake",
        "--yes",
        *args,
        cwd=REPO_ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


def replayed(engine: Engine, message_ids: set[str] | None = None, *, checked: bool = True) -> set[str]:
    """Message ids the audit says were replayed; ``checked=False``: also those acked but not yet checked gone
    (a pass writes a row before each ack and settles it once it has seen the message leave the queue)."""
    query = select(dlq_replays.c.message_id).where(dlq_replays.c.queue == INTAKE_DLQ)
    query = query.where(dlq_replays.c.outcome == "REPLAYED") if checked else query
    with engine.connect() as connection:
        ids = set(connection.execute(query).scalars())
    return ids if message_ids is None else ids & message_ids


# --------------------------------------------------------------------------- metrics and health


def test_every_process_answers_metrics_and_health(ops: OpsSystem) -> None:
    for process, names in EXPECTED.items():
        families = scrape(ops, process) if process != "api" else None
        if families is not None:
            assert names <= set(families), f"{process} lacks {names - set(families)}"
        if process in WITH_HEALTH:
            assert _status(ops.url(process, "/health/live")) == 200, process
            status, text = _get(ops.url(process, "/health/ready"))
            assert status == 200, f"{process} not ready: {text}"
            assert json.loads(text)["checks"] == READINESS_OF.get(process, READINESS)
    assert _status(ops.url("api", "/health/live")) == 200
    assert _status(ops.url("api", "/health/ready")) == 200


async def test_metrics_move_when_orders_flow(ops: OpsSystem, amqp: AbstractRobustConnection) -> None:
    handled = {stage: value(ops, stage, "oms_stage_messages", stage=stage, outcome="handled") for stage in STAGES}
    filled_before = value(ops, "jobs_worker", "oms_orders", status="FILLED")
    invalid_before = value(ops, "intake", "oms_stage_messages", stage="intake", outcome="invalid")

    decisions = [trade_decision(accountId="ACC-002", symbol="MSFT", quantity=D("10")) for _ in range(5)]
    for body in decisions:
        await send(amqp, body)
    created = post_order(ops, {"accountId": "ACC-002", "symbol": "SPY", "side": "BUY", "type": "MARKET", "quantity": 5})
    await send(amqp, {"decisionId": str(uuid.uuid4()), "accountId": "ACC-002"})  # invalid: dead-lettered
    for body in decisions:
        order = await wait_for_order(ops.engine, "ACC-002", body["decisionId"])
        await wait_for_state(ops.engine, order.id, "FILLED")
    await wait_for_state(ops.engine, created["id"], "FILLED")

    def moved() -> bool:
        now = {stage: value(ops, stage, "oms_stage_messages", stage=stage, outcome="handled") for stage in STAGES}
        assert now["intake"] >= handled["intake"] + 5, now  # the REST order skips the intake queue
        for stage in ("risk_gate", "router", "settlement"):
            assert now[stage] >= handled[stage] + 6, now
        assert now["execution_handler"] >= handled["execution_handler"] + 18, now  # ack and two fills each
        return True

    wait_until(moved, timeout=30, message="stage counters")
    assert value(ops, "intake", "oms_stage_messages", stage="intake", outcome="invalid") == invalid_before + 1
    assert value(ops, "risk_gate", "oms_stage_batch_seconds", stage="risk_gate") > 0  # histogram samples
    wait_until(
        lambda: value(ops, "jobs_worker", "oms_orders", status="FILLED") >= filled_before + 6,
        timeout=30,
        message="orders gauge",
    )
    wait_until(
        lambda: value(ops, "jobs_worker", "oms_dead_letter_depth", queue=INTAKE_DLQ) >= 1,
        timeout=30,
        message="dead-letter depth gauge",
    )
    # The REST order's rows were published by the relay (the front end does not publish itself).
    assert value(ops, "outbox_relay", "oms_outbox_relayed") >= 2
    status, text = _get(ops.url("api", "/metrics"))
    assert status == 200 and 'oms_http_requests_total{endpoint="/orders",method="POST",status="201"}' in text
    await _purge_intake_dlq(ops)


async def _purge_intake_dlq(ops: OpsSystem) -> None:
    env = {**os.environ, "OMS_DATABASE_URL": ops.database_url, "OMS_AMQP_URL": ops.amqp_url}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.cli",
        "dlq",
        "purge",
        "--stage",
        "intake",
        "--yes",
        cwd=REPO_ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert await process.wait() == 0


# --------------------------------------------------------------------------- jobs


async def test_day_order_working_at_the_close_is_canceled_at_the_venue(
    ops: OpsSystem, amqp: AbstractRobustConnection
) -> None:
    body = trade_decision(accountId="ACC-001", symbol="AAPL", type="LIMIT", price=D("150.00"), timeInForce="DAY")
    await send(amqp, body)
    order = await wait_for_order(ops.engine, "ACC-001", body["decisionId"])
    await wait_for_state(ops.engine, order.id, "OPEN")
    # Ask the running jobs worker to expire as if the AAPL session had just closed.
    close = SessionCalendar.of("America/New_York", "16:00").for_instrument(time(16, 0), "America/New_York")
    at = close.next_close(datetime.now(UTC))
    assert at is not None
    started = datetime.now(UTC)
    broker = RabbitmqBroker(url=ops.amqp_url, confirm_delivery=True)
    try:
        broker.enqueue(
            dramatiq.Message(
                queue_name=JOBS_QUEUE,
                actor_name="expire_day_orders",
                args=(),
                kwargs={"now": (at + timedelta(seconds=1)).isoformat()},
                options={},
            )
        )
    finally:
        broker.close()

    row = await wait_for_state(ops.engine, order.id, "CANCELED", timeout=60)
    assert row.status == "CANCELED"
    # As the API shows them: the cancel's reason is stored encrypted (common.store.field_crypto).
    with with_data_keys(ops.engine, DataKeys(ops.data_keys_file)).connect() as connection:
        kinds = [(e["type"], e["payload"].get("reason")) for e in order_events(connection, order.id)]
    assert ("CANCEL_REQUESTED", "DAY order expired at session close") in kinds
    assert (
        count(
            ops.engine,
            "SELECT count(*) FROM execution_reports WHERE order_id = :id AND exec_type = 'CANCELED'",
            id=order.id,
        )
        == 1
    )  # the venue answered the cancel it was sent
    with ops.engine.connect() as connection:
        runs = connection.execute(
            select(job_runs.c.outcome, job_runs.c.summary).where(
                job_runs.c.job == "expire_day_orders", job_runs.c.started_at >= started
            )
        ).all()
    assert [(r.outcome, r.summary["cancel_requested"]) for r in runs] == [("OK", 1)]


# --------------------------------------------------------------------------- dead-letter replays


async def test_replay_killed_mid_way_loses_no_message(ops: OpsSystem, amqp: AbstractRobustConnection) -> None:
    total = 600
    bodies = {
        str(uuid.uuid4()): trade_decision(accountId="ACC-002", symbol="MSFT", quantity=D("1")) for _ in range(total)
    }
    ids = set(bodies)
    assert await Publisher(amqp).publish([dead_letter_copy(mid, body) for mid, body in bodies.items()]) == list(bodies)
    await async_wait_until(lambda: _depth_at_least(amqp, total), timeout=30, message="dead letters in place")

    process = await replay_process(ops, "--batch", "10", "--actor", "e2e-killer")
    await async_wait_until(
        lambda: len(replayed(ops.engine, ids, checked=False)) >= 60 or process.returncode is not None,
        timeout=60,
        interval=0.01,
        message="the replay under way",
    )
    process.send_signal(signal.SIGKILL)
    await process.wait()
    assert process.returncode == -signal.SIGKILL, "the replay finished before it could be killed"
    done_before_kill = replayed(ops.engine, ids, checked=False)
    assert 0 < len(done_before_kill) < total

    # The broker gives the killed tool's unacked messages back: every message is replayed or waiting again.
    # (Polled on the queue itself: the management API's unacked figure is up to 5 s old.)
    async def none_missing() -> bool:
        return await dlq_depth(amqp) + len(done_before_kill) >= total

    await async_wait_until(
        none_missing,
        timeout=60,
        message=lambda: f"every dead letter replayed or back in the queue ({len(done_before_kill)} replayed)",
    )
    # An operator runs the replay again; a pass takes what the queue held when it began, so a message the
    # broker returned a moment late needs one more pass.
    # A pass whose acks the broker dropped says so (exit 1, "acked but still there") and audits nothing for
    # them: they are still in the queue, and the next pass takes them.
    for _ in range(5):
        finish = await replay_process(ops, "--actor", "e2e-finisher")
        out, err = await finish.communicate()
        assert finish.returncode == 0 or b"not removed" in err + out, (out + err).decode()
        if await dlq_depth(amqp) == 0:
            break
    assert await dlq_depth(amqp) == 0
    assert replayed(ops.engine, ids) == ids

    decision_ids = [str(body["decisionId"]) for body in bodies.values()]

    def all_filled() -> bool:
        with ops.engine.connect() as connection:
            states = connection.execute(
                select(tables.orders.c.state, func.count())
                .where(tables.orders.c.client_order_id.in_(decision_ids))
                .group_by(tables.orders.c.state)
            ).all()
        assert dict(states) == {"FILLED": total}, dict(states)
        return True

    wait_until(all_filled, timeout=120, interval=0.5, message="every replayed decision filled once")
    with ops.engine.connect() as connection:
        applied = connection.execute(
            select(func.count()).where(tables.inbox.c.stage == "intake", tables.inbox.c.message_id.in_(ids))
        ).scalar()
        created = connection.execute(
            select(func.count())
            .select_from(tables.order_events.join(tables.orders, tables.orders.c.id == tables.order_events.c.order_id))
            .where(tables.orders.c.client_order_id.in_(decision_ids), tables.order_events.c.type == "ORDER_CREATED")
        ).scalar()
    assert applied == total and created == total


async def _depth_at_least(connection: AbstractRobustConnection, expected: int) -> bool:
    return await dlq_depth(connection) >= expected


async def test_a_replayed_duplicate_changes_nothing(ops: OpsSystem, amqp: AbstractRobustConnection) -> None:
    body = trade_decision(accountId="ACC-002", symbol="MSFT", quantity=D("3"))
    message_id = await send(amqp, body)
    order = await wait_for_order(ops.engine, "ACC-002", body["decisionId"])
    row = await wait_for_state(ops.engine, order.id, "FILLED")
    events_before = len(event_records(ops.engine, order.id))
    # The same message, already applied, finds its way into the dead-letter queue and is replayed.
    assert await Publisher(amqp).publish([dead_letter_copy(message_id, body)]) == [message_id]
    await async_wait_until(lambda: _depth_at_least(amqp, 1), timeout=60, message="the copy dead-lettered")
    process = await replay_process(ops, "--message-id", message_id)
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert b"replayed 1 of 1" in out
    # A later decision through the same queue shows the copy has been handled (skipped) by now.
    marker = trade_decision(accountId="ACC-002", symbol="MSFT", quantity=D("1"))
    await send(amqp, marker)
    await wait_for_order(ops.engine, "ACC-002", marker["decisionId"])
    assert len(event_records(ops.engine, order.id)) == events_before
    again = await wait_for_state(ops.engine, order.id, "FILLED")
    assert (again.version, again.filled_quantity) == (row.version, row.filled_quantity)
    assert count(ops.engine, "SELECT count(*) FROM orders WHERE client_order_id = :d", d=body["decisionId"]) == 1
    assert await dlq_depth(amqp) == 0
