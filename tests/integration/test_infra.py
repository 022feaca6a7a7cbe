"""The test servers answer, and starting them again is harmless."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tools.infra import InfraUrls


def test_database_answers_sql(database_url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("select 1")).scalar_one() == 1
            assert conn.execute(sa.text("select current_database()")).scalar_one().startswith("oms_test_")
    finally:
        engine.dispose()


async def test_amqp_round_trip(amqp_url: str) -> None:
    import aio_pika

    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(exclusive=True)
        await channel.default_exchange.publish(aio_pika.Message(b"ping"), routing_key=queue.name)
        message = await queue.get(timeout=5, fail=True)
        assert message is not None
        await message.ack()
        assert message.body == b"ping"


def test_ensure_started_twice(infra_urls: InfraUrls) -> None:
    from tools import infra

    local = infra.ServerSettings.from_env().urls
    if infra_urls.database_url != local.database_url:
        pytest.skip("this session's servers are not the local ones that tools.infra manages")
    assert infra.ensure_started() == local
    assert infra.ensure_started() == local
    assert all(server.running for server in infra.status())


def test_the_local_node_runs_the_configured_schedulers(infra_urls: InfraUrls) -> None:
    from tools import infra
    from tools.infra import rabbitmq
    from tools.infra.system import run

    settings = infra.ServerSettings.from_env()
    if infra_urls.amqp_url != settings.urls.amqp_url:
        pytest.skip("this session's broker is not the local node that tools.infra manages")
    query = 'io:format("~p ~p~n", [erlang:system_info(schedulers_online), erlang:system_info(schedulers)]).'
    ctl = [rabbitmq._script("rabbitmqctl"), "-n", settings.nodename, "eval", query]
    result = run(ctl, env=rabbitmq._env(settings), check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    online, started = (int(word) for word in result.stdout.split()[:2])
    # A node started before OMS_RABBITMQ_SCHEDULERS changed keeps its count: `./oms infra stop` and start again.
    if settings.rabbit_schedulers:
        assert (online, started) == (settings.rabbit_schedulers, settings.rabbit_schedulers)
    else:  # Erlang's default: one per core it may use, all online
        assert online == started >= 1
