"""Settlement's tables: trade confirmations, settlement instructions and positions (caller's transaction).

``SettlementRepository`` is a buffered repository of the unit of work (``uow.settlement``):
a batch ``prepare``s it once (locks its positions, loads its instruments and the confirmations of its execution
ids, four statements), its handler then works in memory, and ``flush`` writes the batch's confirmations,
instructions and positions in one statement per table. Anything not prepared is read on first use, one
message at a time, so the repository also works for a single message without ``prepare``.

Plain SQL built once at import: building statements per call showed up in settlement's profile.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, text

from common.orders.records import BookedTrade, Confirmation, Position, PositionKey, SettlementInstrument
from common.store import hot_sql
from common.store.bulk import bulk_insert, bulk_update, rows_parameter

_TICK = timedelta(microseconds=1)

# Missing positions are created flat, in the caller's (sorted) order, so overlapping batches queue.
_CREATE_POSITIONS = hot_sql.hot(
    text(
        "INSERT INTO positions (account_id, symbol, quantity, average_cost, realized_pnl, updated_at) "
        "SELECT k.account_id, k.symbol, 0, 0, 0, :now "
        "FROM unnest(CAST(:accounts AS varchar[]), CAST(:symbols AS varchar[])) WITH ORDINALITY "
        "AS k(account_id, symbol, n) ORDER BY k.n "
        "ON CONFLICT (account_id, symbol) DO NOTHING"
    )
)
# Locked in (account_id, symbol) order, byte-wise like Python's sort of the keys above.
_LOCK_POSITIONS = hot_sql.hot(
    text(
        "SELECT p.account_id, p.symbol, p.quantity, p.average_cost, p.realized_pnl FROM positions p "
        "JOIN unnest(CAST(:accounts AS varchar[]), CAST(:symbols AS varchar[])) AS k(account_id, symbol) "
        "ON p.account_id = k.account_id AND p.symbol = k.symbol "
        'ORDER BY p.account_id COLLATE "C", p.symbol COLLATE "C" FOR UPDATE OF p'
    )
)
_POSITION_COLUMNS = (
    ("account_id", "varchar"),
    ("symbol", "varchar"),
    ("quantity", "numeric"),
    ("average_cost", "numeric"),
    ("realized_pnl", "numeric"),
    ("updated_at", "timestamptz"),
)
_SAVE_POSITIONS = bulk_update("positions", "account_id", _POSITION_COLUMNS, where="t.symbol = r.symbol")
_INSTRUMENTS = hot_sql.hot(
    text(
        "SELECT symbol, asset_class, currency, settlement_days FROM instruments "
        "WHERE symbol = ANY(CAST(:symbols AS varchar[]))"
    )
)
_CONFIRMATIONS = hot_sql.hot(
    text(
        "SELECT id, execution_id, reversal, side, quantity, price, fees, trade_date, settlement_date "
        "FROM trade_confirmations WHERE execution_id = ANY(CAST(:ids AS varchar[]))"
    )
)
_CONFIRMATION_COLUMNS = (
    ("id", "varchar"),
    ("order_id", "varchar"),
    ("execution_id", "varchar"),
    ("account_id", "varchar"),
    ("symbol", "varchar"),
    ("side", "varchar"),
    ("quantity", "numeric"),
    ("price", "numeric"),
    ("gross_amount", "numeric"),
    ("fees", "numeric"),
    ("net_amount", "numeric"),
    ("currency", "varchar"),
    ("venue", "varchar"),
    ("trade_date", "date"),
    ("settlement_date", "date"),
    ("reversal", "boolean"),
    ("created_at", "timestamptz"),
)
_INSTRUCTION_COLUMNS = (
    ("id", "varchar"),
    ("confirmation_id", "varchar"),
    ("order_id", "varchar"),
    ("account_id", "varchar"),
    ("symbol", "varchar"),
    ("securities_direction", "varchar"),
    ("quantity", "numeric"),
    ("cash_amount", "numeric"),
    ("currency", "varchar"),
    ("settlement_date", "date"),
    ("status", "varchar"),
    ("created_at", "timestamptz"),
)
# No ON CONFLICT: a batch never buffers a confirmation it found booked (the position lock keeps the other
# writers of the execution out), so a conflict here is a bug or a race to report, and fails the batch (which the
# runtime then retries message by message, each seeing what is booked).
_INSERT_CONFIRMATIONS = bulk_insert("trade_confirmations", _CONFIRMATION_COLUMNS)
_INSERT_INSTRUCTIONS = bulk_insert("settlement_instructions", _INSTRUCTION_COLUMNS)
_STANDING_TRADES = text(
    "SELECT c.execution_id, c.side, c.quantity, c.price FROM trade_confirmations c "
    "WHERE c.account_id = :account_id AND c.symbol = :symbol AND NOT c.reversal AND NOT EXISTS ("
    "SELECT 1 FROM trade_confirmations r WHERE r.execution_id = c.execution_id AND r.reversal) "
    "ORDER BY c.created_at, c.id"
)


class SettlementRepository:
    """Settlement's rows of one transaction: positions locked and held in memory, writes buffered to ``flush``."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.reset()

    def reset(self) -> None:
        """Forget what this transaction locked, read and buffered (after a commit or a rollback)."""
        self._positions: dict[PositionKey, Position] = {}  # locked, as this transaction leaves them
        self._dirty: dict[PositionKey, datetime] = {}  # positions to write, with their updated_at
        self._instruments: dict[str, SettlementInstrument | None] = {}
        self._confirmations: dict[tuple[str, bool], Confirmation] = {}  # booked, before or in this transaction
        self._checked: set[str] = set()  # execution ids whose confirmations are in _confirmations
        self._new_confirmations: list[Mapping[str, Any]] = []
        self._new_instructions: list[Mapping[str, Any]] = []
        self._last_stamp: datetime | None = None

    # --- batch-wide reads (``prepare``) ----------------------------------------------------------------------

    def load_instruments(self, symbols: Iterable[str]) -> None:
        """Read these instruments in one round trip (an unknown one is remembered as None)."""
        wanted = sorted(set(symbols) - self._instruments.keys())
        if not wanted:
            return
        for symbol in wanted:
            self._instruments[symbol] = None
        for row in hot_sql.rows(self._connection, _INSTRUMENTS, {"symbols": wanted}):
            self._instruments[row[0]] = SettlementInstrument(*row)

    def lock_positions(self, keys: Iterable[PositionKey], now: datetime) -> None:
        """Lock these (account_id, symbol) positions, creating flat ones first, in sorted order so the writers of
        overlapping batches queue behind each other instead of deadlocking; two statements for the lot.

        Take the locks before reading the confirmations they guard (``load_confirmations``): in READ COMMITTED a
        statement after the wait sees what the writer waited for committed.
        """
        wanted = sorted(set(keys) - self._positions.keys())
        if not wanted:
            return
        params = {"accounts": [k[0] for k in wanted], "symbols": [k[1] for k in wanted]}
        hot_sql.execute(self._connection, _CREATE_POSITIONS, {**params, "now": now})
        for account_id, symbol, *position in hot_sql.rows(self._connection, _LOCK_POSITIONS, params):
            self._positions[(account_id, symbol)] = Position(*position)
        missing = [k for k in wanted if k not in self._positions]
        if missing:  # created above or there before, and locked: cannot happen
            raise RuntimeError(f"positions not locked: {missing}")

    def load_confirmations(self, execution_ids: Iterable[str]) -> None:
        """Read the confirmations (and reversals) of these executions in one round trip."""
        ids = sorted(set(execution_ids) - self._checked)
        if not ids:
            return
        for row in hot_sql.mappings(self._connection, _CONFIRMATIONS, {"ids": ids}):
            self._confirmations[(row["execution_id"], row["reversal"])] = Confirmation.of(row)
        self._checked.update(ids)

    # --- per message, in memory (reads what was not prepared) -----------------------------------------------

    def instrument(self, symbol: str) -> SettlementInstrument | None:
        """The instrument, or None if unknown."""
        if symbol not in self._instruments:
            self.load_instruments([symbol])
        return self._instruments[symbol]

    def position(self, account_id: str, symbol: str) -> Position:
        """The locked position as this transaction has it (locked now if ``lock_positions`` did not)."""
        key = (account_id, symbol)
        found = self._positions.get(key)
        if found is None:
            self.lock_positions([key], datetime.now(UTC))
            found = self._positions[key]
        return found

    def confirmation(self, execution_id: str, reversal: bool) -> Confirmation | None:
        """The confirmation of an execution (or of its reversal), booked before or in this transaction."""
        if execution_id not in self._checked:
            self.load_confirmations([execution_id])
        return self._confirmations.get((execution_id, reversal))

    def stamp(self) -> datetime:
        """Now, strictly later than the previous stamp of this transaction: confirmations are replayed in
        ``created_at`` order, which must be the order they were booked in, however fast a batch goes."""
        now = datetime.now(UTC)
        if self._last_stamp is not None and now <= self._last_stamp:
            now = self._last_stamp + _TICK
        self._last_stamp = now
        return now

    # --- buffered writes ------------------------------------------------------------------------------------

    def add(self, confirmation: Mapping[str, Any], instruction: Mapping[str, Any]) -> None:
        """Buffer a confirmation (not booked before: see ``confirmation``) and its instruction."""
        execution_id: str = confirmation["execution_id"]
        self._confirmations[(execution_id, confirmation["reversal"])] = Confirmation.of(confirmation)
        self._new_confirmations.append(confirmation)
        self._new_instructions.append(instruction)

    def set_position(self, account_id: str, symbol: str, position: Position, now: datetime) -> None:
        """Change a locked position (written at ``flush``)."""
        key = (account_id, symbol)
        if key not in self._positions:
            raise RuntimeError(f"position {key} changed without its lock")
        self._positions[key] = position
        self._dirty[key] = now

    def flush(self) -> None:
        """Write what is buffered: one statement per table."""
        if self._new_confirmations:
            hot_sql.execute(
                self._connection, _INSERT_CONFIRMATIONS, rows_parameter(self._new_confirmations, _CONFIRMATION_COLUMNS)
            )
            self._new_confirmations = []
        if self._new_instructions:
            hot_sql.execute(
                self._connection, _INSERT_INSTRUCTIONS, rows_parameter(self._new_instructions, _INSTRUCTION_COLUMNS)
            )
            self._new_instructions = []
        if self._dirty:
            rows = [
                {
                    "account_id": key[0],
                    "symbol": key[1],
                    "quantity": self._positions[key].quantity,
                    "average_cost": self._positions[key].average_cost,
                    "realized_pnl": self._positions[key].realized_pnl,
                    "updated_at": updated_at,
                }
                for key, updated_at in self._dirty.items()
            ]
            hot_sql.execute(self._connection, _SAVE_POSITIONS, rows_parameter(rows, _POSITION_COLUMNS))
            self._dirty = {}

    # --- the rare path: replaying a position ----------------------------------------------------------------

    def standing_trades(self, account_id: str, symbol: str) -> list[BookedTrade]:
        """The account's confirmed trades in the symbol that no reversal undid, in booking order (what this
        transaction buffered included: it is flushed first)."""
        self.flush()
        rows = self._connection.execute(_STANDING_TRADES, {"account_id": account_id, "symbol": symbol})
        return [BookedTrade(row.execution_id, row.side, row.quantity, row.price) for row in rows]
