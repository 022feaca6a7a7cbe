"""The intake stage: trade decisions from ``oms``/``intake.decision``."""

from __future__ import annotations

from common.contracts import TradeDecisionSchema
from common.messaging.envelope import Envelope
from common.runtime.stage import StageSpec
from common.store.uow import UnitOfWork
from services.intake.commands import reference_of
from services.intake.handlers import handle_decision


def prefetch_decisions(uow: UnitOfWork, envelopes: list[Envelope]) -> None:
    """One look-up for the whole batch's idempotency keys and one for its accounts and instruments, instead of
    some per decision: the statements of a batch do not grow with its size."""
    uow.orders.prefetch_client_orders((e.body["account_id"], e.body["decision_id"]) for e in envelopes)
    reference_of(uow).prefetch((e.body["account_id"] for e in envelopes), (e.body["symbol"] for e in envelopes))


SPEC = StageSpec(
    stage="intake",
    schemas={"intake.decision": TradeDecisionSchema()},
    handler=handle_decision,
    prepare=prefetch_decisions,
)
