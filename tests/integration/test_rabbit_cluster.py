"""A three-node RabbitMQ cluster on this host (tools/infra/rabbit_cluster.py) and an AMQP client that fails over.

The cluster is an instance of its own, started fresh for this module and stopped at its end (also on failure):
nodes ``oms-c1@localhost`` .. ``oms-c3@localhost``, AMQP 31771-31773, management 15771-15773, distribution
25771-25773 (all below Linux's ephemeral range, 32768-60999: a node started mid-suite must not find its port
taken as the local end of some client's connection), data in /tmp/oms-rabbit-cluster-test (wiped before and
after). It shows that:

- ``rabbitmqctl cluster_status`` lists the three nodes running;
- the quorum queues of ops/rabbitmq-definitions.json have a member on each node and leaders on every node;
- a robust consumer connected to the node that leads its queue, when that node is killed -9, reconnects to
  another node and receives every message published with confirms, before and after the kill: none lost;
- the killed node starts again and rejoins.

It takes about 45 s on a 2-core machine, most of it the nodes' boot (node 1 alone, then 2 and 3 together).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import requests
from aio_pika.abc import AbstractIncomingMessage
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from common.messages.exchanges import OMS_EXCHANGE
from common.messaging.connection import FailoverConnection, answers, connect, connect_once
from common.messaging.topology import QUORUM_GROUP_SIZE, STAGE_QUEUES
from common.settings import REPO_ROOT, amqp_node_urls
from common.tls import pika_broker_options
from tools.infra import rabbit_cluster
from tools.infra.settings import ServerSettings

DATA_DIR = Path("/tmp/oms-rabbit-cluster-test")  # nosec B108: a test instance's data, wiped before and after
NODES = 3
QUEUE = STAGE_QUEUES["intake"]
DEFINITIONS = json.loads((REPO_ROOT / "ops" / "rabbitmq-definitions.json").read_text())
WAIT_SECONDS = 60.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[ServerSettings]:
    """A fresh three-node cluster of this module's own; stopped and wiped at the end, whatever happened."""
    settings = ServerSettings(
        data_dir=DATA_DIR,
        pg_port=54771,  # unused: no Postgres here
        amqp_port=31771,
        management_port=15771,
        dist_port=25771,
        nodename="oms-c@localhost",
        timeout=120,
    )
    rabbit_cluster.stop(settings)  # what an interrupted run left
    shutil.rmtree(DATA_DIR, ignore_errors=True)
    DATA_DIR.mkdir(parents=True)
    DATA_DIR.chmod(0o755)  # the nodes run as the rabbitmq user when we are root: they must reach their folders
    try:
        began = time.monotonic()
        print(f"\ncluster start: {rabbit_cluster.start(settings, NODES)}; {time.monotonic() - began:.1f}s in all")
        yield settings
    finally:
        began = time.monotonic()
        print(f"\ncluster stop: {rabbit_cluster.stop(settings)} ({time.monotonic() - began:.1f}s)")
        shutil.rmtree(DATA_DIR, ignore_errors=True)


def _node_names() -> set[str]:
    return {f"oms-c{i}@localhost" for i in range(1, NODES + 1)}


def _management(settings: ServerSettings, via: int) -> str:
    """The management API of node ``via`` (any node answers for the whole cluster)."""
    return rabbit_cluster.node_settings(settings, via, NODES).urls.management_url


def _queues(settings: ServerSettings, via: int = 1) -> dict[str, dict[str, Any]]:
    url = f"{_management(settings, via)}api/queues/%2F"
    answer = requests.get(url, auth=("guest", "guest"), timeout=10)
    answer.raise_for_status()
    return {q["name"]: q for q in answer.json()}


def test_cluster_status_lists_three_running_nodes(cluster: ServerSettings) -> None:
    status = rabbit_cluster.cluster_status(cluster)
    assert set(status["running_nodes"]) == _node_names()
    assert set(status["disk_nodes"]) == _node_names()
    assert rabbit_cluster.running_nodes(cluster) == _node_names()


def test_the_definitions_quorum_queues_have_a_member_on_each_node_and_leaders_spread(cluster: ServerSettings) -> None:
    queues = _queues(cluster)
    quorum = [q["name"] for q in DEFINITIONS["queues"] if q["arguments"].get("x-queue-type") == "quorum"]
    assert len(quorum) >= 6
    leaders: Counter[str] = Counter()
    for name in quorum:
        queue = queues[name]
        assert queue["arguments"]["x-quorum-initial-group-size"] == QUORUM_GROUP_SIZE
        assert set(queue["members"]) == _node_names(), name
        leaders[queue["leader"]] += 1
    print(f"\nquorum queue leaders by node: {dict(sorted(leaders.items()))}")
    # queue_leader_locator = balanced: each new queue's leader goes to the node leading the fewest (an election
    # at boot may move one since); the default (client-local) would put every leader on node 1, which imported them.
    assert set(leaders) == _node_names()
    assert max(leaders.values()) <= len(quorum) // 2


