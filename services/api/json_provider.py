"""Flask's JSON provider for the REST app: Decimal in and out without float."""

from __future__ import annotations

from typing import Any

from flask.json.provider import DefaultJSONProvider

from common import jsonutil


class DecimalJSONProvider(DefaultJSONProvider):
    """Flask's JSON through ``common.jsonutil``: Decimal is written and read as an exact JSON number."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return jsonutil.dumps(obj)

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        # Bounded: Flask answers a ValueError here with 400 (a JSONLimitError is one).
        return jsonutil.loads(s, max_bytes=jsonutil.MAX_BODY_BYTES)
