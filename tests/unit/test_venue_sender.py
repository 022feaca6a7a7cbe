"""The venue's sender takes every batch the engine applied meanwhile as one: one journal entry, reports and
deliveries in the order they were applied, and the stop seen after what came before it."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from aio_pika.abc import AbstractIncomingMessage

from common.store.outbox import OutboxMessage
from services.venue_sim.config import VenueConfig
from services.venue_sim.journal import Entry
from services.venue_sim.venue import Decoded, VenueSim, _Batch


def _report(name: str) -> OutboxMessage:
    return OutboxMessage(name, "oms", "report", "ExecutionReport", name, b"{}")


def _batch(tag: str, orders: dict[str, str | None], sequence: int) -> _Batch:
    delivery = cast(AbstractIncomingMessage, tag)  # only carried along, never touched here
    return _Batch(
        Entry(request_keys=[f"key-{tag}"], orders=dict(orders), sequence=sequence, reports=[_report(f"r-{tag}")]),
        [(delivery, Decoded(tag, "new"))],
    )


def _venue() -> VenueSim:
    return VenueSim(VenueConfig(amqp_url="amqp://unused", database_url="postgresql+psycopg://unused/unused"))


def test_a_later_batch_follows_and_its_snapshot_of_an_order_wins() -> None:
    first = _batch("a", {"o1": "working-1", "o2": "working-2"}, 5)
    first.absorb(_batch("b", {"o1": None, "o3": "working-3"}, 7))
    first.absorb(_batch("c", {"o2": "working-2b"}, 6))
    assert first.entry.request_keys == ["key-a", "key-b", "key-c"]
    assert first.entry.orders == {"o1": None, "o2": "working-2b", "o3": "working-3"}
    assert first.entry.sequence == 7
    assert [m.message_id for m in first.reports] == ["r-a", "r-b", "r-c"]
    assert [d.message_id for _, d in first.deliveries] == ["a", "b", "c"]


async def test_the_sender_takes_what_is_queued_as_one_and_the_stop_after_it() -> None:
    venue = _venue()
    queued: list[Any] = [_batch("a", {}, 1), _batch("b", {}, 2), _batch("c", {}, 3), None]
    for item in queued:
        venue._outbound.put_nowait(item)
    taken = await venue._taken()
    assert taken is not None
    assert [d.message_id for _, d in taken.deliveries] == ["a", "b", "c"]
    assert await venue._taken() is None


async def test_a_batch_queued_while_the_sender_works_goes_in_its_next_round() -> None:
    venue = _venue()
    venue._outbound.put_nowait(_batch("a", {}, 1))
    taken = await venue._taken()
    assert taken is not None and [d.message_id for _, d in taken.deliveries] == ["a"]
    waiting = asyncio.create_task(venue._taken())
    await asyncio.sleep(0)  # the sender waits for the engine: no event to wait for instead
    assert not waiting.done()
    venue._outbound.put_nowait(_batch("b", {}, 2))
    taken = await asyncio.wait_for(waiting, 5)
    assert taken is not None and [d.message_id for _, d in taken.deliveries] == ["b"]
