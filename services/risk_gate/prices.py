"""Reference prices: which price an order is checked against, and the feed consumer that keeps them fresh.

The simulated venue publishes ``{symbol, price, timestamp}`` on the ``marketdata`` topic exchange (routing
key ``prices.<SYMBOL>``). The risk gate process consumes it on an exclusive queue of its own and writes the
latest price per symbol to ``reference_prices``, where every process (the gate's checks, the API) reads it.

A feed price older than ``OMS_RISK_PRICE_STALENESS_SECONDS`` (default 30) is stale. With no fresh price,
``OMS_RISK_NO_PRICE`` decides: ``instrument_reference`` (default) falls back to ``instruments.reference_price``
and the approval says so; ``reject`` rejects orders whose checks need a price.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from aio_pika.abc import AbstractQueue, AbstractRobustChannel, AbstractRobustConnection
from aiormq.abc import DeliveredMessage
from sqlalchemy import Engine, text

from common import jsonutil
from common.domain.validation import plain
from common.messages.catalogue import PRICE
from common.messaging.connection import AmqpUrls, connect
from common.messaging.topology import declare_subscription
from common.settings import RiskSettings
from services.risk_gate.rules import Quote

log = logging.getLogger(__name__)

FEED_SOURCE = "feed"
INSTRUMENT_SOURCE = "instrument"


class NoPriceBehaviour(StrEnum):
    """What to do when a symbol has no fresh feed price."""

    REJECT = "reject"
    INSTRUMENT_REFERENCE = "instrument_reference"


@dataclass(frozen=True)
class PriceSettings:
    """How old a feed price may be, and what to do without a fresh one (the defaults are the settings')."""

    staleness: timedelta = timedelta(seconds=30)
    no_price: NoPriceBehaviour = NoPriceBehaviour.INSTRUMENT_REFERENCE

    @classmethod
    def of(cls, risk: RiskSettings) -> PriceSettings:
        """From ``OMS_RISK_PRICE_STALENESS_SECONDS`` and ``OMS_RISK_NO_PRICE`` (validated by the settings)."""
        return cls(staleness=timedelta(seconds=risk.price_staleness_seconds), no_price=NoPriceBehaviour(risk.no_price))


@dataclass(frozen=True, slots=True)
class FeedPrice:
    """The latest feed price of a symbol, as stored."""

    symbol: str
    price: Decimal
    as_of: datetime
    source: str = FEED_SOURCE


def choose_quote(
    symbol: str,
    feed: FeedPrice | None,
    instrument_reference: Decimal | None,
    now: datetime,
    settings: PriceSettings,
) -> tuple[Quote | None, str | None]:
    """The reference price to check an order against, or None and the reason there is none.

    A feed price exactly ``staleness`` old is still fresh; one from the future (clock skew) is fresh.
    """
    if feed is not None and now - feed.as_of <= settings.staleness:
        return Quote(feed.price, feed.source, feed.as_of), None
    limit = plain(Decimal(str(settings.staleness.total_seconds())))
    if feed is None:
        why = f"no feed price for {symbol}"
    else:
        age = plain(Decimal(str(round((now - feed.as_of).total_seconds(), 3))))
        why = f"the feed price of {symbol} is {age}s old (limit {limit}s)"
    if settings.no_price is NoPriceBehaviour.REJECT:
        return None, f"no fresh reference price: {why}, and the configured behaviour is to reject"
    if instrument_reference is None:
        return None, f"no reference price: {why}, and instrument {symbol} has no reference price"
    return Quote(instrument_reference, INSTRUMENT_SOURCE, None, f"{why}; used the instrument's reference price"), None


def best_price(feed: FeedPrice | None, instrument_reference: Decimal | None) -> Decimal | None:
    """Any price to value a position at (exposure of symbols other than the order's): feed, else instrument."""
    return feed.price if feed is not None else instrument_reference


# --------------------------------------------------------------------------- the feed consumer


def parse_price(body: bytes) -> FeedPrice | None:
    """A feed message as a price, or None when it is not one (logged and dropped: the next tick follows)."""
    try:
        data: Any = jsonutil.loads(body)
        symbol, price, stamp = data["symbol"], Decimal(str(data["price"])), data["timestamp"]
        as_of = datetime.fromisoformat(str(stamp))
    except (ValueError, KeyError, TypeError, InvalidOperation, UnicodeDecodeError):
        return None
    if not isinstance(symbol, str) or not 0 < len(symbol) <= 20 or not price.is_finite() or price <= 0:
        return None
    if as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC)
    return FeedPrice(symbol, price, as_of)


# The latest price per symbol, in one statement whatever the number of symbols (built once); rows in symbol order,
# so concurrent writers lock them in one order and never deadlock; an older price never overwrites a newer one.
_UPSERT_PRICES = text(
    "INSERT INTO reference_prices (symbol, price, source, as_of, received_at)"
    " SELECT u.symbol, u.price, u.source, u.as_of, CAST(:received_at AS timestamptz)"
    " FROM unnest(CAST(:symbols AS varchar[]), CAST(:prices AS numeric[]), CAST(:sources AS varchar[]),"
    " CAST(:as_ofs AS timestamptz[])) AS u(symbol, price, source, as_of)"
    " ORDER BY u.symbol"
    " ON CONFLICT (symbol) DO UPDATE SET price = excluded.price, source = excluded.source,"
    " as_of = excluded.as_of, received_at = excluded.received_at"
    " WHERE reference_prices.as_of <= excluded.as_of"
)


