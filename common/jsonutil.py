"""JSON with Decimal and aware datetimes, never through float (simplejson's use_decimal).

Parsing is bounded: a body nested deeper than ``MAX_DEPTH`` is refused before the parser sees it (the C parser
recurses per level, and a few thousand levels end in ``RecursionError``, which callers catching ``ValueError``
do not expect), and callers reading untrusted bytes pass ``max_bytes``. Every refusal is a ``ValueError``.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from enum import Enum
from typing import Any

import simplejson

# No message or request of the system nests more than a few levels; 32 leaves room and stays far from the
# interpreter's recursion limit.
MAX_DEPTH = 32
# The largest body a stage, the dead-letter tool or the REST API parses; real bodies are well under 10 KiB.
MAX_BODY_BYTES = 1024 * 1024

# The only characters that matter for nesting: brackets, and the quotes and backslashes that hide brackets
# inside strings. Named groups so one state machine serves str and bytes alike.
_STRUCTURE_TEXT = re.compile(r'(?P<open>[\[{])|(?P<close>[\]}])|(?P<quote>")|(?P<escape>\\)')
_STRUCTURE_BYTES = re.compile(rb'(?P<open>[\[{])|(?P<close>[\]}])|(?P<quote>")|(?P<escape>\\)')


class JSONLimitError(ValueError):
    """The text is too large or nested too deep to be parsed (it may or may not be valid JSON)."""


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


def nesting_exceeds(text: str | bytes, limit: int) -> bool:
    """Whether any array or object in ``text`` sits more than ``limit`` levels deep (brackets in strings aside).

    Linear in the length and needs no valid JSON: invalid text that looks too deep is reported as too deep.
    """
    if isinstance(text, bytes):
        opens = text.count(b"[") + text.count(b"{")
        pattern: re.Pattern[Any] = _STRUCTURE_BYTES
    else:
        opens = text.count("[") + text.count("{")
        pattern = _STRUCTURE_TEXT
    if opens <= limit:
        return False  # the common case: too few brackets to be too deep, whatever their order
    depth = 0
    in_string = False
    escaped_at = -1
    for match in pattern.finditer(text):
        position = match.start()
        if position == escaped_at:
            continue
        kind = match.lastgroup
        if in_string:
            if kind == "escape":
                escaped_at = position + 1
            elif kind == "quote":
                in_string = False
        elif kind == "quote":
            in_string = True
        elif kind == "open":
            depth += 1
            if depth > limit:
                return True
        elif kind == "close":
            depth -= 1
    return False


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH, max_bytes: int | None = None) -> Any:
    """Parse JSON with every non-integer number as Decimal (no float round trip).

    Raises ``ValueError`` for anything that is not parseable JSON: ``simplejson.JSONDecodeError``,
    ``UnicodeDecodeError``, or ``JSONLimitError`` when ``text`` is longer than ``max_bytes`` (bytes, or
    characters for a str) or nested deeper than ``max_depth``.
    """
    if max_bytes is not None and len(text) > max_bytes:
        raise JSONLimitError(f"{len(text)} bytes is larger than the limit of {max_bytes} bytes")
    if nesting_exceeds(text, max_depth):
        raise JSONLimitError(f"nested deeper than {max_depth} levels")
    return simplejson.loads(text, use_decimal=True)
