"""``ops/rabbitmq-definitions.json`` (loaded by the broker at start) agrees with what the workers declare.

A queue declared with other arguments than it already has fails with PRECONDITION_FAILED and the worker
cannot start, so the file must say exactly what the code says.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import aio_pika
import pytest
import requests
from aio_pika.abc import AbstractIncomingMessage
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from common.messages.catalogue import EXECUTION_REPORT
from common.messages.exchanges import DEAD_LETTER_EXCHANGE, OMS_EXCHANGE, TOPIC_EXCHANGES
from common.messaging.connection import connect
from common.messaging.topology import (
    HASH_EXCHANGE_TYPE,
    STAGE_QUEUES,
    VENUE_QUEUE,
    all_stage_queues,
    dead_letter_queue_arguments,
    declare_topology,
    stage_queue_arguments,
)
from common.settings import REPO_ROOT
from services.jobs.config import JOBS_QUEUE
from services.venue_sim.config import VenueConfig
from services.venue_sim.venue import declare_venue_topology
from tools import infra
from tools.infra import definitions

if TYPE_CHECKING:
    from tools.infra import InfraUrls

pytestmark = pytest.mark.integration

DEFINITIONS = json.loads((REPO_ROOT / "ops" / "rabbitmq-definitions.json").read_text())
DEFAULT_DELIVERY_LIMIT = 5  # OMS_DELIVERY_LIMIT's default; a deployment that changes it changes the file too


def _queues() -> dict[str, dict[str, Any]]:
    return {q["name"]: q for q in DEFINITIONS["queues"]}


def test_definitions_declare_every_queue_with_the_workers_arguments() -> None:
    queues = _queues()
    for stage_queue in [*all_stage_queues(), VENUE_QUEUE]:
        assert queues[stage_queue.name]["arguments"] == stage_queue_arguments(stage_queue, DEFAULT_DELIVERY_LIMIT)
        assert queues[stage_queue.dead_letter_name]["arguments"] == dead_letter_queue_arguments()
        bound = {
            (b["source"], b["routing_key"]) for b in DEFINITIONS["bindings"] if b["destination"] == stage_queue.name
        }
        assert bound == set(stage_queue.bindings())
        dlq_bound = {
            (b["source"], b["routing_key"])
            for b in DEFINITIONS["bindings"]
            if b["destination"] == stage_queue.dead_letter_name
        }
        assert dlq_bound == {(DEAD_LETTER_EXCHANGE, stage_queue.dead_letter_name)}
    exchanges = {e["name"]: e["type"] for e in DEFINITIONS["exchanges"]}
    hashed = {q.hash_exchange: HASH_EXCHANGE_TYPE for q in STAGE_QUEUES.values() if q.hashed_keys}
    assert exchanges == {**dict.fromkeys(TOPIC_EXCHANGES, "topic"), DEAD_LETTER_EXCHANGE: "direct", **hashed}
    assert {JOBS_QUEUE, f"{JOBS_QUEUE}.DQ", f"{JOBS_QUEUE}.XQ"} <= set(queues)
    # No user and no password in the repository: the users come from a file of their own, generated with their
    # passwords (the local node's by tools/infra/rabbitmq.py, docker-compose.yml's by `./oms secrets init`).
    assert DEFINITIONS["users"] == [] and DEFINITIONS["permissions"] == []


def test_the_definitions_file_is_generated_from_the_topology() -> None:
    # `python -m tools.infra.definitions` rewrites it after a change to common/messaging/topology.py.
    assert definitions.main(["--check"]) == 0


def test_a_partition_is_routed_by_key_the_same_way_on_every_publish(infra_urls: InfraUrls, loaded_vhost: str) -> None:
    """The broker spreads the public keys over a stage's partitions by what the topology says, and a key always
    lands in the same one: reports by order id (correlation id), decisions by account header."""

    async def run() -> dict[str, set[str]]:
        amqp_url = infra.amqp_url_for_vhost(infra_urls.amqp_url, loaded_vhost)
        connection = await connect(amqp_url, "oms.definitions-test")
        landed: dict[str, set[str]] = {}
        try:
            channel = await connection.channel()
            oms = await channel.get_exchange(OMS_EXCHANGE, ensure=False)
            for i in range(40):
                order = f"order-{i % 8}"
                for _ in range(2):
                    await oms.publish(
                        aio_pika.Message(b"{}", correlation_id=order, message_id=str(uuid.uuid4())),
                        routing_key=EXECUTION_REPORT.routing_key,
                    )
            done = asyncio.Event()
            received = 0

            def collector(name: str) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
                async def take(message: AbstractIncomingMessage) -> None:
                    nonlocal received
                    landed.setdefault(str(message.correlation_id), set()).add(name)
                    await message.ack()
                    received += 1
                    if received == 80:
                        done.set()

                return take

            for queue in STAGE_QUEUES["execution_handler"].partition_queues():
                source = await channel.get_queue(queue.name, ensure=False)
                await source.consume(collector(queue.name))
            await asyncio.wait_for(done.wait(), timeout=30)
        finally:
            await connection.close()
        return landed

    landed = asyncio.run(run())
    assert set(landed) == {f"order-{i}" for i in range(8)}  # every report arrived (nothing lost by hashing)
    assert all(len(queues) == 1 for queues in landed.values()), landed  # one order, one partition
    assert len({q for queues in landed.values() for q in queues}) >= 2  # and the orders are spread


@pytest.fixture
def loaded_vhost(infra_urls: InfraUrls) -> Iterator[str]:
    """A fresh vhost with the definitions imported into it (as the broker imports them at start)."""
    if not infra_urls.management_url:
        pytest.skip("needs the management API")
    name = f"defs_{uuid.uuid4().hex[:10]}"
    infra.create_vhost(name, infra_urls.management_url)
    scoped = {key: DEFINITIONS[key] for key in ("queues", "exchanges", "bindings", "policies")}
    answer = requests.post(
        f"{infra_urls.management_url.rstrip('/')}/api/definitions/{urllib.parse.quote(name, safe='')}",
        json=scoped,
        auth=("guest", "guest"),
        timeout=30,
    )
    assert answer.status_code in (200, 201, 204), answer.text
    try:
        yield name
    finally:
        infra.delete_vhost(name, infra_urls.management_url)


async def test_workers_declare_their_queues_on_a_broker_that_loaded_the_definitions(
    infra_urls: InfraUrls, loaded_vhost: str
) -> None:
    management = infra_urls.management_url.rstrip("/")
    url = f"{management}/api/queues/{urllib.parse.quote(loaded_vhost, safe='')}"
    answer = await asyncio.to_thread(requests.get, url, auth=("guest", "guest"), timeout=10)
    queues = answer.json()
    assert {q["name"] for q in queues} == set(_queues())
    amqp_url = infra.amqp_url_for_vhost(infra_urls.amqp_url, loaded_vhost)
    connection = await connect(amqp_url, "oms.definitions-test")
    try:
        channel = await connection.channel()
        await declare_topology(channel, DEFAULT_DELIVERY_LIMIT)  # raises PRECONDITION_FAILED on any mismatch
        await declare_venue_topology(channel, VenueConfig(amqp_url=amqp_url, database_url=""))
    finally:
        await connection.close()
    broker = RabbitmqBroker(url=amqp_url, confirm_delivery=True)
    try:
        broker.declare_queue(JOBS_QUEUE, ensure=True)  # dramatiq's own queue, delay queue and dead-letter queue
    finally:
        broker.close()
