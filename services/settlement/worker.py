"""The settlement stage: FillBooked (``settlement.fill``) -> confirmations, instructions, positions.

A batch is prepared once (its positions locked, its instruments and confirmations loaded), then booked in memory
and written in one statement per table at commit: see services/settlement/handlers.py.
"""

from __future__ import annotations

import os
from functools import lru_cache

from common import bootstrap
from common.contracts import FillBookedSchema
from common.messaging.envelope import Envelope
from common.runtime.stage import StageSpec
from common.store.uow import UnitOfWork
from services.settlement.calendar import SettlementCalendar, parse_holidays
from services.settlement.handlers import handle, prepare


@lru_cache(maxsize=1)
def settlement_calendar() -> SettlementCalendar:
    """The calendar configured by OMS_SETTLEMENT_DAYS_EQUITY and OMS_SETTLEMENT_HOLIDAYS (YYYY-MM-DD,...)."""
    # OMS_SETTLEMENT_HOLIDAYS is read here until Settings grows a field for it.
    return SettlementCalendar.of(
        bootstrap.settings().settlement_days_equity,
        parse_holidays(os.environ.get("OMS_SETTLEMENT_HOLIDAYS", "")),
    )


def handle_fill(uow: UnitOfWork, env: Envelope) -> None:
    """The stage handler: book a FillBooked with the configured calendar."""
    handle(uow, env, calendar=settlement_calendar())


def _no_order_lock(env: Envelope) -> str | None:
    # Settlement changes no order: it locks the position row instead, so it never waits on order writers.
    return None


SPEC = StageSpec(
    stage="settlement",
    schemas={"settlement.fill": FillBookedSchema()},
    handler=handle_fill,
    order_id_of=_no_order_lock,
    prepare=prepare,
)
