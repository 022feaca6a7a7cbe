"""Each kind of process logs in to RabbitMQ as its own user, allowed what its kind does and refused the rest.

On a vhost of its own with the topology imported from ops/rabbitmq-definitions.json (as the broker does at
boot) and the users of tools/infra/brokerusers.py granted on it, each user does what its process does at start
and in service, and the broker refuses what it must not: the router publishing to ``portfolio``, the venue
reading ``oms.intake``, anyone but the venue and the API reporting an execution, any process declaring or
deleting the pipeline's queues. Then the settings a process gets from ``./oms up`` (``OMS_AMQP_USER``,
``OMS_AMQP_PASSWORD_FILE``) log it in as its user, and docker-compose.yml gives each service its kind's user
and reads every secret from a file that ``./oms secrets init`` makes.
"""

from __future__ import annotations

import json
import stat
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aio_pika
import pytest
import yaml
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiormq.exceptions import ChannelAccessRefused
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from common.messages.catalogue import (
    EXECUTION_REPORT,
    NEW_ORDER_REQUEST,
    ORDER_UPDATE,
    POSITION_UPDATE,
    PRICE,
    RISK_CHECK,
    ROUTE_NEW,
    TRADE_DECISION,
)
from common.messages.exchanges import DEAD_LETTER_EXCHANGE
from common.messaging.topology import STAGE_QUEUES, declare_stage_queue, declare_subscription, stage_queue_arguments
from common.settings import REPO_ROOT, Settings, with_login
from services.jobs.config import JOBS_QUEUE
from services.venue_sim.config import VenueConfig
from services.venue_sim.venue import declare_venue_topology
from tools import infra, secrets
from tools.infra import brokerusers
from tools.processes import STAGES, system

if TYPE_CHECKING:
    from tools.infra import InfraUrls

pytestmark = pytest.mark.integration

Action = Callable[[AbstractChannel], Awaitable[object]]
PROCESS_KINDS = [user.kind for user in brokerusers.BROKER_USERS if user.processes]
DELIVERY_LIMIT = 5  # the definitions file's (OMS_DELIVERY_LIMIT's default)


@pytest.fixture(scope="module")
def vhost(infra_urls: InfraUrls) -> Iterator[str]:
    """A vhost with the definitions' topology and every broker user granted on it."""
    if not infra_urls.management_url:
        pytest.skip("needs the management API")
    name = f"users_{uuid.uuid4().hex[:10]}"
    infra.create_vhost(name, infra_urls.management_url)
    try:
        infra.load_topology(infra_urls.management_url, name)
        infra.ensure_process_users(infra_urls.management_url, [name])
        yield name
    finally:
        infra.delete_vhost(name, infra_urls.management_url)


def url_of(infra_urls: InfraUrls, vhost: str, kind: str) -> str:
    """The AMQP URL that logs in to ``vhost`` as the user of ``kind``."""
    user = brokerusers.BY_KIND[kind]
    password = brokerusers.passwords(infra.secrets_dir())[user.name]
    return with_login(infra.amqp_url_for_vhost(infra_urls.amqp_url, vhost), user.name, password)


async def allowed(infra_urls: InfraUrls, vhost: str, kind: str, action: Action) -> bool:
    """Whether the broker lets ``kind``'s user do ``action`` (False: ACCESS_REFUSED; anything else raises)."""
    connection = await aio_pika.connect(url_of(infra_urls, vhost, kind))
    try:
        channel = await connection.channel(publisher_confirms=True)
        try:
            await action(channel)
        except ChannelAccessRefused:
            return False
        return True
    finally:
        await connection.close()


def publish(exchange: str, routing_key: str) -> Action:
    """Publish a small message (confirmed: a refusal closes the channel before the confirm)."""

    async def act(channel: AbstractChannel) -> None:
        target = await channel.get_exchange(exchange, ensure=False)
        message = aio_pika.Message(b"{}", message_id=str(uuid.uuid4()))
        await target.publish(message, routing_key=routing_key, mandatory=False)

    return act


def get_from(queue: str) -> Action:
    """Consume from ``queue`` and cancel (read on it; a stage queue has a single active consumer, which refuses
    basic.get)."""

    async def put_back(message: AbstractIncomingMessage) -> None:
        await message.nack(requeue=True)

    async def act(channel: AbstractChannel) -> None:
        source = await channel.get_queue(queue, ensure=False)
        tag = await source.consume(put_back, no_ack=False)
        await source.cancel(tag)

    return act


