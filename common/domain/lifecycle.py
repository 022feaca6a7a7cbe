"""The order state table, declared once as a ``transitions`` Machine.

One Machine is built at import time with no model attached; it is the single declaration of which
trigger may move an order from which state to which. Applying a command or report must cost microseconds,
so the Machine is not driven per order: its transitions are flattened once into a dict keyed by
(trigger, source) and the aggregate looks destinations up there. Internal transitions (the request stays
with the venue, the state does not move) map a source to itself.
"""

from __future__ import annotations

from collections.abc import Iterable

from transitions import Machine

from common.domain.enums import OrderState

S = OrderState

UNROUTED: tuple[OrderState, ...] = (S.NEW, S.APPROVED)
AT_VENUE: tuple[OrderState, ...] = (S.ROUTED, S.OPEN, S.PARTIALLY_FILLED, S.PENDING_CANCEL, S.PENDING_REPLACE)
LIVE: tuple[OrderState, ...] = UNROUTED + AT_VENUE
WORKING: tuple[OrderState, ...] = (S.OPEN, S.PARTIALLY_FILLED, S.PENDING_CANCEL, S.PENDING_REPLACE)
DEAD: tuple[OrderState, ...] = (S.CANCELED, S.EXPIRED, S.REJECTED)
# Where a cancel or replace may be sent: at the venue, not terminal, no cancel already acknowledged.
REQUESTABLE: tuple[OrderState, ...] = (S.ROUTED, S.OPEN, S.PARTIALLY_FILLED, S.PENDING_REPLACE)

# (trigger, sources, destinations); destinations None = internal transition (state unchanged).
_TABLE_SPEC: list[tuple[str, Iterable[OrderState], Iterable[OrderState] | None]] = [
    # Commands issued inside the OMS.
    ("approve", [S.NEW], [S.APPROVED]),
    ("reject", [S.NEW, S.APPROVED, S.ROUTED], [S.REJECTED]),
    ("route", [S.APPROVED], [S.ROUTED]),
    ("cancel_unrouted", UNROUTED, [S.CANCELED]),
    ("modify_unrouted", UNROUTED, [S.NEW]),
    ("request_cancel", REQUESTABLE, None),
    ("request_replace", REQUESTABLE, None),
    # The risk gate's answer to a replace the venue has not seen: the order stays as it is.
    ("approve_replace_request", AT_VENUE, None),
    ("reject_replace_request", AT_VENUE, None),
    ("expire", LIVE, [S.EXPIRED]),
    # Execution reports from the venue.
    ("acknowledge", [S.ROUTED], [S.OPEN]),
    ("partial_fill", (S.NEW, S.APPROVED, S.ROUTED, S.OPEN), [S.PARTIALLY_FILLED]),
    ("fill", LIVE + DEAD, [S.FILLED]),
    ("cancel_pending", (S.ROUTED, S.OPEN, S.PARTIALLY_FILLED, S.PENDING_REPLACE), [S.PENDING_CANCEL]),
    # The venue's cancel, and an IOC/FOK remainder (a fill can reach an order not yet marked routed).
    ("cancel", LIVE, [S.CANCELED]),
    ("cancel_reject", (S.PENDING_CANCEL, S.PENDING_REPLACE), WORKING),
    ("replace_pending", (S.ROUTED, S.OPEN, S.PARTIALLY_FILLED), [S.PENDING_REPLACE]),
    # FILLED is a source: FIX D8, the venue may accept an increase of a filled order.
    ("replace", AT_VENUE + (S.FILLED,), WORKING + (S.FILLED,)),
    ("replace_reject", (S.PENDING_CANCEL, S.PENDING_REPLACE), WORKING),
    ("venue_reject", AT_VENUE, [S.REJECTED]),
    ("bust", (S.FILLED,) + WORKING, WORKING),
]


def _build_machine() -> Machine:
    machine = Machine(model=None, states=OrderState, initial=S.NEW, auto_transitions=False)
    for trigger, sources, dests in _TABLE_SPEC:
        for dest in dests if dests is not None else [None]:
            machine.add_transition(trigger, list(sources), dest)
    return machine


MACHINE: Machine = _build_machine()


def _flatten(machine: Machine) -> dict[tuple[str, OrderState], frozenset[OrderState]]:
    table: dict[tuple[str, OrderState], set[OrderState]] = {}
    for trigger, event in machine.events.items():
        for source_name, transitions in event.transitions.items():
            source = OrderState[source_name]
            for transition in transitions:
                dest = source if transition.dest is None else OrderState[transition.dest]
                table.setdefault((trigger, source), set()).add(dest)
    return {key: frozenset(dests) for key, dests in table.items()}


TABLE: dict[tuple[str, OrderState], frozenset[OrderState]] = _flatten(MACHINE)
TRIGGERS: frozenset[str] = frozenset(trigger for trigger, _ in TABLE)


def destinations(trigger: str, source: OrderState) -> frozenset[OrderState]:
    """States ``trigger`` may lead to from ``source`` (empty when the trigger is not allowed there)."""
    return TABLE.get((trigger, source), frozenset())
