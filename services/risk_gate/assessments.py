"""The Risk Analysis Service in the risk gate: asked once per batch, before the batch's transaction.

Why before the transaction: inside it, the runtime holds the batch's order rows locked (and ``prepare`` the
accounts' advisory locks), so the service's latency, and at worst ``(retries + 1) * timeout`` while it fails,
would hold up every cancel and modify of those orders and every other gate transaction on those accounts. So
``RiskServiceGate.before_transaction`` (the stage's ``before_transaction`` hook) reads the terms of the batch's
checks in one statement on a connection of its own, asks the service, and keeps the answers for the handlers of
the transaction that follows (a context variable: the runtime runs the hook and the transaction in one thread
and context, and the next batch starts from a fresh copy of the context, so answers never leak to it).

An answer counts only for the terms it was given: a new order's at the version read (the handler checks that
version, and a modify makes a new one), a replace's by its request id (whose terms never change). A check the
hook did not cover (a handler called on its own: tests, tools) is asked about alone, inside the transaction.

The service's verdict is applied after the gate's own rules, to orders they approve: a rule's rejection is the
more precise reason. A refusal, or no answer, rejects the order through the usual path with the rule
``risk_service`` and the code ``RISK_SERVICE_REJECTED`` or ``RISK_SERVICE_UNAVAILABLE``.

Per order, once enabled: one small dict in the request and one dictionary look-up; per batch, one SELECT and one
HTTP round trip. Disabled (the default), the stage has no hook and the handlers one ``is None`` test.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from dataclasses import replace as replaced
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, text

from common.messaging.envelope import Envelope
from services.risk_gate.risk_service import (
    AssessmentItem,
    Assessments,
    Key,
    RiskServiceClient,
    Verdict,
    notional_of,
)
from services.risk_gate.rules import OrderTerms, RiskCode, RiskDecision, RiskViolation

RULE = "risk_service"


# The terms of a batch's checks in one statement, whatever its size: a new order still NEW (a check of any other
# is stale and skipped by its handler), a replace whose request is still PENDING. The price a MARKET order is
# valued at for its notional is the latest feed price, else the instrument's reference price.
_TERMS_SQL = text(
    "SELECT c.order_id, c.request_id, o.version, o.account_id, o.symbol, o.side, o.type, o.quantity, o.price,"
    " o.stop_price, r.terms, COALESCE(p.price, i.reference_price) AS reference_price"
    " FROM unnest(CAST(:order_ids AS varchar[]), CAST(:request_ids AS varchar[])) AS c(order_id, request_id)"
    " JOIN orders o ON o.id = c.order_id"
    " LEFT JOIN order_requests r ON r.request_id = c.request_id AND r.order_id = c.order_id"
    " LEFT JOIN reference_prices p ON p.symbol = o.symbol"
    " LEFT JOIN instruments i ON i.symbol = o.symbol"
    " WHERE (c.request_id IS NULL AND o.state = 'NEW')"
    " OR (c.request_id IS NOT NULL AND r.status = 'PENDING' AND r.kind = 'REPLACE')"
)


def _decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


@dataclass(frozen=True, slots=True)
class Assessed:
    """The batch's answers, with the version of each new order they were given for."""

    assessments: Assessments
    versions: Mapping[Key, int]

    def verdict(self, key: Key, version: int | None) -> Verdict | None:
        """The verdict on ``key`` at ``version`` (None for a replace); None when not asked about those terms."""
        if key not in self.versions or (version is not None and self.versions[key] != version):
            return None
        return self.assessments.verdict(key)


def item_of(terms: OrderTerms, request_id: str | None, reference: Decimal | None) -> AssessmentItem:
    """The contract's item for an order's terms (a replace's new terms, with its request id)."""
    return AssessmentItem(
        order_id=terms.id,
        request_id=request_id,
        account_id=terms.account_id,
        symbol=terms.symbol,
        side=terms.side.value,
        type=terms.type.value,
        quantity=terms.quantity,
        price=terms.price,
        notional=notional_of(terms.quantity, terms.price, terms.stop_price, reference),
    )


