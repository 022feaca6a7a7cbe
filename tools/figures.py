"""How the command-line tools print figures."""

from __future__ import annotations

from decimal import Decimal
from typing import Any


def number(value: Any) -> str:
    """A figure as people read it: a Decimal without its trailing zeros (100.00000000 is 100), None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, Decimal):
        # DECIMAL(20, 8) reads back as 100.00000000: show 100 (format "f" never uses an exponent).
        return format(value.normalize(), "f")
    return str(value)
