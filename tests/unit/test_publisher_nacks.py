"""A channel whose publish the broker nacks is replaced before the next send.

RabbitMQ 3.10 can keep nacking every publish of a channel to a quorum queue whose leader's node died as the
channel first published to it, while a new channel publishes fine (seen in tests/fault/test_cluster_failover.py):
a publisher that kept its channel would retry one message for ever and stop the pipeline behind it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiormq
from pamqp import commands

from common.messaging.publisher import Publisher
from common.store.outbox import OutboxMessage


class FakeUnderlay:
    def __init__(self, answer: object) -> None:
        self.answer = answer

    async def basic_publish(self, *args: Any, **kwargs: Any) -> object:
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


class FakeChannel:
    def __init__(self, answer: object) -> None:
        self.underlay = FakeUnderlay(answer)
        self.is_closed = False

    async def get_underlay_channel(self) -> FakeUnderlay:
        return self.underlay

    async def close(self) -> None:
        self.is_closed = True


class FakeConnection:
    def __init__(self, answers: list[object]) -> None:
        self.answers = answers
        self.opened: list[FakeChannel] = []

    async def channel(self, **kwargs: Any) -> FakeChannel:
        channel = FakeChannel(self.answers[len(self.opened)])
        self.opened.append(channel)
        return channel


def _message() -> OutboxMessage:
    return OutboxMessage.json("oms", "risk.check.0", "RiskCheck", {"orderId": "o"}, "o")


def test_after_a_nack_the_next_send_opens_a_new_channel() -> None:
    nack = aiormq.exceptions.DeliveryError(None, commands.Basic.Nack(delivery_tag=1))
    connection = FakeConnection([nack, commands.Basic.Ack(delivery_tag=1)])
    publisher = Publisher(connection)  # type: ignore[arg-type]

    async def run() -> tuple[list[str], list[str]]:
        first = await publisher.publish([_message()])
        second = await publisher.publish([_message()])
        return first, second

    first, second = asyncio.run(run())
    assert first == [] and len(second) == 1  # not confirmed, then confirmed on the new channel
    assert len(connection.opened) == 2 and connection.opened[0].is_closed  # the nacking channel was closed


def test_a_confirmed_send_keeps_its_channel() -> None:
    ack = commands.Basic.Ack(delivery_tag=1)
    connection = FakeConnection([ack, ack])
    publisher = Publisher(connection)  # type: ignore[arg-type]

    async def run() -> None:
        for _ in range(3):
            assert len(await publisher.publish([_message()])) == 1

    asyncio.run(run())
    assert len(connection.opened) == 1
