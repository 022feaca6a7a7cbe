"""Partitions of the stage queues: which of a stage's queues a message goes to, so that replicas keep key order.

Every stage's input is split into ``PARTITIONS`` quorum queues (``oms.<stage>``, ``oms.<stage>.p1`` ...), and a
replica consumes only its own (common/messaging/topology.py). A key (an order id, an account) always lands in
the same partition, so one replica at a time handles its messages, in order.

Hand-overs between stages are published by the OMS itself: the sender appends the partition to the routing key
(``risk.check.2``), computed here from the key with CRC-32 (stable across processes, hosts and Python versions,
unlike ``hash``). A key without a partition (a row written by an older version) goes to partition 0, which also
takes the bare key. Messages from other services (decisions, execution reports) keep their public routing keys;
the broker's consistent-hash exchange spreads them by a property it can see (topology.py).

The count is part of the topology (queues, bindings, ops/rabbitmq-definitions.json): changing it is a migration
with the pipeline drained, not a setting.
"""

from __future__ import annotations

import zlib

PARTITIONS = 4


def partition_of(key: str, partitions: int = PARTITIONS) -> int:
    """The partition of ``key`` among ``partitions``."""
    return zlib.crc32(key.encode("utf-8")) % partitions


def partitioned_key(routing_key: str, key: str | None, partitions: int = PARTITIONS) -> str:
    """``routing_key`` with the partition of ``key`` appended; the bare key when there is no key to place."""
    if key is None or partitions <= 1:
        return routing_key
    return f"{routing_key}.{partition_of(key, partitions)}"


def base_key(routing_key: str) -> str:
    """``routing_key`` without a partition suffix (``risk.check.2`` -> ``risk.check``); other keys as they are."""
    head, dot, tail = routing_key.rpartition(".")
    if dot and tail.isdigit() and tail.isascii():
        return head
    return routing_key


def owned_partitions(replica: int, replicas: int, partitions: int = PARTITIONS) -> tuple[int, ...]:
    """The partitions replica ``replica`` (0-based) of ``replicas`` consumes: every ``replicas``-th one. A replica
    beyond the partition count shares one (the queue's single active consumer makes it a standby)."""
    if not 0 <= replica < replicas:
        raise ValueError(f"replica {replica} is not one of {replicas}")
    if replica >= partitions:
        return (replica % partitions,)
    return tuple(p for p in range(partitions) if p % replicas == replica)
