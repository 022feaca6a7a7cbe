"""What a batch of trade decisions costs the database: the same statements for one decision as for many.

Counted through SQLAlchemy's ``before_cursor_execute`` while the stage runtime handles a batch: the batch's
idempotency keys, accounts and instruments are read once in the stage's ``prepare``, its orders, events and
outbox rows written once at commit; a decision costs no statement of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, event

from common import jsonutil
from common.contracts import TradeDecisionSchema
from common.messages.partitions import base_key
from common.messaging.envelope import Envelope
from common.orders.commands import reference_of
from common.runtime.stage import StageWorker
from common.settings import InfraSettings, Settings
from common.store.db import PLAN_CACHE_MODE_STATEMENT
from common.store.uow import UnitOfWork
from services.intake.spec import SPEC
from tests.support.db import open_engine
from tests.support.orders import trade_decision

pytestmark = pytest.mark.integration

ACCOUNTS = ("ACC-001", "ACC-002", "ACC-003")
SYMBOLS = ("AAPL", "MSFT", "SPY")


@pytest.fixture(scope="module")
def engine(database_url: str) -> Iterator[Engine]:
    with open_engine(database_url) as engine:
        yield engine


def envelope(i: int) -> Envelope:
    body = trade_decision(
        accountId=ACCOUNTS[i % len(ACCOUNTS)],
        symbol=SYMBOLS[i % len(SYMBOLS)],
        type="LIMIT",
        price=Decimal("190.00"),
        quantity=Decimal(i + 1),
        strategyId="statements",
    )
    loaded = TradeDecisionSchema().load(jsonutil.loads(jsonutil.dumps(body)))
    return Envelope(str(uuid.uuid4()), "intake.decision", loaded, None, "TradeDecision")


def run_batch(engine: Engine, settings: Settings, envelopes: list[Envelope]) -> dict[str, int]:
    """Statements by phase while the stage runtime handles the batch."""
    counts: dict[str, int] = {}
    phase = ["runtime"]

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement != PLAN_CACHE_MODE_STATEMENT:  # a session's setting, not the batch's (tests.support.db)
            counts[phase[0]] = counts.get(phase[0], 0) + 1

    def in_phase(name: str, step: Callable[..., None]) -> Callable[..., None]:
        def wrapped(*args: Any) -> None:
            phase[0] = name
            try:
                step(*args)
            finally:
                phase[0] = "runtime"

        return wrapped

    assert SPEC.prepare is not None
    handlers = {kind: in_phase("handler", handler) for kind, handler in SPEC.handlers.items()}
    spec = replace(SPEC, prepare=in_phase("prepare", SPEC.prepare), handlers=handlers)
    event.listen(engine, "before_cursor_execute", count)
    try:
        outcome = StageWorker(spec, settings, engine).process(envelopes)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert not outcome.failed and not outcome.dead, outcome
    assert len([m for m in outcome.published if base_key(m.routing_key) == "risk.check"]) == len(envelopes)
    return counts


def test_a_batch_of_decisions_costs_the_same_statements_whatever_its_size(
    engine: Engine, database_url: str, amqp_url: str
) -> None:
    settings = Settings(infra=InfraSettings(database_url=database_url, amqp_url=amqp_url))
    one = run_batch(engine, settings, [envelope(0)])
    many = run_batch(engine, settings, [envelope(i) for i in range(30)])
    assert one == many
    assert one["prepare"] == 2  # the idempotency keys; the accounts and instruments
    assert "handler" not in one


def test_accounts_and_instruments_are_read_once_per_transaction(engine: Engine) -> None:
    sent: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)

    with UnitOfWork(engine) as uow:
        event.listen(engine, "before_cursor_execute", count)
        try:
            reference = reference_of(uow)
            reference.prefetch(["ACC-001", "NO-SUCH-ACCOUNT"], ["AAPL", "NO-SUCH-SYMBOL"])
            account, instrument = reference.account("ACC-001"), reference.instrument("AAPL")
            missing = (reference.account("NO-SUCH-ACCOUNT"), reference.instrument("NO-SUCH-SYMBOL"))
            assert len(sent) == 1 and reference_of(uow) is reference
            uow.commit()
            assert reference.account("ACC-001") == account  # read again: the transaction that read it ended
            assert len(sent) == 2
        finally:
            event.remove(engine, "before_cursor_execute", count)
        assert account is not None and instrument is not None and missing == (None, None)
        # What the shared reference data reads.
        assert (account, instrument) == (uow.reference.account("ACC-001"), uow.reference.instrument("AAPL"))
