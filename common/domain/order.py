"""The ``Order`` aggregate: the commands issued inside the OMS, and the entry point for venue reports.

Every method either changes the order (appending events, bumping ``version`` and ``updated_at``) or raises
a ``DomainError`` and leaves it untouched. ``apply_report`` never raises for anything a venue may send
(``common.domain.reports`` holds those rules); the events' larger payloads are built in
``common.domain.payloads``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from common.domain import lifecycle, payloads, reports
from common.domain.enums import OrderEventType, OrderState, RequestKind
from common.domain.errors import InvalidCommand, InvalidTransition, ReportMismatch
from common.domain.events import DomainEvent
from common.domain.execution import BookedExecution, ExecutionReportData, ReportOutcome
from common.domain.order_data import OrderData
from common.domain.pending_request import PendingRequest
from common.domain.terms import OrderTerms, order_terms_problems

S = OrderState
E = OrderEventType


@dataclass(slots=True, kw_only=True)
class Order(OrderData):
    """The order aggregate: ``OrderData``'s fields, changed only through the methods here. Build new orders
    with ``create``/``create_rejected``; the store may build loaded ones directly from their columns
    (``events`` starts empty)."""

    def pull_events(self) -> list[DomainEvent]:
        """Return the events recorded since the last pull and forget them (the store persists them)."""
        events, self.events = self.events, []
        return events

    # ------------------------------------------------------------------ factories

    @classmethod
    def create(cls, *, id: str, terms: OrderTerms, now: datetime, user_id: str | None) -> Order:
        """A NEW order awaiting risk; raises ``InvalidCommand`` if its terms break a rule."""
        problems = terms.problems()
        if problems:
            raise InvalidCommand("; ".join(problems))
        order = cls(id=id, **terms.fields(), created_at=now, updated_at=now)
        order._emit(E.ORDER_CREATED, payloads.order_created(terms, order.state, order.status), now, user_id)
        return order

    @classmethod
    def create_rejected(
        cls, *, id: str, terms: OrderTerms, now: datetime, user_id: str | None, code: str, reason: str
    ) -> Order:
        """An order born REJECTED (a decision naming an account and symbol that breaks a rule).

        Terms are not validated: they are recorded as received so the rejection can be audited.
        """
        order = cls(
            id=id,
            **terms.fields(),
            created_at=now,
            updated_at=now,
            state=S.REJECTED,
            rejection_code=code,
            rejection_reason=reason,
        )
        order._emit(E.ORDER_CREATED, payloads.order_created(terms, order.state, order.status), now, user_id)
        order._emit(E.ORDER_REJECTED, {"code": code, "reason": reason, "state": order.state}, now, user_id)
        return order

    # ------------------------------------------------------------------ commands

    def approve(self, checks: Sequence[str], now: datetime, details: Mapping[str, object] | None = None) -> None:
        """Risk passed: NEW -> APPROVED, recording the checks that ran (and ``details``, e.g. the figures)."""
        self._command("approve", S.APPROVED)
        self._touch(now)
        self._emit(E.RISK_APPROVED, payloads.with_details(details, {"checks": list(checks), "state": self.state}), now)

    def reject(
        self,
        code: str,
        reason: str,
        now: datetime,
        user_id: str | None = None,
        details: Mapping[str, object] | None = None,
    ) -> None:
        """Rejected inside the OMS (risk, routing): NEW/APPROVED/ROUTED -> REJECTED; ``details`` (the rule and
        its figures) join the event."""
        self._command("reject", S.REJECTED)
        self.rejection_code = code
        self.rejection_reason = reason
        self.pending_request = None
        self._touch(now)
        payload = payloads.with_details(details, {"code": code, "reason": reason, "state": self.state})
        self._emit(E.ORDER_REJECTED, payload, now, user_id)

    def mark_routed(self, request_id: str, now: datetime) -> None:
        """The router handed the order to the broker (request ``request_id``): APPROVED -> ROUTED."""
        self._command("route", S.ROUTED)
        self._touch(now)
        self._emit(E.ORDER_ROUTED, {"request_id": request_id, "state": self.state}, now)

    def cancel_unrouted(self, reason: str | None, now: datetime, user_id: str | None) -> None:
        """Cancel an order the venue has not seen yet (NEW/APPROVED): CANCELED at once."""
        self._command("cancel_unrouted", S.CANCELED)
        self._touch(now)
        self._emit(E.ORDER_CANCELED, {"reason": reason, "at_venue": False, "state": self.state}, now, user_id)

    def modify_unrouted(
        self,
        quantity: Decimal,
        price: Decimal | None,
        stop_price: Decimal | None,
        now: datetime,
        user_id: str | None,
    ) -> None:
        """New terms for an order not yet at the venue: back to NEW so risk runs again."""
        self._check("modify_unrouted")
        problems = order_terms_problems(self.type, quantity, price, stop_price)
        if problems:
            raise InvalidCommand("; ".join(problems))
        previous = {"quantity": self.quantity, "price": self.price, "stop_price": self.stop_price}
        self.quantity, self.price, self.stop_price = quantity, price, stop_price
        self.state = S.NEW
        self._touch(now)
        self._emit(
            E.ORDER_MODIFIED,
            {"previous": previous, "quantity": quantity, "price": price, "stop_price": stop_price, "state": self.state},
            now,
            user_id,
        )

    def request_cancel(self, request_id: str, reason: str | None, now: datetime, user_id: str | None) -> None:
        """Ask the venue to cancel; the state moves only when the venue answers."""
        self._check("request_cancel")
        self._refuse_if_cancel_outstanding("request_cancel")
        previous = self.pending_request
        self.pending_request = PendingRequest(
            kind=RequestKind.CANCEL, request_id=request_id, requested_at=now, reason=reason
        )
        self._touch(now)
        self._emit(
            E.CANCEL_REQUESTED,
            {
                "request_id": request_id,
                "reason": reason,
                "supersedes_request_id": previous.request_id if previous else None,
                "state": self.state,
            },
            now,
            user_id,
        )

    def request_replace(
        self,
        request_id: str,
        quantity: Decimal,
        price: Decimal | None,
        stop_price: Decimal | None,
        now: datetime,
        user_id: str | None,
    ) -> None:
        """Ask the venue to replace the terms (complete new terms); in force only once the venue confirms.

        A replace may follow an unanswered one (FIX chaining, D16); answers are matched by request id.
        """
        self._check("request_replace")
        self._refuse_if_cancel_outstanding("request_replace")
        problems = order_terms_problems(self.type, quantity, price, stop_price)
        if problems:
            raise InvalidCommand("; ".join(problems))
        previous = self.pending_request
        self.pending_request = PendingRequest(
            kind=RequestKind.REPLACE,
            request_id=request_id,
            requested_at=now,
            quantity=quantity,
            price=price,
            stop_price=stop_price,
        )
        self._touch(now)
        self._emit(
            E.REPLACE_REQUESTED,
            {
                "request_id": request_id,
                "quantity": quantity,
                "price": price,
                "stop_price": stop_price,
                "supersedes_request_id": previous.request_id if previous else None,
                "state": self.state,
            },
            now,
            user_id,
        )

    def approve_replace_request(
        self,
        request_id: str,
        checks: Sequence[str],
        now: datetime,
        details: Mapping[str, object] | None = None,
    ) -> None:
        """Risk passed the new terms of the replace ``request_id``, which may now go to the venue. Recorded only:
        state and terms change when the venue confirms. Refused unless it is the order's pending request."""
        self._check("approve_replace_request")
        pending = self.pending_request
        if pending is None or pending.kind is not RequestKind.REPLACE or pending.request_id != request_id:
            raise InvalidCommand(f"replace {request_id} is not the order's pending request")
        self._touch(now)
        payload: dict[str, object] = {"request_id": request_id, "checks": list(checks), "state": self.state}
        self._emit(E.RISK_APPROVED, payloads.with_details(details, payload), now)

    def reject_replace_request(
        self,
        request_id: str,
        code: str,
        reason: str,
        now: datetime,
        details: Mapping[str, object] | None = None,
    ) -> None:
        """Risk refused the new terms of the replace ``request_id``: it never reaches the venue, so the order's
        state and terms stay; its pending request is cleared if it is this one."""
        self._check("reject_replace_request")
        pending = self.pending_request
        cleared = pending is not None and pending.kind is RequestKind.REPLACE and pending.request_id == request_id
        if cleared:
            self.pending_request = None
        self._touch(now)
        payload: dict[str, object] = {
            "request_id": request_id,
            "code": code,
            "reason": reason,
            "source": "risk",
            "pending_cleared": cleared,
            "state": self.state,
        }
        self._emit(E.REPLACE_REJECTED, payloads.with_details(details, payload), now)

    def expire(self, reason: str | None, now: datetime, user_id: str | None = None) -> None:
        """Expire a live order inside the OMS (e.g. a DAY order at session close). A fill the venue
        reports later is still applied (late fill)."""
        self._command("expire", S.EXPIRED)
        self.pending_request = None
        self._touch(now)
        self._emit(E.ORDER_EXPIRED, {"reason": reason, "source": "oms", "state": self.state}, now, user_id)

    def record_anomaly(
        self,
        execution_id: str,
        anomalies: Sequence[str],
        now: datetime,
        details: Mapping[str, object] | None = None,
    ) -> None:
        """Record a report that is not applied at all (it contradicts one already applied): nothing is booked,
        but the audit trail says what came and why it was refused."""
        self._touch(now)
        payload: dict[str, object] = {
            "execution_id": execution_id,
            "anomalies": list(anomalies),
            "applied": False,
            "state": self.state,
        }
        self._emit(E.EXECUTION_ANOMALY, payloads.with_details(details, payload), now)

    # ------------------------------------------------------------------ execution reports

    def apply_report(
        self, report: ExecutionReportData, now: datetime, *, busted: BookedExecution | None = None
    ) -> ReportOutcome:
        """Apply one venue execution report (FIX semantics, see docs); never raises for venue content.

        What it books (``outcome.fill``) is exactly the rise of the order's cumulative filled quantity, priced
        by the report, with the report's fees; a bust (TRADE_CANCEL) books the reversal of ``busted``, what
        the busted execution booked (the caller looks it up by ``exec_ref_id``). A report whose figures
        contradict each other or the order is booked by that rule and its contradictions are returned as
        anomalies, so the order and what settlement books never disagree.
        """
        if report.order_id != self.id:
            raise ReportMismatch(f"report {report.execution_id} is for order {report.order_id}, not {self.id}")
        outcome, events = reports.apply(self, report, busted)
        if outcome.applied:
            self._touch(now)
            for event_type, payload in events:
                self._emit(event_type, payload, now)
        return outcome

    # ------------------------------------------------------------------ internals

    def _check(self, trigger: str) -> frozenset[OrderState]:
        dests = lifecycle.TABLE.get((trigger, self.state))
        if not dests:
            raise InvalidTransition(trigger, self.state)
        return dests

    def _command(self, trigger: str, dest: OrderState) -> None:
        if dest not in self._check(trigger):
            raise InvalidTransition(trigger, self.state, f"cannot reach {dest}")
        self.state = dest

    def _refuse_if_cancel_outstanding(self, command: str) -> None:
        pending = self.pending_request
        if pending is not None and pending.kind is RequestKind.CANCEL:
            raise InvalidTransition(command, self.state, f"cancel {pending.request_id} is outstanding")

    def _touch(self, now: datetime) -> None:
        self.version += 1
        self.updated_at = now

    def _emit(
        self, type: OrderEventType, payload: dict[str, object], now: datetime, user_id: str | None = None
    ) -> None:
        self.events.append(DomainEvent(type, payload, now, user_id))