def declare_pipeline_queue(stage: str) -> Action:
    """Declare a stage queue as declare_topology does (the arguments of the definitions)."""

    async def act(channel: AbstractChannel) -> None:
        queue = STAGE_QUEUES[stage]
        arguments: Any = stage_queue_arguments(queue, DELIVERY_LIMIT)
        await channel.declare_queue(queue.name, durable=True, arguments=arguments)

    return act


def delete_queue(queue: str) -> Action:
    async def act(channel: AbstractChannel) -> None:
        await channel.queue_delete(queue, if_unused=False, if_empty=False)

    return act


async def test_the_router_sends_to_the_venue_but_cannot_publish_to_portfolio(infra_urls: InfraUrls, vhost: str) -> None:
    new_order = publish(NEW_ORDER_REQUEST.exchange, NEW_ORDER_REQUEST.routing_key)
    assert await allowed(infra_urls, vhost, "router", new_order)
    assert not await allowed(infra_urls, vhost, "router", publish(POSITION_UPDATE.exchange, "positions.update"))
    assert await allowed(infra_urls, vhost, "settlement", publish(POSITION_UPDATE.exchange, "positions.update"))
    # Nor on `oms`: the router hands nothing to another stage.
    assert not await allowed(infra_urls, vhost, "router", publish(ROUTE_NEW.exchange, ROUTE_NEW.routing_key))


async def test_the_venue_reads_its_queue_but_not_oms_intake(infra_urls: InfraUrls, vhost: str) -> None:
    assert await allowed(infra_urls, vhost, "venue", get_from("venue_sim.orders"))
    assert not await allowed(infra_urls, vhost, "venue", get_from("oms.intake"))
    assert await allowed(infra_urls, vhost, "intake", get_from("oms.intake"))
    # The venue reports executions and prices, and sends nothing else on `oms`.
    assert await allowed(infra_urls, vhost, "venue", publish(EXECUTION_REPORT.exchange, EXECUTION_REPORT.routing_key))
    assert await allowed(infra_urls, vhost, "venue", publish(PRICE.exchange, "prices.AAPL"))
    assert not await allowed(infra_urls, vhost, "venue", publish(TRADE_DECISION.exchange, TRADE_DECISION.routing_key))


@pytest.mark.parametrize("kind", [u.kind for u in brokerusers.BROKER_USERS if u.kind != "admin"])
async def test_each_stage_queue_is_read_by_its_stage_alone(infra_urls: InfraUrls, vhost: str, kind: str) -> None:
    for stage in STAGES:
        for queue in STAGE_QUEUES[stage].partition_queues():
            assert await allowed(infra_urls, vhost, kind, get_from(queue.name)) == (kind == stage), queue.name


@pytest.mark.parametrize("kind", [u.kind for u in brokerusers.BROKER_USERS if u.kind != "admin"])
async def test_who_may_report_an_execution_or_send_a_decision(infra_urls: InfraUrls, vhost: str, kind: str) -> None:
    report = publish(EXECUTION_REPORT.exchange, EXECUTION_REPORT.routing_key)
    decision = publish(TRADE_DECISION.exchange, TRADE_DECISION.routing_key)
    # The venue and the API's UpdateOrderStatus report; the dead-letter tools replay what was sent before.
    assert await allowed(infra_urls, vhost, kind, report) == (kind in {"venue", "api", "jobs", "dlq"})
    assert await allowed(infra_urls, vhost, kind, decision) == (kind in {"strategy", "jobs", "dlq"})


@pytest.mark.parametrize("kind", [u.kind for u in brokerusers.BROKER_USERS if u.kind != "admin"])
async def test_no_process_declares_or_deletes_the_pipeline(infra_urls: InfraUrls, vhost: str, kind: str) -> None:
    assert not await allowed(infra_urls, vhost, kind, declare_pipeline_queue("router"))
    assert not await allowed(infra_urls, vhost, kind, delete_queue("oms.router"))
    assert not await allowed(infra_urls, vhost, kind, delete_queue("venue_sim.orders"))


async def test_the_operator_may_do_anything(infra_urls: InfraUrls, vhost: str) -> None:
    assert await allowed(infra_urls, vhost, "admin", declare_pipeline_queue("router"))
    assert await allowed(infra_urls, vhost, "admin", get_from("oms.intake"))


