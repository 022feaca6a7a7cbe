"""Connecting to RabbitMQ: robust connections that reconnect and restore their consumers, and plain ones.

aio-pika's robust connection reconnects by itself once it has connected, but its first connect fails at once
when the broker is down; a process started during a broker outage would exit. ``connect`` waits instead.
``connect_once`` is for work that must stop rather than resume on another connection (a dead-letter pass).

Each function takes one URL or the URLs of a cluster's nodes (``settings.infra.amqp_urls``: ``OMS_AMQP_URL`` and
``OMS_AMQP_NODES``). With several, a robust connection is a :class:`FailoverConnection`: aio-pika reconnects to
the URL it holds, and this one holds the next node's each time its connection is lost or an attempt fails, so it
reconnects to a node that runs and restores its channels and consumers there. One URL is the plain aio-pika
robust connection, as before. Quorum queues keep their messages through the loss of a node (a majority of their
members remain); what was delivered and not acked on the lost connection is delivered again, which the inbox
makes harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractRobustConnection
from aio_pika.connection import make_url
from aio_pika.robust_connection import RobustConnection
from pamqp.common import FieldTable
from yarl import URL

log = logging.getLogger(__name__)

# One node's URL, or every node's of a cluster (tried in this order).
AmqpUrls = str | Sequence[str]

FIRST_DELAY_SECONDS = 0.5
MAX_DELAY_SECONDS = 30.0
# Between the robust connection's own reconnect attempts once it has connected (aio-pika's default is 5 s).
RECONNECT_INTERVAL_SECONDS = 1.0
# Longest wait for one node to take a connection when there are others to try.
FAILOVER_CONNECT_TIMEOUT_SECONDS = 10.0


def node_urls(urls: AmqpUrls) -> tuple[str, ...]:
    """``urls`` as a tuple of one URL or more."""
    listed = (urls,) if isinstance(urls, str) else tuple(urls)
    if not listed:
        raise ValueError("no AMQP URL")
    return listed


def _where(url: URL) -> str:
    return f"{url.host}:{url.port}"


class FailoverConnection(RobustConnection):
    """A robust connection over the nodes of one cluster: whenever its connection closes without being asked to,
    or an attempt to connect fails, the next attempt goes to the next node in turn (aio-pika's robust connection
    retries the one URL it holds, every ``reconnect_interval``). Its channels, queues and consumers are restored on
    the node it reaches, as aio-pika restores them on one."""

    def __init__(self, urls: Sequence[URL], **kwargs: Any) -> None:
        if not urls:
            raise ValueError("no AMQP URL")
        self._nodes = tuple(urls)
        self._node = 0
        super().__init__(self._nodes[0], **kwargs)

    @property
    def node(self) -> str:
        """``host:port`` of the node this connection uses or tries next."""
        return _where(self._nodes[self._node])

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        # Called for a lost connection and for a failed attempt alike (aio-pika's UnderlayConnection.connect).
        await super()._on_connection_close(closing)
        if self.close_called or self.is_closed:
            return
        # Synchronously after the base class asked for a reconnect, before the reconnect loop can run.
        lost = self.node
        self._node = (self._node + 1) % len(self._nodes)
        self.url = self._nodes[self._node]
        log.warning("broker node lost or refused; trying the next", extra={"node": lost, "next_node": self.node})


async def _connect_robust(urls: tuple[str, ...], start: int, name: str) -> AbstractRobustConnection:
    """One robust connection attempt: aio-pika's own for one URL, else a FailoverConnection tried first on node
    ``start``. An attempt that fails or is cancelled closes its connection: aio-pika's robust connection keeps a
    task that reconnects, which a cancellation alone does not end (it logs "cancelled. Reconnecting" and goes
    on), so a process stopped during a connect would wait for it forever at its event loop's shutdown."""
    properties: FieldTable = {"connection_name": name}
    connection: AbstractRobustConnection
    timeout: float | None = None
    if len(urls) == 1:
        # As aio_pika.connect_robust builds it.
        url = make_url(urls[0], reconnect_interval=RECONNECT_INTERVAL_SECONDS)
        connection = RobustConnection(url, client_properties=properties, reconnect_interval=RECONNECT_INTERVAL_SECONDS)
    else:
        ordered = [URL(u) for u in (*urls[start:], *urls[:start])]
        connection = FailoverConnection(
            ordered, client_properties=properties, reconnect_interval=RECONNECT_INTERVAL_SECONDS
        )
        # A bound on each attempt, this one and every reconnect: a node that accepts and never answers (hung, not
        # dead) must not hold the connection from the others.
        timeout = FAILOVER_CONNECT_TIMEOUT_SECONDS
    try:
        await connection.connect(timeout=timeout)
    except BaseException:
        await connection.close()  # stops its reconnect loop: the next attempt is a connection of its own
        raise
    return connection


async def connect(
    url: AmqpUrls, name: str, *, attempts: int | None = None, max_delay: float = MAX_DELAY_SECONDS
) -> AbstractRobustConnection:
    """A robust connection named for the management UI's connection list, to ``url`` or to the first of the
    nodes ``url`` lists that answers (then it fails over to the others: :class:`FailoverConnection`).

    Retries the first connect, node after node, with exponential back-off once every node has failed, logging
    each failed attempt, until it succeeds (or ``attempts`` failed, then the last error is raised; None: no
    limit).
    """
    urls = node_urls(url)
    delay = FIRST_DELAY_SECONDS
    attempt = 0
    while True:
        attempt += 1
        try:
            connection = await _connect_robust(urls, (attempt - 1) % len(urls), name)
        except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
            if attempts is not None and attempt >= attempts:
                raise
            round_failed = attempt % len(urls) == 0
            log.warning(
                "broker not reachable; retrying",
                extra={
                    "connection_name": name,
                    "attempt": attempt,
                    "delay": delay if round_failed else 0,
                    "error": repr(exc),
                },
            )
            if round_failed:
                await asyncio.sleep(delay)  # back-off while the broker (every node of it) is down
                delay = min(delay * 2, max_delay)
            continue
        if attempt > 1:
            log.info("broker connected", extra={"connection_name": name, "attempt": attempt})
        return connection


async def answers(url: AmqpUrls, name: str, timeout: float) -> None:
    """Open a plain connection and a channel on it, then close both; raises unless the broker (a node of those
    ``url`` lists, tried in turn) answers within ``timeout`` seconds (a readiness check: no reconnect)."""
    async with asyncio.timeout(timeout):
        connection = await _connect_plain(node_urls(url), name)
        try:
            await connection.channel()
        finally:
            await connection.close()


async def _connect_plain(urls: tuple[str, ...], name: str) -> AbstractConnection:
    """A plain connection to the first of ``urls`` that takes it; the last node's error when none does."""
    for index, url in enumerate(urls):
        try:
            return await aio_pika.connect(url, client_properties={"connection_name": name})
        except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
            if index == len(urls) - 1:
                raise
            log.warning(
                "broker node not reachable; trying the next", extra={"connection_name": name, "error": repr(exc)}
            )
    raise AssertionError("unreachable")  # node_urls never gives an empty tuple


async def connect_unless_stopped(url: AmqpUrls, name: str, stopping: asyncio.Event) -> AbstractRobustConnection | None:
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


async def connect_once(url: AmqpUrls, name: str) -> AbstractConnection:
    """A plain (not robust) connection, one attempt per node (the first of ``url``'s that answers): what it held
    goes back to the broker if it is lost, and the caller stops instead of carrying on over a new connection."""
    return await _connect_plain(node_urls(url), name)
