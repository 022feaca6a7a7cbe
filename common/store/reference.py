"""Reference data: accounts and instruments, read within the caller's transaction."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, text

from common.orders.records import Account, Instrument
from common.store import hot_sql

# Accounts and instruments in one statement, whatever the number asked for (built once; arrays, not IN lists).
_REFERENCE = hot_sql.hot(
    text(
        " ".join(
            """
        SELECT 'A' AS kind, CAST(a.id AS varchar) AS key, CAST(a.name AS varchar) AS name,
            CAST(a.account_type AS varchar) AS s1, CAST(a.base_currency AS varchar) AS s2,
            CAST(NULL AS varchar) AS s3, CAST(a.cash_balance AS numeric) AS n1, CAST(NULL AS numeric) AS n2,
            CAST(NULL AS numeric) AS n3, a.active AS b1, CAST(NULL AS integer) AS i1, CAST(NULL AS time) AS t1,
            CAST(NULL AS time) AS t2
        FROM accounts AS a
        WHERE a.id = ANY(CAST(:account_ids AS varchar[]))
        UNION ALL
        SELECT 'I', i.symbol, i.name, i.asset_class, i.currency, i.session_timezone, i.tick_size, i.lot_size,
            i.reference_price, i.tradable, i.settlement_days, i.session_open, i.session_close
        FROM instruments AS i
        WHERE i.symbol = ANY(CAST(:symbols AS varchar[]))
        """.split()
        )
    )
)


class ReferenceData:
    """Looks up accounts and instruments, each once per transaction; a batch's in one statement (``prefetch``).

    Forgotten when the transaction commits or rolls back, so a change (an account closed, an instrument
    suspended) applies to the next transaction.
    """

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.reset()

    def reset(self) -> None:
        """Forget what was read (a batch reads each account and instrument once)."""
        self._accounts: dict[str, Account | None] = {}
        self._instruments: dict[str, Instrument | None] = {}

    def prefetch(self, account_ids: Iterable[str], symbols: Iterable[str]) -> None:
        """Read the accounts and instruments not read yet, in one statement."""
        accounts = sorted({a for a in account_ids if a not in self._accounts})
        instruments = sorted({s for s in symbols if s not in self._instruments})
        if not accounts and not instruments:
            return
        rows = hot_sql.rows(self._connection, _REFERENCE, {"account_ids": accounts, "symbols": instruments})
        self._accounts.update(dict.fromkeys(accounts))  # None: looked up, no such account (until found below)
        self._instruments.update(dict.fromkeys(instruments))
        for kind, key, name, s1, s2, s3, n1, n2, n3, b1, i1, t1, t2 in rows:
            if kind == "A":
                self._accounts[key] = Account(
                    id=key, name=name, account_type=s1, base_currency=s2, cash_balance=n1, active=b1
                )
            else:
                self._instruments[key] = Instrument(
                    symbol=key,
                    name=name,
                    asset_class=s1,
                    currency=s2,
                    tick_size=n1,
                    lot_size=n2,
                    tradable=b1,
                    settlement_days=i1,
                    session_open=t1,
                    session_close=t2,
                    session_timezone=s3,
                    reference_price=n3,
                )

    def account(self, account_id: str) -> Account | None:
        """The account, or None if unknown."""
        if account_id not in self._accounts:
            self.prefetch([account_id], ())
        return self._accounts[account_id]

    def instrument(self, symbol: str) -> Instrument | None:
        """The instrument, or None if unknown."""
        if symbol not in self._instruments:
            self.prefetch((), [symbol])
        return self._instruments[symbol]
