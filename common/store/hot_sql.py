"""Statements of the hot path, compiled once and run on the connection's psycopg cursor.

Through ``Connection.execute`` SQLAlchemy Core spends 50-90 µs of CPU per statement on top of psycopg's own
60-70 µs (the cache key, the compiled-cache look-up, an execution context, the result's metadata), measured
on a prebuilt ``SELECT`` on this machine class. A stage at a steady rate runs about 45 statements per order,
so that overhead was a tenth of the pipeline's CPU (docs/design.md, Speed). A statement here is compiled
once, at import, for the psycopg dialect, and each call goes straight to the DBAPI cursor through
``Connection._cursor_execute``, which keeps what matters of SQLAlchemy's path:

- the ``before_cursor_execute`` / ``after_cursor_execute`` events (the tests count statements with them);
- a failure wrapped as ``sqlalchemy.exc.DBAPIError``, and a lost connection invalidating the pool, as any
  other statement's (the stage runtime and the API tell an outage from a bad row by those);
- the transaction: a connection not yet in one begins it, as SQLAlchemy's autobegin would.

``_cursor_execute`` is SQLAlchemy's own path for the statements it runs outside ``execute`` (defaults,
sequences); private, so the version is pinned and ``tests/integration/test_hot_sql.py`` holds this module to the
behaviour above.

Types are psycopg's, which are what SQLAlchemy hands back for these columns with this dialect: ``numeric`` as
``Decimal``, ``timestamptz`` as an aware ``datetime``, ``jsonb`` through the engine's JSON loader (set on each
connection by the dialect, so numbers stay exact), arrays as lists. Use it for statements that run per batch
or per request; anything else reads better through SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from psycopg.rows import dict_row, tuple_row
from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect
from sqlalchemy.sql.expression import ClauseElement

_DIALECT = psycopg_dialect()  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class HotStatement:
    """SQL in psycopg's ``%(name)s`` form, and the values of the parameters the statement fixes itself."""

    sql: str
    fixed: Mapping[str, Any]


def hot(statement: ClauseElement) -> HotStatement:
    """Compile ``statement`` (Core or ``text()``) once for psycopg."""
    compiled = statement.compile(dialect=_DIALECT)
    # Only the values the statement carries (a LIMIT's, say): a parameter left to the caller has None here.
    return HotStatement(str(compiled), {k: v for k, v in compiled.params.items() if v is not None})


def _cursor(connection: Connection, statement: HotStatement, parameters: Mapping[str, Any] | None, factory: Any) -> Any:
    if not connection.in_transaction():
        connection.begin()
    values = {**statement.fixed, **(parameters or {})} if statement.fixed else (parameters or {})
    cursor: Any = connection.connection.cursor()  # psycopg's, whose rows this module shapes
    cursor.row_factory = factory
    connection._cursor_execute(cursor, statement.sql, values)
    return cursor


def execute(connection: Connection, statement: HotStatement, parameters: Mapping[str, Any] | None = None) -> int:
    """Run a statement that returns no rows; its row count."""
    cursor = _cursor(connection, statement, parameters, tuple_row)
    count: int = cursor.rowcount
    cursor.close()
    return count


def rows(
    connection: Connection, statement: HotStatement, parameters: Mapping[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    """The rows as tuples."""
    cursor = _cursor(connection, statement, parameters, tuple_row)
    found: list[tuple[Any, ...]] = cursor.fetchall()
    cursor.close()
    return found


def mappings(
    connection: Connection, statement: HotStatement, parameters: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The rows as dictionaries by column name."""
    cursor = _cursor(connection, statement, parameters, dict_row)
    found: list[dict[str, Any]] = cursor.fetchall()
    cursor.close()
    return found


def scalars(connection: Connection, statement: HotStatement, parameters: Mapping[str, Any] | None = None) -> list[Any]:
    """The first column of each row."""
    return [row[0] for row in rows(connection, statement, parameters)]
