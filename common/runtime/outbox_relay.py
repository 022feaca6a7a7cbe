"""The outbox relay: publishes rows no writer published — the API's (at once) and a crashed worker's (after a grace).

Rows are taken ``FOR UPDATE SKIP LOCKED`` and stay locked until they are marked sent, so several relays
never publish the same row twice at once; a consumer still treats a duplicate as normal (its inbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

import psycopg
from aio_pika.abc import AbstractRobustConnection
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import make_url

from common.messaging.connection import connect_unless_stopped
from common.messaging.publisher import Publisher
from common.metrics import OUTBOX_LAG_SECONDS, OUTBOX_PUBLISHED
from common.settings import Settings
from common.store import hot_sql
from common.store.outbox import OutboxMessage, mark_sent

log = logging.getLogger(__name__)

# Per round (a round per API write at a steady rate), so hot (common.store.hot_sql).
_DUE = hot_sql.hot(
    text(
        "SELECT message_id, exchange, routing_key, type, correlation_id, headers, body, created_at FROM outbox "
        "WHERE sent_at IS NULL AND (NOT claimed OR created_at < now() - make_interval(secs => :grace)) "
        "ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED"
    )
)
_FIRST_DELAY = 0.5
_MAX_DELAY = 30.0
_OLDEST = hot_sql.hot(text("SELECT min(created_at) FROM outbox WHERE sent_at IS NULL"))


def libpq_url(sqlalchemy_url: str) -> str:
    """The plain libpq form of a SQLAlchemy URL (for LISTEN on a raw psycopg connection)."""
    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class OutboxRelay:
    """Publishes due outbox rows; wakes on ``NOTIFY oms_outbox`` or every poll interval."""

    def __init__(self, settings: Settings, engine: Engine, batch: int = 500) -> None:
        self.settings = settings
        self.engine = engine
        self.batch = batch
        self._stopping = asyncio.Event()

    def _take(self) -> tuple[Connection, list[OutboxMessage]]:
        """Open a transaction and lock the due rows in it (one hop to a thread: connect, begin and select)."""
        connection = self.engine.connect()
        try:
            rows = hot_sql.mappings(
                connection, _DUE, {"grace": self.settings.stage.outbox_grace_seconds, "limit": self.batch}
            )
        except BaseException:
            connection.close()
            raise
        return connection, [OutboxMessage(**row) for row in rows]

    @staticmethod
    def _finish(connection: Connection, confirmed: list[str]) -> float:
        """Mark the confirmed rows sent and commit; returns the outbox lag, read in the same transaction (it sees
        the rows just marked) rather than on a connection of its own."""
        try:
            mark_sent(connection, confirmed)
            oldest = hot_sql.scalars(connection, _OLDEST)[0]
            connection.commit()
        finally:
            with contextlib.suppress(Exception):  # a connection the database dropped cannot close cleanly
                connection.close()
        return 0.0 if oldest is None else (datetime.now(UTC) - oldest).total_seconds()

    async def relay_once(self, publisher: Publisher) -> int:
        """Publish one round of due rows; returns how many were confirmed."""
        connection, messages = await asyncio.to_thread(self._take)
        try:
            confirmed = await publisher.publish(messages) if messages else []
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(connection.close)  # rolls back: the rows are taken again next round
            raise
        lag = await asyncio.to_thread(self._finish, connection, confirmed)
        OUTBOX_PUBLISHED.inc(len(confirmed))
        OUTBOX_LAG_SECONDS.set(lag)
        return len(confirmed)

    async def _listen(self) -> psycopg.AsyncConnection[Any]:
        listener = await psycopg.AsyncConnection.connect(
            libpq_url(self.settings.infra.worker_database_url), autocommit=True
        )
        try:
            await listener.execute("LISTEN oms_outbox")
        except BaseException:
            await listener.close()
            raise
        return listener

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)  # back-off, ended early by stop()

    async def _connect_amqp(self) -> AbstractRobustConnection | None:
        return await connect_unless_stopped(self.settings.infra.amqp_urls, "oms.outbox_relay", self._stopping)

    async def run(self) -> None:
        """Relay until stopped; broker and database outages are waited out with back-off, never fatal."""
        amqp = await self._connect_amqp()  # waits for the broker; the robust connection then reconnects itself
        if amqp is None:
            return
        publisher = Publisher(amqp)
        listener: psycopg.AsyncConnection[Any] | None = None
        delay = _FIRST_DELAY
        log.info("outbox relay running")
        try:
            while not self._stopping.is_set():
                try:
                    if listener is None or listener.closed:
                        listener = await self._listen()
                        if delay > _FIRST_DELAY:
                            log.info("outbox relay resumed")
                    while await self.relay_once(publisher) >= self.batch:
                        pass  # a backlog: keep going before sleeping
                    delay = _FIRST_DELAY
                    # Wake on the first notification, or after the poll interval for crash leftovers.
                    with contextlib.suppress(TimeoutError):
                        async for _ in listener.notifies(timeout=self.settings.stage.outbox_poll_seconds, stop_after=1):
                            break
                except Exception as exc:
                    # The database or the broker went away. Rows taken in the failed round were not marked
                    # sent (the transaction rolled back with the connection), so the next round takes them.
                    log.error("outbox relay round failed; retrying", extra={"error": repr(exc), "delay": delay})
                    if listener is not None:
                        with contextlib.suppress(Exception):
                            await listener.close()
                        listener = None
                    await self._pause(delay)
                    delay = min(delay * 2, _MAX_DELAY)
        finally:
            if listener is not None:
                with contextlib.suppress(Exception):
                    await listener.close()
            with contextlib.suppress(Exception):
                await amqp.close()

    def stop(self) -> None:
        """Return from ``run`` after the round at hand."""
        self._stopping.set()
