"""The risk gate stage: ``RiskCheck`` from ``oms``/``risk.check``, checked a batch at a time."""

from __future__ import annotations

from common.contracts import RiskCheckSchema
from common.messaging.envelope import Envelope
from common.runtime.stage import StageSpec, StageWorker
from common.store.uow import UnitOfWork
from services.risk_gate.handlers import current_batch, handle_risk_check, prepare

SPEC = StageSpec(stage="risk_gate", schemas={"risk.check": RiskCheckSchema()}, handler=handle_risk_check)


class RiskGateWorker(StageWorker):
    """The stage worker, preparing each batch once: the accounts' locks and every query the rules need.

    The runtime has no per-batch hook yet, so this extends the step that handles a batch in its transaction.
    """

    def _handle_in_transaction(self, uow: UnitOfWork, envelopes: list[Envelope]) -> None:
        order_ids = [oid for oid in (self.spec.order_id_of(e) for e in envelopes) if oid]
        with current_batch(prepare(uow, order_ids)):
            super()._handle_in_transaction(uow, envelopes)
