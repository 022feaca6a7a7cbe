"""The invariants that prove nothing was lost, doubled or left behind, as queries over the store.

- ``orders_vs_confirmations``: an order's filled quantity equals its trade confirmations net of reversals
  (the booking rule: what settlement booked is exactly the rise of the order's cumulative quantity).
- ``positions_vs_confirmations``: a position equals its account's signed confirmations in that symbol.
- ``outbox_unsent``: no outbox row unsent for longer than ``outbox_limit``.
- ``inbox_gaps``: every message the OMS handed from one stage to another (outbox rows on the ``oms``
  exchange) was taken by the stage it was sent to, once ``inbox_limit`` has passed since it was sent.
- ``stuck_orders``: no order in a transient state (waiting for risk, the router or the venue's answer)
  for longer than ``stuck_limit``.

Orders and hand-overs younger than the limits are still in flight and are not judged; ``window`` bounds how
far back a check looks, so a scheduled run costs the same whatever the history (the balance checks of
positions always cover everything). Read-only, in one REPEATABLE READ transaction: one consistent picture.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, text

from common.domain import OrderState

TRANSIENT_STATES = (
    OrderState.NEW,
    OrderState.APPROVED,
    OrderState.ROUTED,
    OrderState.PENDING_CANCEL,
    OrderState.PENDING_REPLACE,
)

_QUERIES: dict[str, str] = {
    # Per order through its index, so a run costs what the window holds, not the whole history.
    "orders_vs_confirmations": """
        SELECT o.id AS order_id, o.filled_quantity, c.net AS confirmed
        FROM orders o
        CROSS JOIN LATERAL (
            SELECT coalesce(sum(CASE WHEN reversal THEN -quantity ELSE quantity END), 0) AS net
            FROM trade_confirmations WHERE order_id = o.id
        ) c
        WHERE o.updated_at < now() - :settle AND o.updated_at >= now() - :window
          AND o.filled_quantity <> c.net
        ORDER BY o.updated_at
        LIMIT :limit
    """,
    "positions_vs_confirmations": """
        SELECT coalesce(p.account_id, c.account_id) AS account_id, coalesce(p.symbol, c.symbol) AS symbol,
               coalesce(p.quantity, 0) AS position, coalesce(c.signed, 0) AS confirmed
        FROM positions p
        FULL JOIN (
            SELECT account_id, symbol,
                   sum(CASE WHEN (side = 'BUY') <> reversal THEN quantity ELSE -quantity END) AS signed
            FROM trade_confirmations GROUP BY account_id, symbol
        ) c ON c.account_id = p.account_id AND c.symbol = p.symbol
        WHERE coalesce(p.quantity, 0) <> coalesce(c.signed, 0)
        LIMIT :limit
    """,
    "outbox_unsent": """
        SELECT message_id, exchange, routing_key, correlation_id, created_at
        FROM outbox
        WHERE sent_at IS NULL AND created_at < now() - :outbox_limit
        ORDER BY id
        LIMIT :limit
    """,
    # The stage a hand-over on the ``oms`` exchange went to, by routing key (a hand-over's ends with its
    # partition, ``risk.check.2``): the inbox row it leaves there.
    "inbox_gaps": """
        SELECT o.message_id, o.routing_key, o.correlation_id, o.sent_at
        FROM outbox o
        WHERE o.exchange = 'oms' AND o.sent_at IS NOT NULL
          AND o.sent_at < now() - :inbox_limit AND o.sent_at >= now() - :window
          AND NOT EXISTS (
              SELECT 1 FROM inbox i WHERE i.message_id = o.message_id AND i.stage = CASE
                  WHEN o.routing_key = 'intake.decision' THEN 'intake'
                  WHEN o.routing_key ~ '^risk\\.check(\\.[0-9]+)?$' THEN 'risk_gate'
                  WHEN o.routing_key LIKE 'router.%' THEN 'router'
                  WHEN o.routing_key = 'execution.report' THEN 'execution_handler'
                  WHEN o.routing_key ~ '^settlement\\.fill(\\.[0-9]+)?$' THEN 'settlement'
              END
          )
        ORDER BY o.id
        LIMIT :limit
    """,
    "stuck_orders": """
        SELECT id AS order_id, state, updated_at
        FROM orders
        WHERE state = ANY(:transient) AND updated_at < now() - :stuck_limit AND updated_at >= now() - :window
        ORDER BY updated_at
        LIMIT :limit
    """,
}

CHECKS = tuple(_QUERIES)


@dataclass(frozen=True)
class Limits:
    """How old something must be before it is judged (younger is in flight), and how far back to look."""

    settle: timedelta = timedelta(seconds=60)
    outbox: timedelta = timedelta(seconds=60)
    inbox: timedelta = timedelta(seconds=60)
    stuck: timedelta = timedelta(seconds=300)
    window: timedelta = timedelta(days=3650)


@dataclass
class CheckReport:
    """What each check found: the violations (up to the listing limit) per check."""

    violations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        """No check found anything."""
        return not any(self.violations.values())

    def counts(self) -> dict[str, int]:
        """Violations per check."""
        return {name: len(self.violations.get(name, [])) for name in CHECKS}

    def summary(self) -> str:
        """One line: every check and what it found."""
        parts = ", ".join(f"{name} {count}" for name, count in self.counts().items())
        return f"check: {parts} -> {'clean' if self.clean else 'VIOLATED'}"


def check_invariants(engine: Engine, limits: Limits = Limits(), listing_limit: int = 100) -> CheckReport:
    """Run every check in one consistent snapshot; read-only."""
    params: Mapping[str, Any] = {
        "settle": limits.settle,
        "outbox_limit": limits.outbox,
        "inbox_limit": limits.inbox,
        "stuck_limit": limits.stuck,
        "window": limits.window,
        "transient": [s.value for s in TRANSIENT_STATES],
        "limit": listing_limit,
    }
    report = CheckReport()
    with engine.connect() as connection:
        connection = connection.execution_options(isolation_level="REPEATABLE READ")
        with connection.begin():
            connection.execute(text("SET TRANSACTION READ ONLY"))
            for name, sql in _QUERIES.items():
                rows = connection.execute(text(sql), dict(params)).mappings()
                report.violations[name] = [dict(row) for row in rows]
    return report
