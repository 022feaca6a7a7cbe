"""JSON with Decimal and aware datetimes, never through float.

msgspec does the work (Decimal as an exact JSON number out, every non-integer number as Decimal in): it costs a
fraction of simplejson's, which matters on the hot path where every stage parses and writes every body.
simplejson stays for the rare body msgspec would write as non-JSON (a NaN or infinite Decimal), to refuse it.

Parsing is bounded: a body nested deeper than ``MAX_DEPTH`` is refused before the parser sees it (the C parser
recurses per level, and a few thousand levels end in ``RecursionError``, which callers catching ``ValueError``
do not expect), and callers reading untrusted bytes pass ``max_bytes``. Every refusal is a ``ValueError``.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

import msgspec
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


def _encode_hook(value: Any) -> Any:
    try:
        return _default(value)
    except TypeError:
        raise NotImplementedError(f"not JSON serialisable: {type(value).__name__}") from None


_ENCODER = msgspec.json.Encoder(decimal_format="number", enc_hook=_encode_hook)
_DECODER = msgspec.json.Decoder(float_hook=Decimal)


def dumps_bytes(value: Any) -> bytes:
    """Serialise to compact JSON bytes; Decimal as an exact JSON number, datetimes as ISO 8601 (UTC as ``Z``).

    Raises ``ValueError`` for a NaN or infinite number (not JSON) and ``TypeError`` for a value of no JSON form.
    """
    try:
        encoded = _ENCODER.encode(value)
    except NotImplementedError as exc:
        raise TypeError(str(exc)) from None
    except UnicodeEncodeError:  # a lone surrogate (refused at every entry point): written escaped, as JSON allows
        text: str = simplejson.dumps(
            value, use_decimal=True, default=_default, separators=(",", ":"), allow_nan=False, for_json=False
        )
        return text.encode("ascii")
    if b"NaN" in encoded or b"Infinity" in encoded:
        # Maybe only inside a string; simplejson tells (it raises ValueError for a NaN or infinite number).
        simplejson.dumps(value, use_decimal=True, default=_default, allow_nan=False, for_json=False)
    return encoded


def dumps(value: Any) -> str:
    """Serialise to compact JSON text; see ``dumps_bytes``."""
    return dumps_bytes(value).decode("utf-8")


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

    Raises ``ValueError`` for anything that is not parseable JSON (invalid UTF-8, ``NaN`` and ``Infinity``
    literals included), or ``JSONLimitError`` when ``text`` is longer than
    ``max_bytes`` (bytes, or characters for a str) or nested deeper than ``max_depth``.
    """
    if max_bytes is not None and len(text) > max_bytes:
        raise JSONLimitError(f"{len(text)} bytes is larger than the limit of {max_bytes} bytes")
    if nesting_exceeds(text, max_depth):
        raise JSONLimitError(f"nested deeper than {max_depth} levels")
    try:
        return _DECODER.decode(text)
    except msgspec.DecodeError:
        # The slow path, for what msgspec refuses: simplejson says where the text is wrong (its message is for
        # people), and it takes an escaped lone surrogate, which the contracts then refuse naming the field.
        return simplejson.loads(text, use_decimal=True, parse_constant=_refuse_constant)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
