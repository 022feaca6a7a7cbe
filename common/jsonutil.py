"""JSON with Decimal and aware datetimes, never through float (simplejson's use_decimal)."""

from __future__ import annotations

from datetime import date, datetime
from enum import Enum
from typing import Any

import simplejson


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(value: Any) -> str:
    """Serialise to compact JSON; Decimal as an exact JSON number, datetimes as ISO 8601."""
    return simplejson.dumps(
        value, use_decimal=True, default=_default, separators=(",", ":"), allow_nan=False, for_json=False
    )


def loads(text: str | bytes) -> Any:
    """Parse JSON with every non-integer number as Decimal (no float round trip)."""
    return simplejson.loads(text, use_decimal=True)