@pytest.mark.parametrize("stage", STAGES)
async def test_each_stage_starts_and_works_with_its_user(infra_urls: InfraUrls, vhost: str, stage: str) -> None:
    """What the stage runtime does with OMS_AMQP_DECLARE_TOPOLOGY=false: look its queue up, consume it, copy a
    bad message to its dead-letter queue, publish its outbox (order updates among it)."""

    async def ignore(message: AbstractIncomingMessage) -> None:
        await message.nack()

    async def start(channel: AbstractChannel) -> None:
        queue = await declare_stage_queue(channel, STAGE_QUEUES[stage], DELIVERY_LIMIT, declare=False)
        tag = await queue.consume(ignore)
        await queue.cancel(tag)

    assert await allowed(infra_urls, vhost, stage, start)
    dead_letter = publish(DEAD_LETTER_EXCHANGE, STAGE_QUEUES[stage].dead_letter_name)
    assert await allowed(infra_urls, vhost, stage, dead_letter)
    assert await allowed(infra_urls, vhost, stage, publish(ORDER_UPDATE.exchange, "ACC-001.AAPL.FILLED"))
    user = brokerusers.BY_KIND[stage]
    for kind in user.publishes:
        key = kind.routing_key if kind.fixed_key else "ACC-001.AAPL.FILLED"
        assert await allowed(infra_urls, vhost, stage, publish(kind.exchange, key)), kind.type


async def test_the_risk_gate_follows_prices_and_the_api_streams_order_updates(
    infra_urls: InfraUrls, vhost: str
) -> None:
    prices = lambda channel: declare_subscription(channel, PRICE.exchange, [PRICE.bound_key])  # noqa: E731
    updates = lambda channel: declare_subscription(channel, ORDER_UPDATE.exchange, ["ACC-001.#"])  # noqa: E731
    assert await allowed(infra_urls, vhost, "risk_gate", prices)
    assert await allowed(infra_urls, vhost, "api", updates)
    assert not await allowed(infra_urls, vhost, "router", prices)
    assert not await allowed(infra_urls, vhost, "risk_gate", updates)


async def test_the_venue_starts_with_its_user(infra_urls: InfraUrls, vhost: str) -> None:
    config = VenueConfig(amqp_url="", database_url="", declare_pipeline=False, declare_queue=False)
    assert await allowed(infra_urls, vhost, "venue", lambda channel: declare_venue_topology(channel, config))
    declaring = VenueConfig(amqp_url="", database_url="")  # declaring the pipeline is not the venue's to do
    assert not await allowed(infra_urls, vhost, "venue", lambda channel: declare_venue_topology(channel, declaring))


async def test_the_relay_publishes_handovers_and_reads_nothing(infra_urls: InfraUrls, vhost: str) -> None:
    for kind in (RISK_CHECK, ROUTE_NEW, NEW_ORDER_REQUEST, POSITION_UPDATE):
        assert await allowed(infra_urls, vhost, "relay", publish(kind.exchange, kind.routing_key)), kind.type
    assert await allowed(infra_urls, vhost, "relay", publish(ORDER_UPDATE.exchange, "ACC-001.AAPL.OPEN"))
    assert not await allowed(infra_urls, vhost, "relay", get_from("oms.intake.dlq"))
    assert not await allowed(infra_urls, vhost, "relay", publish(DEAD_LETTER_EXCHANGE, "oms.intake.dlq"))


async def test_the_dead_letter_tool_reads_dead_letters_only(infra_urls: InfraUrls, vhost: str) -> None:
    assert await allowed(infra_urls, vhost, "dlq", get_from("oms.intake.dlq"))
    assert await allowed(infra_urls, vhost, "dlq", get_from("venue_sim.orders.dlq"))
    assert not await allowed(infra_urls, vhost, "dlq", get_from("oms.intake"))
    assert await allowed(infra_urls, vhost, "jobs", get_from("oms.router.dlq"))


def test_the_jobs_user_runs_dramatiq(infra_urls: InfraUrls, vhost: str) -> None:
    broker = RabbitmqBroker(url=url_of(infra_urls, vhost, "jobs"), confirm_delivery=True)
    try:
        broker.declare_queue(JOBS_QUEUE, ensure=True)  # its queue, delay queue and dead-letter queue
        channel = broker.channel
        channel.basic_publish(exchange="", routing_key=JOBS_QUEUE, body=b"{}")  # an enqueue
        method, _, _ = channel.basic_get(JOBS_QUEUE, auto_ack=True)  # what its consumer reads
        assert method is not None
    finally:
        broker.close()