def store_prices(engine: Engine, prices: Mapping[str, FeedPrice], received_at: datetime) -> None:
    """Upsert the latest price per symbol; an older price never overwrites a newer one."""
    if not prices:
        return
    ordered = sorted(prices.values(), key=lambda p: p.symbol)
    params = {
        "symbols": [p.symbol for p in ordered],
        "prices": [p.price for p in ordered],
        "sources": [p.source for p in ordered],
        "as_ofs": [p.as_of for p in ordered],
        "received_at": received_at,
    }
    with engine.begin() as connection:
        connection.execute(_UPSERT_PRICES, params)


def latest_prices(bodies: Iterable[tuple[bytes, str | None]], into: dict[str, FeedPrice]) -> int:
    """Parse feed messages (body, routing key) into the latest price per symbol; returns how many were dropped
    (not a price: logged, the next tick follows)."""
    dropped = 0
    for body, routing_key in bodies:
        price = parse_price(body)
        if price is None:
            dropped += 1
            log.warning("price message dropped: not {symbol, price, timestamp}", extra={"routing_key": routing_key})
            continue
        current = into.get(price.symbol)
        if current is None or current.as_of <= price.as_of:
            into[price.symbol] = price
    return dropped


class ReferencePriceConsumer:
    """Consumes ``Price`` messages (``marketdata``/``prices.*``) and writes the latest prices, at most every
    ``flush_seconds``.

    Cheap while the system idles, when the feed is all the gate does: a delivery is only kept (its body, as the
    broker's client library hands it over, without aio-pika's per-message wrapper); the bodies are parsed, the
    latest per symbol kept and written in one statement once per ``flush_seconds``. A price is used for checks
    only after that write, up to ``flush_seconds`` later; the staleness limit (30 s by default) dwarfs it.
    """

    def __init__(self, engine: Engine, amqp_url: AmqpUrls, flush_seconds: float = 1.0) -> None:
        self.engine = engine
        self.amqp_url = amqp_url
        self.flush_seconds = flush_seconds
        self._received: list[tuple[bytes, str | None]] = []
        self._latest: dict[str, FeedPrice] = {}
        self._stopping = asyncio.Event()
        self._ready = asyncio.Event()
        self._lost: BaseException | None = None

    async def _on_delivery(self, message: DeliveredMessage) -> None:
        self._received.append((message.body, message.routing_key))

    async def flush(self) -> None:
        """Write what arrived since the last flush (kept for the next flush if the database is down)."""
        if self._received:
            received, self._received = self._received, []
            latest_prices(received, self._latest)
        if not self._latest:
            return
        batch, self._latest = self._latest, {}
        try:
            await asyncio.to_thread(store_prices, self.engine, batch, datetime.now(UTC))
        except Exception as exc:
            log.warning("reference prices not stored; retrying", extra={"error": repr(exc)})
            for symbol, price in batch.items():
                self._latest.setdefault(symbol, price)

    async def wait_ready(self, timeout: float) -> None:
        """Wait until the queue is bound and consuming (tests)."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def _consume(self, channel: AbstractRobustChannel, queue: AbstractQueue) -> None:
        underlay = await channel.get_underlay_channel()
        await underlay.basic_consume(queue.name, self._on_delivery, no_ack=True)

    async def _consume_again(self, channel: AbstractRobustChannel, queue: AbstractQueue) -> None:
        """After the robust connection reopened the channel (and declared and bound the queue again)."""
        try:
            await self._consume(channel, queue)
        except Exception as exc:  # aio-pika ignores what its reopen callbacks raise: ``run`` raises it instead
            self._lost = exc

    async def run(self) -> None:
        """Consume until ``stop``; the robust connection reconnects by itself, declares and binds the queue again
        and the consumer is registered again on the new channel (if that fails, ``run`` raises and the stage
        restarts its companion)."""
        connection: AbstractRobustConnection = await connect(self.amqp_url, "oms.risk_gate.prices")
        try:
            channel = await connection.channel()
            assert isinstance(channel, AbstractRobustChannel)
            # Exclusive and auto-deleted: prices are only worth having while this process runs.
            queue = await declare_subscription(channel, PRICE.exchange, [PRICE.bound_key])
            await self._consume(channel, queue)
            channel.reopen_callbacks.add(lambda reopened: self._consume_again(channel, queue))
            self._ready.set()
            log.info("reference price feed consuming", extra={"queue": queue.name})
            while not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.flush_seconds)
                await self.flush()
                if self._lost is not None:
                    raise RuntimeError(f"price feed not consumed again after a reconnect: {self._lost!r}")
        finally:
            await connection.close()

    def stop(self) -> None:
        """Flush what is pending and return from ``run``."""
        self._stopping.set()