async def _connection_node(settings: ServerSettings, via: int, name: str) -> str | None:
    """The node the management API of node ``via`` lists the connection named ``name`` on (its stats lag by a
    few seconds)."""
    url = f"{_management(settings, via)}api/connections"
    answer = await asyncio.to_thread(requests.get, url, auth=("guest", "guest"), timeout=10)
    for connection in answer.json():
        if connection.get("client_properties", {}).get("connection_name") == name:
            return str(connection["node"])
    return None


async def _until(what: str, condition: Any, timeout: float = WAIT_SECONDS) -> None:
    """Poll the async ``condition`` until it holds, failing with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f}s: {what}")
        await asyncio.sleep(0.2)  # polling interval, not a wait for the system


async def test_a_consumer_fails_over_when_its_node_is_killed_and_loses_nothing(cluster: ServerSettings) -> None:
    leader = str(_queues(cluster)[QUEUE.name]["leader"])
    killed = int(leader.split("@")[0].removeprefix("oms-c"))
    node_urls = list(amqp_node_urls(cluster.urls.amqp_url, rabbit_cluster.amqp_nodes(cluster, NODES).split(",")))
    # The consumer starts on the node that leads its queue: killing it loses the consumer's connection and the
    # queue's leader at once. The publisher is on another node, which lives.
    consumer_urls = [*node_urls[killed - 1 :], *node_urls[: killed - 1]]
    survivor = killed % NODES + 1  # publishes, and answers the management API, throughout
    publisher_url = node_urls[survivor - 1]
    name = f"oms.test.failover.{uuid.uuid4().hex[:8]}"

    received: list[str] = []
    arrivals: dict[str, float] = {}
    consumer = await connect(consumer_urls, name)
    publisher = await aio_pika.connect(publisher_url, client_properties={"connection_name": f"{name}.publisher"})
    try:
        assert isinstance(consumer, FailoverConnection)
        assert consumer.node == f"127.0.0.1:{cluster.amqp_port + killed - 1}"
        channel = await consumer.channel()
        await channel.set_qos(prefetch_count=10)
        queue = await channel.declare_queue(QUEUE.name, passive=True)

        async def on_message(message: AbstractIncomingMessage) -> None:
            received.append(str(message.message_id))
            arrivals.setdefault(str(message.message_id), time.monotonic())
            await message.ack()

        await queue.consume(on_message)
        await _until(
            f"the management API lists {name} on {leader}",
            lambda: _is_on(cluster, survivor, name, lambda node: node == leader),
        )

        out = await publisher.channel()  # publisher confirms: each publish returns once the queue has it
        exchange = await out.get_exchange(OMS_EXCHANGE, ensure=False)
        routing_key = QUEUE.routing_keys[0]
        published: list[str] = []

        async def publish(count: int) -> None:
            for _ in range(count):
                message_id = uuid.uuid4().hex
                message = aio_pika.Message(b"{}", message_id=message_id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
                await exchange.publish(message, routing_key=routing_key, timeout=WAIT_SECONDS)
                published.append(message_id)

        await publish(50)
        await _until("the first 50 messages arrive", lambda: _has_all(received, published))

        killed_at = time.monotonic()
        pid = rabbit_cluster.kill_node(killed, cluster)
        await publish(50)
        after = published[50:]
        await _until("every message published after the kill arrives", lambda: _has_all(received, published))
        resumed = min(arrivals[m] for m in after) - killed_at
        await _until(
            f"the management API lists {name} on a node that lives",
            lambda: _is_on(cluster, survivor, name, lambda node: node not in ("", leader)),
        )
        duplicates = len(received) - len(set(received))
        print(
            f"\nkilled {leader} (pid {pid}); consumer moved to {consumer.node}; first delivery after the kill "
            f"{resumed:.1f}s later; published {len(published)}, lost {len(set(published) - set(received))}, "
            f"delivered twice {duplicates}"
        )
        assert set(received) == set(published)  # nothing lost: publisher confirms, quorum queue, failover
        assert consumer.node != f"127.0.0.1:{cluster.amqp_port + killed - 1}"
        new_leader = str(_queues(cluster, survivor)[QUEUE.name]["leader"])
        assert new_leader != leader

        # The other clients, given the nodes with the dead one first, reach a live one: the readiness check, a
        # plain connection (dead-letter tool, gauges) and dramatiq's (pika's list of parameters).
        await answers(consumer_urls, f"{name}.readiness", timeout=WAIT_SECONDS)
        plain = await connect_once(consumer_urls, f"{name}.once")
        await plain.close()
        broker = RabbitmqBroker(confirm_delivery=True, **pika_broker_options(";".join(consumer_urls)))
        try:
            await asyncio.to_thread(broker.declare_queue, f"oms.test.{name}", ensure=True)
        finally:
            broker.close()
    finally:
        await publisher.close()
        await consumer.close()

    began = time.monotonic()
    rabbit_cluster.start_node(killed, cluster)
    print(f"node {killed} back in {time.monotonic() - began:.1f}s")
    assert rabbit_cluster.running_nodes(cluster) == _node_names()


async def _is_on(settings: ServerSettings, via: int, name: str, wanted: Any) -> bool:
    return bool(wanted(await _connection_node(settings, via, name) or ""))


async def _has_all(received: list[str], published: list[str]) -> bool:
    return set(published) <= set(received)
