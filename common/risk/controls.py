"""The controls an operator puts in place besides limits: a trading halt and a restricted symbol."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Halt:
    """A kill switch in force: for one account, or for every account (``account_id`` None)."""

    account_id: str | None
    reason: str
    halted_by: str | None
    since: datetime


@dataclass(frozen=True, slots=True)
class Restriction:
    """A symbol nobody (``account_id`` None) or one account may trade."""

    account_id: str | None
    symbol: str
    reason: str | None