async def test_only_the_jobs_and_their_enqueuers_touch_the_jobs_queue(infra_urls: InfraUrls, vhost: str) -> None:
    for kind in PROCESS_KINDS:
        assert await allowed(infra_urls, vhost, kind, get_from(JOBS_QUEUE)) == (kind == "jobs"), kind


async def test_the_settings_up_gives_a_process_log_it_in_as_its_user(
    infra_urls: InfraUrls, vhost: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in infra.process_env("router").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OMS_AMQP_URL", infra.amqp_url_for_vhost(infra_urls.amqp_url, vhost))  # guest's URL
    settings = Settings()
    assert urllib.parse.urlsplit(settings.infra.amqp_url).username == "oms-router"
    assert settings.infra.amqp_declare_topology is False
    assert "oms-router:***@" in settings.model_dump(mode="json")["infra"]["amqp_url"]  # never the password
    connection = await aio_pika.connect(settings.infra.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        with pytest.raises(ChannelAccessRefused):
            await publish(POSITION_UPDATE.exchange, "positions.update")(channel)
    finally:
        await connection.close()


def test_every_process_of_oms_up_has_a_user_of_its_own() -> None:
    names = [spec.name for spec in system(with_venue=True, with_api=True, with_jobs=True)]
    for name in names:
        env = infra.process_env(name)
        assert env["OMS_AMQP_USER"] == brokerusers.BY_PROCESS[name].name
        assert Path(env["OMS_AMQP_PASSWORD_FILE"]).name == brokerusers.password_file_name(brokerusers.BY_PROCESS[name])
    stage_users = {brokerusers.BY_PROCESS[stage].name for stage in STAGES}
    assert len(stage_users) == len(STAGES)


def test_secrets_init_makes_private_secrets_and_keeps_them(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    first = secrets.init(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    values = {name: (folder / name).read_text() for name in first.created}
    assert all(stat.S_IMODE((folder / name).stat().st_mode) == 0o644 for name in values)
    assert len(set(values.values())) == len(values)  # each its own random value
    second = secrets.init(folder)
    assert second.created == [] and sorted(second.kept) == sorted(first.created)
    assert {name: (folder / name).read_text() for name in values} == values
    document = json.loads((folder / secrets.USERS_DEFINITIONS).read_text())
    assert [u["name"] for u in document["users"]] == [u.name for u in brokerusers.BROKER_USERS]  # no guest
    for user in brokerusers.BROKER_USERS:
        stored = next(u["password_hash"] for u in document["users"] if u["name"] == user.name)
        password = (folder / brokerusers.password_file_name(user)).read_text().strip()
        assert brokerusers.password_matches(stored, password)
        assert not brokerusers.password_matches(stored, password + "x")


def test_compose_reads_every_secret_from_a_file_and_gives_each_service_its_user(tmp_path: Path) -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    made = set(secrets.init(tmp_path / "secrets").created) | {secrets.USERS_DEFINITIONS}
    for name, secret in compose["secrets"].items():
        assert Path(secret["file"]).parent == Path("./secrets"), name
        assert Path(secret["file"]).name in made, name
    modules = {spec.module: spec.name for spec in system(with_venue=True, with_api=True, with_jobs=True)}
    checked = 0
    for service_name, service in compose["services"].items():
        env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
        for variable, value in env.items():
            assert "PASSWORD" not in variable or variable.endswith("_FILE"), (service_name, variable)
            if variable.endswith("_URL"):
                assert urllib.parse.urlsplit(value).password is None, (service_name, variable)
        command = service.get("command") or []
        process = modules.get(command[-1]) if isinstance(command, list) and command else None
        if process is None:
            continue
        user = brokerusers.BY_PROCESS[process]
        mounted = {s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])}
        assert env["OMS_AMQP_USER"] == user.name, service_name
        secret = Path(env["OMS_AMQP_PASSWORD_FILE"]).name
        assert secret in mounted and Path(compose["secrets"][secret]["file"]).name == brokerusers.password_file_name(
            user
        ), service_name
        assert env["OMS_AMQP_DECLARE_TOPOLOGY"] == "false" and "postgres_worker_password" in mounted, service_name
        checked += 1
    assert checked == len(modules)