def items_from_rows(rows: Iterable[Mapping[Any, Any]]) -> tuple[list[AssessmentItem], dict[Key, int]]:
    """The items (and each one's order version) for the rows of ``_TERMS_SQL``."""
    items: dict[Key, AssessmentItem] = {}
    versions: dict[Key, int] = {}
    for row in rows:
        quantity, price, stop_price = row["quantity"], row["price"], row["stop_price"]
        request_id = row["request_id"]
        if request_id is not None:
            terms = row["terms"] or {}
            quantity = _decimal(terms.get("quantity")) or quantity
            price, stop_price = _decimal(terms.get("price")), _decimal(terms.get("stopPrice"))
        item = AssessmentItem(
            order_id=row["order_id"],
            request_id=request_id,
            account_id=row["account_id"],
            symbol=row["symbol"],
            side=row["side"],
            type=row["type"],
            quantity=quantity,
            price=price,
            notional=notional_of(quantity, price, stop_price, row["reference_price"]),
        )
        items[item.key] = item
        versions[item.key] = row["version"]
    return list(items.values()), versions


def reviewed(decision: RiskDecision, verdict: Verdict) -> RiskDecision:
    """The gate's decision once the service's verdict is in (``decision`` approved by the gate's rules)."""
    checks = [*decision.checks, RULE]
    if verdict.approved:
        return replaced(decision, checks=checks)
    if verdict.unavailable:
        violation = RiskViolation(RULE, RiskCode.RISK_SERVICE_UNAVAILABLE, "order", verdict.reason, {})
    else:
        message = f"rejected by the risk analysis service: {verdict.reason}"
        violation = RiskViolation(RULE, RiskCode.RISK_SERVICE_REJECTED, "order", message, {"reason": verdict.reason})
    return replaced(decision, checks=checks, violation=violation)


_ASSESSED: contextvars.ContextVar[Assessed | None] = contextvars.ContextVar("risk_service_assessed", default=None)


class RiskServiceGate:
    """The stage's side of the service: the hook that asks, and the look-up the handlers make."""

    def __init__(self, client: RiskServiceClient) -> None:
        self.client = client

    def before_transaction(self, engine: Engine, envelopes: list[Envelope]) -> None:
        """The stage hook: read the batch's terms, ask the service once, keep the answers for the transaction."""
        order_ids = [env.body["order_id"] for env in envelopes]
        request_ids = [env.body.get("request_id") for env in envelopes]
        with engine.connect() as connection:
            rows = connection.execute(_TERMS_SQL, {"order_ids": order_ids, "request_ids": request_ids})
            items, versions = items_from_rows(rows.mappings())
        _ASSESSED.set(Assessed(self.client.assess(items), versions))

    def verdict(self, key: Key, version: int | None, item: Callable[[], AssessmentItem]) -> Verdict:
        """The verdict on an order's terms: the batch's answer, or (not covered by it) the service asked now."""
        assessed = _ASSESSED.get()
        found = assessed.verdict(key, version) if assessed is not None else None
        if found is not None:
            return found
        alone = item()
        answer = self.client.assess([alone]).verdict(alone.key)
        # A service that answered without this order broke the contract (caught by the client): fail closed.
        return answer if answer is not None else Verdict(False, "no answer for the order", unavailable=True)

    def review_order(self, decision: RiskDecision, terms: OrderTerms, version: int) -> RiskDecision:
        """A new order's decision after the service's verdict (unchanged if the gate's rules rejected it)."""
        if decision.violation is not None:
            return decision
        reference = decision.quote.price if decision.quote is not None else None
        verdict = self.verdict((terms.id, None), version, lambda: item_of(terms, None, reference))
        return reviewed(decision, verdict)

    def review_replace(self, decision: RiskDecision, proposed: OrderTerms, request_id: str) -> RiskDecision:
        """A replace's decision after the service's verdict on its new terms."""
        if decision.violation is not None:
            return decision
        reference = decision.quote.price if decision.quote is not None else None
        verdict = self.verdict((proposed.id, request_id), None, lambda: item_of(proposed, request_id, reference))
        return reviewed(decision, verdict)


def forget() -> None:
    """Drop the answers kept in this context (tests)."""
    _ASSESSED.set(None)
