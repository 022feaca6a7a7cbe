"""Looking at the broker from a test: whether a worker consumes its queue yet."""

from __future__ import annotations

import contextlib

from aio_pika.abc import AbstractConnection


async def has_consumer(connection: AbstractConnection, name: str) -> bool:
    """Whether queue ``name`` exists and has a consumer.

    Asked on a channel of its own: a passive declare of a queue that is not there yet closes the channel it is
    made on, and a test polling on its own channel then sees False until its deadline.
    """
    probe = await connection.channel()
    try:
        declared = await probe.declare_queue(name, passive=True)
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await probe.close()
    return (declared.declaration_result.consumer_count or 0) > 0
