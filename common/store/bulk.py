"""Set-based writes: one statement for any number of rows, the rows passed as one JSON document.

``json_to_recordset`` turns the document into typed rows inside Postgres. The statement text does not depend on
the row count, so Postgres plans it once per connection (psycopg prepares a statement it has seen a few times)
and SQLAlchemy builds nothing per call; an executemany of the same rows costs a server round of
parse-bind-execute per row. One JSON text parameter rather than an array per column (``unnest``): msgspec writes
the document in C, where psycopg quotes every element of a text array in Python with regular expressions, which
was a tenth of a stage's CPU. Numbers stay exact (a JSON number becomes ``numeric`` without a float), times are
ISO 8601 with their offset, JSONB columns take the nested object as it is. The statements are hot
(``common.store.hot_sql``): run them with ``hot_sql.execute``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import text

from common import jsonutil
from common.store.hot_sql import HotStatement, hot

# (column, Postgres type). Identifiers come from these module-level specs, never from input.
Columns = Sequence[tuple[str, str]]


def _recordset(columns: Columns) -> str:
    definition = ", ".join(f"{name} {kind}" for name, kind in columns)
    return f"json_to_recordset(CAST(:rows AS json)) AS r({definition})"


def bulk_insert(table: str, columns: Columns, suffix: str = "") -> HotStatement:
    """``INSERT INTO table (columns) SELECT ... FROM json_to_recordset(:rows)``, then ``suffix`` (ON CONFLICT)."""
    names = ", ".join(name for name, _ in columns)
    select = ", ".join(f"r.{name}" for name, _ in columns)
    # Identifiers from the specs in code (Columns above); every value is bound (:rows): B608 does not apply.
    statement = f"INSERT INTO {table} ({names}) SELECT {select} FROM {_recordset(columns)} {suffix}"  # nosec B608  # noqa: S608
    return hot(text(statement.strip()))


def bulk_update(table: str, key: str, columns: Columns, where: str = "") -> HotStatement:
    """``UPDATE table SET c = r.c ... FROM json_to_recordset(:rows) WHERE table.key = r.key`` (and ``where``).

    ``columns`` start with the key; ``where`` is an extra condition on ``t`` (the table) and ``r`` (the row).
    """
    names = [name for name, _ in columns]
    assert names[0] == key, "the key comes first"
    key_type = columns[0][1]
    sets = ", ".join(f"{name} = r.{name}" for name in names[1:])
    # The keys again as an array on the table's side: Postgres estimates a record set at 100 rows whatever it
    # holds, and then scans a small table whole to hash-join it; ``= ANY(keys)`` makes it look the rows up.
    condition = f"t.{key} = r.{key} AND t.{key} = ANY(CAST(:keys AS {key_type}[]))" + (
        f" AND ({where})" if where else ""
    )
    # Identifiers and ``where`` from code, as in bulk_insert; every value is bound (:rows, :keys): no B608.
    return hot(text(f"UPDATE {table} AS t SET {sets} FROM {_recordset(columns)} WHERE {condition}"))  # nosec B608  # noqa: S608


def rows_parameter(rows: Iterable[Mapping[str, Any]], columns: Columns) -> dict[str, Any]:
    """The parameters of a ``bulk_insert`` or ``bulk_update``: the rows' columns as a JSON array (``:rows``),
    and the first column's values (``:keys``, which an update looks its rows up by)."""
    names = [name for name, _ in columns]
    picked = [{name: row[name] for name in names} for row in rows]
    return {"rows": jsonutil.dumps(picked), "keys": [row[names[0]] for row in picked]}
