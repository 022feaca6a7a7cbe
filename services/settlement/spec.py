"""The settlement stage: FillBooked (``settlement.fill``) -> confirmations, instructions, positions.

A batch is prepared once (its positions locked, its instruments and confirmations loaded), then booked in memory
and written in one statement per table at commit: see services/settlement/handlers.py.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

from common.messages.catalogue import FILL_BOOKED
from common.messaging.envelope import Envelope
from common.orders.ports import AbstractUnitOfWork
from common.runtime.stage import StageSpec
from common.settings import SessionSettings, Settings
from common.settlement_calendar import SettlementCalendar
from services.settlement.handlers import book_fill, prepare


def settlement_calendar(session: SessionSettings) -> SettlementCalendar:
    """The calendar of OMS_SETTLEMENT_DAYS_EQUITY and OMS_SETTLEMENT_HOLIDAYS."""
    return SettlementCalendar.of(session.settlement_days_equity, session.settlement_holidays)


# The calendar of the default settings (T+1, no holidays): ``SPEC``'s, for tests; the process uses ``stage_spec``.
DEFAULT_CALENDAR = settlement_calendar(SessionSettings())


def handle_fill_booked(uow: AbstractUnitOfWork, env: Envelope, calendar: SettlementCalendar = DEFAULT_CALENDAR) -> None:
    """The stage handler: book a FillBooked with ``calendar``."""
    book_fill(uow, env, calendar=calendar)


def _no_order_lock(env: Envelope) -> str | None:
    # Settlement changes no order: it locks the position row instead, so it never waits on order writers.
    return None


SPEC = StageSpec(
    stage="settlement",
    handlers={FILL_BOOKED: handle_fill_booked},
    order_id_of=_no_order_lock,
    prepare=prepare,
)


def stage_spec(settings: Settings) -> StageSpec:
    """The stage as the process runs it: booking with the configured settlement calendar."""
    calendar = settlement_calendar(settings.session)
    return replace(SPEC, handlers={FILL_BOOKED: partial(handle_fill_booked, calendar=calendar)})
