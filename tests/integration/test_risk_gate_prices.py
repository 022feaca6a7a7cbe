"""The risk gate's reference price feed consumer on a real broker and database: it keeps the latest price per
symbol, drops what is not a price, and keeps consuming after the broker drops its connection."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractExchange
from sqlalchemy import Engine, delete, select

from common import jsonutil
from common.store.tables import reference_prices
from services.risk_gate.prices import FeedPrice, ReferencePriceConsumer, latest_prices, store_prices
from tests.support import outages
from tests.support.db import open_engine
from tests.support.polling import async_wait_until

pytestmark = pytest.mark.integration

D = Decimal
CONNECTION_NAME = "oms.risk_gate.prices"


@pytest.fixture(scope="module")
def engine(database_url: str) -> Iterator[Engine]:
    with open_engine(database_url) as engine:
        yield engine


@pytest.fixture
def management_url(infra_urls: Any) -> str:
    if not infra_urls.management_url:
        pytest.skip("needs the RabbitMQ management API")
    return str(infra_urls.management_url)


@pytest.fixture
async def feed(amqp_url: str) -> AsyncIterator[AbstractExchange]:
    """The ``marketdata`` exchange, as the venue publishes on it."""
    connection = await aio_pika.connect_robust(amqp_url)
    async with connection:
        channel = await connection.channel()
        yield await channel.declare_exchange("marketdata", aio_pika.ExchangeType.TOPIC, durable=True)


@pytest.fixture
async def consumer(engine: Engine, amqp_url: str) -> AsyncIterator[ReferencePriceConsumer]:
    running = ReferencePriceConsumer(engine, amqp_url, flush_seconds=0.05)
    task = asyncio.create_task(running.run())
    await running.wait_ready(30)
    yield running
    running.stop()
    await asyncio.wait_for(task, 30)


def symbol() -> str:
    return f"PX{uuid.uuid4().hex[:8].upper()}"


async def publish(exchange: AbstractExchange, name: str, price: str, as_of: datetime) -> None:
    body = jsonutil.dumps({"symbol": name, "price": D(price), "timestamp": as_of}).encode()
    await exchange.publish(aio_pika.Message(body), routing_key=f"prices.{name}")


def stored(engine: Engine, name: str) -> Decimal | None:
    with engine.connect() as connection:
        price = connection.execute(select(reference_prices.c.price).where(reference_prices.c.symbol == name)).scalar()
    return None if price is None else Decimal(price)


def test_latest_prices_keeps_the_newest_per_symbol_and_counts_what_is_not_a_price() -> None:
    now = datetime.now(UTC)

    def message(name: str, price: str, offset: int) -> tuple[bytes, str]:
        body = {"symbol": name, "price": D(price), "timestamp": now + timedelta(seconds=offset)}
        return jsonutil.dumps(body).encode(), f"prices.{name}"

    latest: dict[str, FeedPrice] = {"OLD": FeedPrice("OLD", D("1"), now + timedelta(seconds=10))}
    received = [
        message("AAA", "10", 0),
        message("AAA", "11", 2),
        message("AAA", "9", 1),  # older than the one before: ignored
        (b"not json", "prices.BAD"),
        message("OLD", "2", 0),  # older than the one kept from before
    ]
    assert latest_prices(received, latest) == 1
    assert {s: p.price for s, p in latest.items()} == {"AAA": D("11"), "OLD": D("1")}


def test_an_older_price_never_overwrites_a_newer_one(engine: Engine) -> None:
    name, now = symbol(), datetime.now(UTC)
    store_prices(engine, {name: FeedPrice(name, D("101"), now)}, now)
    store_prices(engine, {name: FeedPrice(name, D("99"), now - timedelta(seconds=1))}, now)
    assert stored(engine, name) == D("101")
    other = symbol()
    store_prices(engine, {name: FeedPrice(name, D("102"), now), other: FeedPrice(other, D("5"), now)}, now)
    assert (stored(engine, name), stored(engine, other)) == (D("102"), D("5"))  # not older: the same moment wins
    with engine.begin() as connection:
        connection.execute(delete(reference_prices).where(reference_prices.c.symbol.in_([name, other])))


async def test_the_consumer_stores_the_newest_price_and_drops_what_is_not_one(
    engine: Engine, consumer: ReferencePriceConsumer, feed: AbstractExchange
) -> None:
    name, now = symbol(), datetime.now(UTC)
    await feed.publish(aio_pika.Message(b'{"symbol": 1}'), routing_key=f"prices.{name}")
    await publish(feed, name, "50.5", now)
    await publish(feed, name, "51.5", now + timedelta(seconds=1))
    await publish(feed, name, "49", now - timedelta(seconds=1))
    assert await async_wait_until(lambda: stored(engine, name) == D("51.5"), timeout=60)


async def test_the_consumer_keeps_consuming_after_the_broker_drops_its_connection(
    engine: Engine, consumer: ReferencePriceConsumer, feed: AbstractExchange, amqp_url: str, management_url: str
) -> None:
    name = symbol()
    await publish(feed, name, "10", datetime.now(UTC))
    first: bool = await async_wait_until(lambda: stored(engine, name) == D("10"), timeout=60, message="first price")
    assert first

    vhost = outages.vhost_of(amqp_url)
    closed: list[str] = await async_wait_until(
        lambda: asyncio.to_thread(outages.kill_connections, management_url, vhost, CONNECTION_NAME),
        timeout=30,
        message="the consumer's connection listed and closed",
    )

    async def price_arrives() -> bool:
        # Published again until it lands: the consumer's new queue exists only once it has reconnected.
        await publish(feed, name, "11", datetime.now(UTC))
        return stored(engine, name) == D("11")

    assert closed
    arrived: bool = await async_wait_until(
        price_arrives, timeout=60, interval=0.5, message="a price after the reconnect stored"
    )
    assert arrived
