"""Pages generated from the code (configuration, messages, order states): written, or checked for staleness."""

from __future__ import annotations

import sys
from pathlib import Path


def write_or_check(path: Path, text: str, *, check: bool, regenerate: str) -> int:
    """Write ``text`` to ``path``; with ``check``, write nothing and exit 1 when the file differs from it.

    ``regenerate`` is the command a reader runs to bring the page up to date (named in the failure).
    """
    if check:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != text:
            print(f"{path} is out of date: run {regenerate}", file=sys.stderr)
            return 1
        print(f"{path} is up to date")
        return 0
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0
