"""A replica that was not told its index claims the first one no live replica holds (compose's deploy.replicas)."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from common.store.replicas import claim_replica_index

pytestmark = pytest.mark.integration


def test_replicas_claim_distinct_indexes_and_a_dead_one_frees_its_own(engine: Engine) -> None:
    stage = "claim_test_stage"
    first, first_lock = claim_replica_index(engine, stage, 2)
    second, second_lock = claim_replica_index(engine, stage, 2)
    try:
        assert (first, second) == (0, 1)
        extra, extra_lock = claim_replica_index(engine, stage, 2)  # one too many: a standby on either
        extra_lock.close()
        assert extra in (0, 1)
        first_lock.close()  # the first replica dies: its connection, and its lock, go with it
        again, again_lock = claim_replica_index(engine, stage, 2)
        again_lock.close()
        assert again == 0
        other, other_lock = claim_replica_index(engine, "another_stage", 2)  # each stage counts its own
        other_lock.close()
        assert other == 0
    finally:
        second_lock.close()
