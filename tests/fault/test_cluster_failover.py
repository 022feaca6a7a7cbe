"""The failure test on a cluster (issue 14): the whole system as a user runs it on a three-node RabbitMQ cluster
(``./oms infra start --rabbit-nodes 3``) with two replicas of every stage (``./oms up --detach --replicas all=2``),
orders flowing steadily, and meanwhile:

- ``kill -9`` of the node that leads most stage partition queues (``./oms infra node kill N``), until the flow
  resumes on the other two;
- that node started again (``./oms infra node start N``), rejoining the cluster;
- ``kill -9`` of one replica of each stage (``<stage>-2``), which the supervisor restarts.

Afterwards every order is FILLED, no fill was booked twice, positions equal the sum of the confirmations, no dead
letter was produced, the outbox is empty and ``oms check`` is clean. One line sums it up:
``cluster failover: orders N, faults F, lost 0, doubled 0, stuck 0, longest pause X.Xs``, the pause being the
longest gap between consecutive ORDER_FILLED events of the stream during the faults (from the data).

Its nodes take fixed ports below Linux's ephemeral range (32768-60999), so that a node started again mid-test
cannot find its port taken as the local end of a client's connection: AMQP 31781-31783, management
15781-15783, distribution 25781-25783 (tests/integration/test_rabbit_cluster.py takes 31771-31773 ...).
About 95 s on a 2-core machine, 40 of them the cluster's boot and the processes' start.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from aio_pika.abc import AbstractRobustConnection
from sqlalchemy import Engine, text

from common.messages.catalogue import STAGES, TRADE_DECISION
from common.messages.exchanges import OMS_EXCHANGE
from common.messaging.connection import connect
from common.messaging.topology import VENUE_QUEUE, all_stage_queues
from common.settings import amqp_node_urls
from tests.fault.harness import Instance, decision, filled, kill_and_await_restart, order_trail, progress, rows, scalar
from tests.support.invariants import assert_invariants_hold
from tests.support.polling import async_wait_until
from tools.infra import rabbit_cluster
from tools.infra.settings import RABBIT_PASSWORD, RABBIT_USER, ServerSettings

pytestmark = [pytest.mark.fault, pytest.mark.timeout(900)]

D = Decimal
NODES = 3
AMQP_PORT, MANAGEMENT_PORT, DIST_PORT = 31781, 15781, 25781
REPLICAS = 2
RATE = 16.0  # decisions a second: steady, well under what two replicas per stage carry on 2 cores
# Two seeded margin accounts and four of the test's own, so that the account-keyed partitions (intake's hash
# exchange, risk.check) are all in use; margin accounts, so no buying-power limit rejects the stream's buys.
ACCOUNTS = ("ACC-001", "ACC-002", "ACC-CF-1", "ACC-CF-2", "ACC-CF-3", "ACC-CF-4")
SYMBOLS = ("AAPL", "MSFT", "SPY")
FINAL = ("FILLED", "CANCELED", "REJECTED", "EXPIRED")
# Every process `./oms up` runs (10) plus a second replica of each stage.
PROCESS_COUNT = 10 + len(STAGES) * (REPLICAS - 1)
# Deadlines of the waits for the system (generous: other work may share the machine); none is a sleep.
FLOW_SECONDS = 180.0
DRAIN_SECONDS = 300.0


@dataclass
class Stream:
    """The strategy service: decisions at a steady rate, each with its account in ``x-account-id`` (intake's
    partition), published until the broker confirms it (through a connection that fails over among the nodes)."""

    connection: AbstractRobustConnection
    strategy: str
    sent: list[str] = field(default_factory=list)
    running: bool = True
    retries: int = 0

    async def run(self) -> None:
        channel = await self.connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(OMS_EXCHANGE)
        for index in itertools.count():
            if not self.running:
                return
            account = ACCOUNTS[index % len(ACCOUNTS)]
            symbol = SYMBOLS[(index // len(ACCOUNTS)) % len(SYMBOLS)]
            body, message = decision(index, account, symbol, self.strategy)
            started = time.monotonic()
            delay = 0.2
            while self.running:  # as a strategy service must: the same message again until the broker has it
                try:
                    if channel.is_closed:
                        channel = await self.connection.channel(publisher_confirms=True)
                        exchange = await channel.get_exchange(OMS_EXCHANGE)
                    await exchange.publish(message, routing_key=TRADE_DECISION.routing_key, mandatory=True, timeout=5)
                    self.sent.append(str(body["decisionId"]))
                    break
                except Exception:
                    self.retries += 1
                    # A new channel for the next try: a nack may be for good on this one (a quorum queue whose
                    # leader was lost as the channel first published to it, RabbitMQ 3.10).
                    with contextlib.suppress(Exception):
                        await channel.close()
                    await asyncio.sleep(delay)  # back-off while the connection moves to another node
                    delay = min(delay * 2, 2.0)
            await asyncio.sleep(max(0.0, 1 / RATE - (time.monotonic() - started)))


@dataclass
class Faults:
    """What was injected, with what the test saw of each."""

    injected: list[str] = field(default_factory=list)

    def add(self, name: str) -> None:
        self.injected.append(name)
        print(f"cluster failover: injected {name}", flush=True)


# --------------------------------------------------------------------------------------- the cluster's nodes


def _node(settings: ServerSettings, index: int) -> ServerSettings:
    return rabbit_cluster.node_settings(settings, index, NODES)


def _management_get(settings: ServerSettings, path: str, skip: int | None = None) -> Any:
    """GET ``path`` of the management API of the first node that answers (never node ``skip``, the one down)."""
    errors = []
    for index in range(1, NODES + 1):
        if index == skip:
            continue
        url = f"{_node(settings, index).urls.management_url}{path}"
        try:
            answer = requests.get(url, auth=(RABBIT_USER, RABBIT_PASSWORD), timeout=5)
            answer.raise_for_status()
            return answer.json()
        except requests.RequestException as exc:
            errors.append(f"node {index}: {exc}")
    raise AssertionError(f"no node's management API answers {path}: {errors}")


def _queues(settings: ServerSettings, skip: int | None = None) -> dict[str, dict[str, Any]]:
    return {q["name"]: q for q in _management_get(settings, "api/queues/%2F", skip)}


def _node_index(settings: ServerSettings, name: str) -> int:
    for index in range(1, NODES + 1):
        if _node(settings, index).nodename == name:
            return index
    raise AssertionError(f"{name} is not a node of the cluster")


def _stage_leader(settings: ServerSettings) -> tuple[int, Counter[str]]:
    """The node leading most stage partition queues, and the leaders by node."""
    queues = _queues(settings)
    leaders = Counter(str(queues[q.name].get("leader")) for q in all_stage_queues())
    return _node_index(settings, leaders.most_common(1)[0][0]), leaders


def _without_consumer(settings: ServerSettings, skip: int | None = None) -> list[str]:
    """The stage partition queues (and the venue's) that the management API lists without a consumer."""
    queues = _queues(settings, skip)
    names = [q.name for q in all_stage_queues()] + [VENUE_QUEUE.name]
    return [name for name in names if int(queues.get(name, {}).get("consumers") or 0) < 1]


async def _consumers_back(settings: ServerSettings, skip: int | None = None) -> list[str]:
    """Poll until every stage partition queue (and the venue's) has a consumer again; returns those that have
    none at the deadline. The management API's figures lag by its statistics interval (5 s): polled."""
    missing: list[str] = []

    def consumed() -> bool:
        missing[:] = _without_consumer(settings, skip)
        return not missing

    with contextlib.suppress(AssertionError):
        await async_wait_until(consumed, timeout=FLOW_SECONDS, interval=1.0, message="a consumer on every queue")
    return missing


def _dead_letters(settings: ServerSettings) -> dict[str, int]:
    """Messages in each dead-letter queue, as a live node's management API counts them."""
    return {
        name: int(q.get("messages") or 0)
        for name, q in _queues(settings).items()
        if name.endswith(".dlq") and int(q.get("messages") or 0)
    }


def _queue_picture(settings: ServerSettings, skip: int | None = None) -> str:
    """Each stage queue's leader, consumers and messages, for a failure report."""
    with contextlib.suppress(AssertionError):
        queues = _queues(settings, skip)
        names = [q.name for q in all_stage_queues()] + [VENUE_QUEUE.name]
        return "\n".join(
            f"  {n}: leader {queues.get(n, {}).get('leader')}, consumers {queues.get(n, {}).get('consumers')}, "
            f"messages {queues.get(n, {}).get('messages')}"
            for n in names
        )
    return "  (no management API answers)"


def _nacks(instance: Instance) -> dict[str, int]:
    """How many publishes the broker nacked, by process, as their logs say (for a failure report)."""
    counts = {}
    for log in sorted((instance.data_dir / "logs").glob("*.log")):
        found = sum(1 for line in log.read_text(errors="replace").splitlines() if "Basic.Nack" in line)
        if found:
            counts[log.stem] = found
    return counts


def _listened(ports: list[int]) -> list[int]:
    """The ports of ``ports`` something listens on (a connection of the last run in TIME_WAIT does not count:
    the nodes listen with SO_REUSEADDR too)."""
    taken = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                taken.append(port)
    return taken


# -------------------------------------------------------------------------------------------- the instance


@pytest.fixture(scope="module")
def instance() -> Iterator[Instance]:
    """The system on a three-node cluster of its own, two replicas per stage; stopped and wiped afterwards,
    servers and cluster, whatever happened."""
    fixed = [p + i for p in (AMQP_PORT, MANAGEMENT_PORT, DIST_PORT) for i in range(NODES)]
    taken = _listened(fixed)
    assert not taken, f"the cluster's ports are taken (another run of this test?): {taken}"
    inst = Instance.create(
        {
            "OMS_AMQP_PORT": str(AMQP_PORT),
            "OMS_RABBITMQ_MGMT_PORT": str(MANAGEMENT_PORT),
            "OMS_RABBITMQ_DIST_PORT": str(DIST_PORT),
            # Nodes oms-cf<run>n1@localhost ... (rabbit_cluster appends the node's number to the name).
            "OMS_RABBITMQ_NODENAME": f"oms-cf{uuid.uuid4().hex[:6]}n@localhost",
            "OMS_VENUE_PARTIAL_FILLS": "2",
            "OMS_OUTBOX_GRACE_SECONDS": "2",
            "OMS_OUTBOX_POLL_SECONDS": "0.5",
            "OMS_LOG_LEVEL": "INFO",
        },
        metrics_ports=PROCESS_COUNT + 2,
    )
    settings = inst.infra_settings
    try:
        began = time.monotonic()
        inst.oms("infra", "start", "--rabbit-nodes", str(NODES))
        booted = time.monotonic()
        inst.up("--replicas", f"all={REPLICAS}")
        print(
            f"\ncluster failover: cluster started in {booted - began:.1f}s, "
            f"{PROCESS_COUNT} processes up in {time.monotonic() - booted:.1f}s",
            flush=True,
        )
        yield inst
    except BaseException:
        for name in sorted(inst.processes() if _supervised(inst) else {}):
            print(f"--- {name}\n{inst.logs_tail(name)}")
        print("\n".join(inst.log))
        raise
    finally:
        beams = _node_pids(settings)
        left = inst.down()
        # `./oms down` stops every node that runs; a node it missed would outlive its wiped folder.
        for pid, nodename in beams.items():
            if _runs(pid, nodename):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                left.append(pid)
    assert not left, f"processes outlived ./oms down: {left}"


def _node_pids(settings: ServerSettings) -> dict[int, str]:
    """The OS pid of each node that runs, with its node name."""
    found = {}
    for index in range(1, NODES + 1):
        with contextlib.suppress(Exception):
            pid = rabbit_cluster.node_pid(index, settings)
            if pid is not None:
                found[pid] = _node(settings, index).nodename
    return found


def _runs(pid: int, nodename: str) -> bool:
    """Whether ``pid`` is still the Erlang VM of node ``nodename`` (not a pid reused since)."""
    try:
        environ = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"RABBITMQ_NODENAME={nodename}".encode() in environ


def _supervised(inst: Instance) -> bool:
    try:
        inst.processes()
    except Exception:
        return False
    return True


@pytest.fixture
async def amqp(instance: Instance) -> AsyncIterator[AbstractRobustConnection]:
    """The strategy's connection, with every node's address (node 1 first): it fails over like the processes."""
    settings = instance.infra_settings
    nodes = rabbit_cluster.amqp_nodes(settings, NODES).split(",")
    connection = await connect(amqp_node_urls(instance.urls.amqp_url, nodes), "oms.cluster-failover")
    yield connection
    await connection.close()


# ------------------------------------------------------------------------------------------------- the test


async def _progress(engine: Engine, strategy: str, more: int, timeout: float = FLOW_SECONDS) -> float:
    return await progress(engine, strategy, more, timeout)


async def _kill_leader_node(instance: Instance, engine: Engine, strategy: str, faults: Faults) -> int:
    """kill -9 the node leading most stage queues; wait until orders flow again and every stage partition has a
    consumer; returns the node's number."""
    settings = instance.infra_settings
    node, leaders = await asyncio.to_thread(_stage_leader, settings)
    killed_at = time.monotonic()
    await asyncio.to_thread(instance.oms, "infra", "node", "kill", str(node))
    faults.add(f"kill -9 of RabbitMQ node {node}, leader of {leaders[_node(settings, node).nodename]} stage queues")
    try:
        await _progress(engine, strategy, 10)
    except AssertionError:
        print(
            f"cluster failover: no flow after the kill of node {node}\n{_queue_picture(settings, skip=node)}\n"
            f"  publishes nacked, by process: {_nacks(instance)}",
            flush=True,
        )
        raise
    print(f"cluster failover: flow resumed {time.monotonic() - killed_at:.1f}s after the kill", flush=True)
    missing = await _consumers_back(settings, skip=node)
    assert not missing, f"queues without a consumer after the kill: {missing}\n{_queue_picture(settings, skip=node)}"
    return node


async def _restart_node(instance: Instance, engine: Engine, strategy: str, node: int) -> None:
    """Start the killed node again: it rejoins, and the flow goes on."""
    began = time.monotonic()
    await asyncio.to_thread(instance.oms, "infra", "node", "start", str(node))
    settings = instance.infra_settings
    names = {_node(settings, i).nodename for i in range(1, NODES + 1)}
    await async_wait_until(
        lambda: rabbit_cluster.running_nodes(settings, NODES) == names,
        timeout=FLOW_SECONDS,
        interval=0.5,
        message="all three nodes running",
    )
    print(f"cluster failover: node {node} back in the cluster in {time.monotonic() - began:.1f}s")
    await _progress(engine, strategy, 10)


async def _kill_replicas(instance: Instance, engine: Engine, strategy: str, faults: Faults) -> None:
    """kill -9 the second replica of each stage in turn; the supervisor restarts it and the flow goes on."""
    for stage in STAGES:
        name = f"{stage}-{REPLICAS}"
        await kill_and_await_restart(instance, name, timeout=FLOW_SECONDS)
        faults.add(f"kill -9 of {name}")
        await _progress(engine, strategy, 10)


def _longest_pause(engine: Engine, strategy: str, start: datetime, end: datetime) -> float:
    """The longest gap between consecutive ORDER_FILLED events of the stream that overlaps [start, end]."""
    stamps = [
        r["timestamp"]
        for r in rows(
            engine,
            "SELECT e.timestamp FROM order_events e JOIN orders o ON o.id = e.order_id "
            "WHERE o.strategy_id = :s AND e.type = 'ORDER_FILLED' ORDER BY e.timestamp",
            s=strategy,
        )
    ]
    gaps = [
        (later - earlier).total_seconds()
        for earlier, later in itertools.pairwise(stamps)
        if later >= start and earlier <= end
    ]
    return max(gaps, default=0.0)


def _explain_stuck(engine: Engine, strategy: str) -> None:
    """What the orders that never ended went through, for the failure report."""
    for order in rows(
        engine,
        "SELECT id, account_id, state, filled_quantity, quantity, updated_at FROM orders "
        "WHERE strategy_id = :s AND state <> 'FILLED' LIMIT 20",
        s=strategy,
    ):
        print(f"cluster failover: not filled {dict(order)}\n{order_trail(engine, order['id'])}")


def _add_accounts(engine: Engine) -> None:
    with engine.begin() as connection:
        for account in ACCOUNTS:
            connection.execute(
                text(
                    "INSERT INTO accounts (id, name, account_type, base_currency, cash_balance, active, created_at) "
                    "VALUES (:id, :name, 'MARGIN', 'USD', 10000000, true, now()) ON CONFLICT (id) DO NOTHING"
                ),
                {"id": account, "name": f"cluster failover {account}"},
            )


async def test_a_lost_node_and_lost_replicas_lose_and_double_nothing(
    instance: Instance, engine: Engine, amqp: AbstractRobustConnection
) -> None:
    settings = instance.infra_settings
    strategy = f"cluster-{uuid.uuid4().hex[:8]}"
    faults = Faults()
    await asyncio.to_thread(_add_accounts, engine)
    stream = Stream(amqp, strategy)
    streaming = asyncio.create_task(stream.run())
    try:
        await _progress(engine, strategy, 40)
        window_start = datetime.now(UTC)
        node = await _kill_leader_node(instance, engine, strategy, faults)
        await _restart_node(instance, engine, strategy, node)
        await _kill_replicas(instance, engine, strategy, faults)
        window_end = datetime.now(UTC)
        await _progress(engine, strategy, 20)
    finally:
        stream.running = False
        await asyncio.wait_for(streaming, timeout=30)  # it ends within one publish's timeout and back-off

    sent = set(stream.sent)

    def filled_all() -> bool:
        return filled(engine, strategy) >= len(sent)

    try:
        await async_wait_until(
            filled_all,
            timeout=DRAIN_SECONDS,
            interval=0.5,
            message=lambda: f"{filled(engine, strategy)}/{len(sent)} orders filled",
        )
    except AssertionError as exc:
        print(f"cluster failover: {exc}\n{_queue_picture(settings)}", flush=True)
        _explain_stuck(engine, strategy)

    # Filled is not settled: wait until settlement's bookings and the outbox have caught up (or say what never did).
    try:
        await asyncio.to_thread(assert_invariants_hold, engine, 180.0)
        settled = ""
    except AssertionError as exc:
        settled = str(exc)

    orders = rows(
        engine,
        "SELECT o.id, o.client_order_id, o.state, o.quantity, o.filled_quantity, "
        "coalesce((SELECT sum(CASE WHEN c.reversal THEN -c.quantity ELSE c.quantity END) "
        "          FROM trade_confirmations c WHERE c.order_id = o.id), 0) AS confirmed, "
        "coalesce((SELECT sum(r.last_qty) FROM execution_reports r WHERE r.order_id = o.id AND NOT r.busted "
        "          AND r.exec_type IN ('PARTIAL_FILL', 'FILL')), 0) AS reported "
        "FROM orders o WHERE o.strategy_id = :s",
        s=strategy,
    )
    # A fill applied twice: an execution id booked twice on one order, in confirmations or in reports.
    twice = rows(
        engine,
        "SELECT order_id, execution_id, count(*) AS n FROM ("
        "  SELECT c.order_id, c.execution_id FROM trade_confirmations c JOIN orders o ON o.id = c.order_id "
        "  WHERE o.strategy_id = :s AND NOT c.reversal "
        "  UNION ALL SELECT 'report:' || r.order_id, r.execution_id FROM execution_reports r "
        "  JOIN orders o ON o.id = r.order_id WHERE o.strategy_id = :s AND r.exec_type IN ('PARTIAL_FILL', 'FILL')"
        ") f GROUP BY order_id, execution_id HAVING count(*) > 1",
        s=strategy,
    )
    positions = rows(
        engine,
        "SELECT coalesce(p.account_id, c.account_id) AS account_id, coalesce(p.symbol, c.symbol) AS symbol, "
        "       coalesce(p.quantity, 0) AS position, coalesce(c.signed, 0) AS confirmed "
        "FROM positions p FULL JOIN ("
        "  SELECT account_id, symbol, sum(CASE WHEN (side = 'BUY') <> reversal THEN quantity ELSE -quantity END) "
        "  AS signed FROM trade_confirmations GROUP BY account_id, symbol"
        ") c ON c.account_id = p.account_id AND c.symbol = p.symbol "
        "WHERE coalesce(p.quantity, 0) <> coalesce(c.signed, 0)",
    )
    unsent = int(scalar(engine, "SELECT count(*) FROM outbox WHERE sent_at IS NULL"))
    dead = await asyncio.to_thread(_dead_letters, settings)
    check = await asyncio.to_thread(
        instance.oms, "check", "--settle", "0", "--outbox", "0", "--inbox", "10", "--stuck", "0", check=False
    )
    pause = await asyncio.to_thread(_longest_pause, engine, strategy, window_start, window_end)

    booked = {o["client_order_id"] for o in orders}
    lost = len(sent - booked) + sum(1 for o in orders if o["state"] in FINAL and o["state"] != "FILLED")
    doubled = (
        len(orders)
        - len(booked)
        + len(twice)
        + sum(
            1
            for o in orders
            if o["confirmed"] != o["filled_quantity"]
            or o["reported"] != o["filled_quantity"]
            or o["filled_quantity"] > o["quantity"]
        )
    )
    stuck = sum(1 for o in orders if o["state"] not in FINAL)
    print(
        f"cluster failover: orders {len(orders)}, faults {len(faults.injected)}, lost {lost}, doubled {doubled}, "
        f"stuck {stuck}, longest pause {pause:.1f}s",
        flush=True,
    )
    print(
        f"cluster failover: decisions re-sent while the broker moved {stream.retries}; "
        f"{check.stdout.strip().splitlines()[-1] if check.stdout.strip() else check.stderr.strip()}",
        flush=True,
    )
    if lost or stuck:
        _explain_stuck(engine, strategy)
    for o in orders:
        if o["confirmed"] != o["filled_quantity"] or o["reported"] != o["filled_quantity"]:
            print(f"cluster failover: doubled? {dict(o)}", flush=True)

    assert (lost, doubled, stuck) == (0, 0, 0), (twice[:5], positions[:5])
    assert len(faults.injected) == 1 + len(STAGES)
    assert not positions, f"positions differ from the sum of their fills: {positions[:10]}"
    assert not dead, f"dead letters: {dead}"
    assert unsent == 0, f"{unsent} outbox rows never sent"
    assert not settled, settled
    assert check.returncode == 0, check.stdout + check.stderr
    # Every stage queue has its consumer again once the faults are over (a partition left without one would
    # hold its orders for ever; the venue's too).
    missing = await _consumers_back(settings)
    assert not missing, f"queues without a consumer: {missing}\n{_queue_picture(settings)}"
