"""The intake stage: trade decisions from ``oms``/``intake.decision``."""

from __future__ import annotations

from common.messages.catalogue import TRADE_DECISION
from common.messaging.envelope import Envelope
from common.orders.commands import reference_of
from common.orders.ports import AbstractUnitOfWork
from common.runtime.stage import StageSpec
from services.intake.handlers import handle_trade_decision


def prefetch_decisions(uow: AbstractUnitOfWork, envelopes: list[Envelope]) -> None:
    """One look-up for the whole batch's idempotency keys and one for its accounts and instruments, instead of
    some per decision: the statements of a batch do not grow with its size."""
    uow.orders.prefetch_client_orders((e.body["account_id"], e.body["decision_id"]) for e in envelopes)
    reference_of(uow).prefetch((e.body["account_id"] for e in envelopes), (e.body["symbol"] for e in envelopes))


SPEC = StageSpec(
    stage="intake",
    handlers={TRADE_DECISION: handle_trade_decision},
    prepare=prefetch_decisions,
)
