"""What a handler did besides its writes, for tests that pin it: the log lines operators read, and whether it
read its orders for update (the lock the stage runtime relies on; the fake store has no locks to show it)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.support.fake_store import FakeOrderRepository

# What every LogRecord carries; anything else on a record came from ``extra``.
_STANDARD = {*logging.LogRecord("", 0, "", 0, "", None, None).__dict__, "message", "asctime"}


def log_lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(level, message, extra fields) of each line ``logger`` wrote."""
    return [
        (record.levelname, record.getMessage(), {k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        for record in caplog.records
        if record.name == logger
    ]


def record_order_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """From now on, every ``orders.get`` of the fake store as (order id, for_update), in call order."""
    reads: list[tuple[str, bool]] = []
    original = FakeOrderRepository.get

    def get(self: FakeOrderRepository, order_id: str, for_update: bool = False) -> Any:
        reads.append((order_id, for_update))
        return original(self, order_id, for_update)

    monkeypatch.setattr(FakeOrderRepository, "get", get)
    return reads
