"""Connecting to RabbitMQ: robust connections that reconnect and restore their consumers."""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractRobustConnection


async def connect(url: str, name: str) -> AbstractRobustConnection:
    """A robust connection named for the management UI's connection list."""
    return await aio_pika.connect_robust(url, client_properties={"connection_name": name})
