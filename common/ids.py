"""Identifiers the OMS makes: UUIDv7, time-ordered.

Every id the OMS creates is a key in a B-tree that only grows (orders, events, reports, outbox and inbox rows).
A random UUIDv4 lands anywhere in such an index, so once the history outgrows memory each insert reads and
dirties a page of its own, and the first touch of a page after a checkpoint writes the whole page to the WAL:
the cost per order rises with the data. UUIDv7 starts with the time, so new keys land together at the index's
right edge, on pages already in memory. It is still 122 bits of which 74 random, unguessable in practice, and
a valid UUID wherever one is expected.
"""

from __future__ import annotations

import uuid_utils


def new_id() -> str:
    """A new time-ordered UUID (version 7) as text."""
    return str(uuid_utils.uuid7())
