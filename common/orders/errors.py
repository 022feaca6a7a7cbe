"""What the order commands raise when a request cannot be carried out, and the detail each one carries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from common.domain import InvalidCommand, Order
from common.domain.validation import RuleViolation

_SHOWN_MAX = 40


class OrderNotFound(Exception):
    """No order has this id."""

    def __init__(self, order_id: str) -> None:
        self.order_id = order_id
        super().__init__(f"order {order_id} not found")


class UnknownAccount(Exception):
    """The account does not exist, so the order cannot be booked at all (not even as REJECTED)."""

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        super().__init__(f"unknown account {account_id}")


class InvalidOrderTerms(InvalidCommand):
    """Terms that break a rule where no REJECTED order can record it: new terms of a modify, or a value
    outside the enums. ``violations`` carry field and message for a 400 response."""

    def __init__(self, violations: Sequence[RuleViolation]) -> None:
        self.violations = list(violations)
        super().__init__("; ".join(v.message for v in self.violations))


@dataclass(frozen=True)
class TermDifference:
    """One order term whose value differs between the order booked under a key and a new request with it."""

    field: str
    booked: object
    received: object

    def __str__(self) -> str:
        return f"{self.field} (booked {_shown(self.booked)}, received {_shown(self.received)})"


class ConflictingDuplicate(Exception):
    """An idempotency key (decision id, Idempotency-Key, clientOrderId) seen before with other order terms.

    Answering with the first order would tell the sender its second request was booked when it was not.
    ``differences`` name each term that differs, as on the wire (camelCase).
    """

    def __init__(self, order: Order, key: str, differences: Sequence[TermDifference]) -> None:
        self.order = order
        self.key = key
        self.differences = list(differences)
        super().__init__(
            f"{key} was already used for order {order.id} with other terms: "
            + "; ".join(str(d) for d in self.differences)
        )

    @property
    def fields(self) -> list[str]:
        """The names of the terms that differ."""
        return [d.field for d in self.differences]


def _shown(value: object) -> str:
    text = "null" if value is None else str(value)
    return text if len(text) <= _SHOWN_MAX else text[: _SHOWN_MAX - 3] + "..."
