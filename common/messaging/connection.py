"""Connecting to RabbitMQ: robust connections that reconnect and restore their consumers, and plain ones.

aio-pika's robust connection reconnects by itself once it has connected, but its first connect fails at once
when the broker is down; a process started during a broker outage would exit. ``connect`` waits instead.
``connect_once`` is for work that must stop rather than resume on another connection (a dead-letter pass).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractRobustConnection

log = logging.getLogger(__name__)

FIRST_DELAY_SECONDS = 0.5
MAX_DELAY_SECONDS = 30.0
# Between the robust connection's own reconnect attempts once it has connected (aio-pika's default is 5 s).
RECONNECT_INTERVAL_SECONDS = 1.0


async def connect(
    url: str, name: str, *, attempts: int | None = None, max_delay: float = MAX_DELAY_SECONDS
) -> AbstractRobustConnection:
    """A robust connection named for the management UI's connection list.

    Retries the first connect with exponential back-off, logging each failed attempt, until it succeeds
    (or ``attempts`` failed, then the last error is raised; None: no limit).
    """
    delay = FIRST_DELAY_SECONDS
    attempt = 0
    while True:
        attempt += 1
        try:
            connection: AbstractRobustConnection = await aio_pika.connect_robust(
                url, client_properties={"connection_name": name}, reconnect_interval=RECONNECT_INTERVAL_SECONDS
            )
        except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
            if attempts is not None and attempt >= attempts:
                raise
            log.warning(
                "broker not reachable; retrying",
                extra={"connection_name": name, "attempt": attempt, "delay": delay, "error": repr(exc)},
            )
            await asyncio.sleep(delay)  # back-off while the broker is down
            delay = min(delay * 2, max_delay)
            continue
        if attempt > 1:
            log.info("broker connected", extra={"connection_name": name, "attempt": attempt})
        return connection


async def answers(url: str, name: str, timeout: float) -> None:
    """Open a plain connection and a channel on it, then close both; raises unless the broker answers within
    ``timeout`` seconds (a readiness check: no retry, no reconnect)."""
    async with asyncio.timeout(timeout):
        connection = await aio_pika.connect(url, client_properties={"connection_name": name})
        try:
            await connection.channel()
        finally:
            await connection.close()


async def connect_unless_stopped(url: str, name: str, stopping: asyncio.Event) -> AbstractRobustConnection | None:
    """``connect``, waiting for the broker, unless ``stopping`` is set first (then None): a process told to stop
    during a broker outage stops instead of waiting for a broker that may never come."""
    connecting = asyncio.ensure_future(connect(url, name))
    stop = asyncio.ensure_future(stopping.wait())
    await asyncio.wait({connecting, stop}, return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    if connecting.done():
        return connecting.result()
    connecting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await connecting
    return None


async def connect_once(url: str, name: str) -> AbstractConnection:
    """A plain (not robust) connection, one attempt: what it held goes back to the broker if it is lost, and the
    caller stops instead of carrying on over a new connection."""
    return await aio_pika.connect(url, client_properties={"connection_name": name})
