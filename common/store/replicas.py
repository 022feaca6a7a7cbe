"""Which replica of a stage this process is, when nobody said (compose's ``deploy.replicas`` gives every replica
the same environment): the first index no live replica holds, claimed with a session advisory lock.

The lock lives as long as the connection that took it, so a replica that dies frees its index for the one that
replaces it. Should two replicas ever hold one index (a lock lost with its connection, a replica too many), both
consume the same partitions, and each partition queue's single active consumer keeps one of them a standby.
"""

from __future__ import annotations

import random
import zlib

from sqlalchemy import Connection, Engine, text

_TRY_LOCK = text("SELECT pg_try_advisory_lock(:space, :index)")


def _space(stage: str) -> int:
    # The lock's first key: a signed 32-bit number of the stage, the same in every process.
    value = zlib.crc32(f"oms.replica.{stage}".encode())
    return value - (1 << 32) if value >= 1 << 31 else value


def claim_replica_index(engine: Engine, stage: str, replicas: int) -> tuple[int, Connection]:
    """The first free index of ``stage``'s ``replicas`` (or, all taken, one at random: a standby), and the
    connection holding it, which the caller keeps open for as long as it is that replica."""
    connection = engine.connect()
    # Out of the pool: closing it must end the session (and free the index), not hand it, lock and all, to the
    # next user of the pool.
    connection.detach()
    try:
        for index in range(replicas):
            taken = connection.execute(_TRY_LOCK, {"space": _space(stage), "index": index}).scalar()
            connection.commit()  # the lock is the session's: no transaction stays open
            if taken:
                return index, connection
    except BaseException:
        connection.close()
        raise
    # B311: not for security, only which index to stand by on.
    return random.randrange(replicas), connection  # nosec B311
