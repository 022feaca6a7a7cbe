"""``oms bench --history N``: N FILLED orders of history, loaded with set-based SQL before the measurement.

Each history order gets what a MARKET order leaves behind on its happy path: the order (FILLED), five events
(ORDER_CREATED, RISK_APPROVED, ORDER_ROUTED, ORDER_ACKNOWLEDGED, ORDER_FILLED), two execution reports (NEW,
FILL), one accepted NEW request, one trade confirmation with its settlement instruction (PENDING: nothing
settles instructions yet), and the five inbox rows its messages left (retention keeps them 30 days). Rows are
made by ``INSERT ... SELECT FROM generate_series`` in chunks (one transaction per chunk and table), spread over
the past days, then the tables are analysed so the planner sees them as the workers will.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Engine, text

CHUNK = 100_000

# :lo and :hi bound the series; :n is the total, to spread created_at over the past (two seconds apart).
_ORDERS = """
INSERT INTO orders (id, account_id, symbol, side, type, status, quantity, filled_quantity, average_execution_price,
    time_in_force, strategy_id, broker_order_id, created_at, updated_at, state, client_order_id, fees, version)
SELECT md5('o' || i)::uuid::text, CASE WHEN i % 2 = 0 THEN 'ACC-001' ELSE 'ACC-002' END,
    (ARRAY['AAPL', 'MSFT', 'SPY'])[1 + i % 3], CASE WHEN i % 3 = 0 THEN 'SELL' ELSE 'BUY' END, 'MARKET', 'FILLED',
    1 + i % 5, 1 + i % 5, 100, 'DAY', 'history', 'HIST-' || i, ts, ts + interval '40 milliseconds', 'FILLED',
    'hist-' || i, 0, 6
FROM (SELECT i, now() - (:n - i) * interval '2 seconds' - interval '1 hour' AS ts
      FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS i) AS s
"""

# The history's events stand in for volume, not for an audit trail: their hash chain is zeros (the real one is
# computed by the writer, in Python), so `./oms audit verify` on a bench database reports them.
_EVENTS = """
INSERT INTO order_events (id, order_id, type, payload, user_id, timestamp, correlation_id, sequence, message_id,
    prev_hash, hash)
SELECT md5('e' || i || '-' || k)::uuid::text, md5('o' || i)::uuid::text, t,
    jsonb_build_object('status', CASE WHEN t = 'ORDER_FILLED' THEN 'FILLED' ELSE 'OPEN' END, 'history', true),
    'history', ts + k * interval '8 milliseconds', 'hist-' || i, k, md5('m' || i || '-' || k)::uuid::text,
    decode(repeat('00', 32), 'hex'), decode(repeat('00', 32), 'hex')
FROM (SELECT i, now() - (:n - i) * interval '2 seconds' - interval '1 hour' AS ts
      FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS i) AS s
CROSS JOIN unnest(ARRAY['ORDER_CREATED', 'RISK_APPROVED', 'ORDER_ROUTED', 'ORDER_ACKNOWLEDGED', 'ORDER_FILLED'])
    WITH ORDINALITY AS e(t, k)
"""

_REPORTS = """
INSERT INTO execution_reports (id, order_id, execution_id, quantity, price, timestamp, fees, venue, exec_type,
    broker_order_id, cum_qty, leaves_qty, avg_px, received_at, last_qty, last_px)
SELECT md5('x' || i || '-' || k)::uuid::text, md5('o' || i)::uuid::text, 'HIST-EX-' || i || '-' || k,
    CASE WHEN k = 1 THEN 0 ELSE 1 + i % 5 END, CASE WHEN k = 1 THEN 0 ELSE 100 END,
    ts + k * interval '20 milliseconds', 0, 'SIM', CASE WHEN k = 1 THEN 'NEW' ELSE 'FILL' END, 'HIST-' || i,
    CASE WHEN k = 1 THEN 0 ELSE 1 + i % 5 END, CASE WHEN k = 1 THEN 1 + i % 5 ELSE 0 END,
    CASE WHEN k = 1 THEN NULL ELSE 100 END, ts + k * interval '20 milliseconds',
    CASE WHEN k = 1 THEN NULL ELSE 1 + i % 5 END, CASE WHEN k = 1 THEN NULL ELSE 100 END
FROM (SELECT i, now() - (:n - i) * interval '2 seconds' - interval '1 hour' AS ts
      FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS i) AS s
CROSS JOIN generate_series(1, 2) AS k
"""

_REQUESTS = """
INSERT INTO order_requests (request_id, order_id, kind, terms, status, created_by, created_at, updated_at)
SELECT md5('r' || i)::uuid::text, md5('o' || i)::uuid::text, 'NEW', '{}'::jsonb, 'ACCEPTED', 'history', ts,
    ts + interval '20 milliseconds'
FROM (SELECT i, now() - (:n - i) * interval '2 seconds' - interval '1 hour' AS ts
      FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS i) AS s
"""

_CONFIRMATIONS = """
INSERT INTO trade_confirmations (id, order_id, execution_id, account_id, symbol, side, quantity, price,
    gross_amount, fees, net_amount, currency, venue, trade_date, settlement_date, created_at)
SELECT md5('c' || i)::uuid::text, md5('o' || i)::uuid::text, 'HIST-EX-' || i || '-2',
    CASE WHEN i % 2 = 0 THEN 'ACC-001' ELSE 'ACC-002' END, (ARRAY['AAPL', 'MSFT', 'SPY'])[1 + i % 3],
    CASE WHEN i % 3 = 0 THEN 'SELL' ELSE 'BUY' END, 1 + i % 5, 100, (1 + i % 5) * 100, 0, (1 + i % 5) * 100,
    'USD', 'SIM', ts::date, ts::date + 2, ts + interval '50 milliseconds'
FROM (SELECT i, now() - (:n - i) * interval '2 seconds' - interval '1 hour' AS ts
      FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS i) AS s
"""

_INSTRUCTIONS = """
INSERT INTO settlement_instructions (id, confirmation_id, order_id, account_id, symbol, securities_direction,
    quantity, cash_amount, currency, settlement_date, status, created_at)
SELECT md5('s' || i)::uuid::text, md5('c' || i)::uuid::text, md5('o' || i)::uuid::text,
    CASE WHEN i % 2 = 0 THEN 'ACC-001' ELSE 'ACC-002' END, (ARRAY['AAPL', 'MSFT', 'SPY'])[1 + i % 3],
    CASE WHEN i % 3 = 0 THEN 'DELIVER' ELSE 'RECEIVE' END, 1 + i % 5,
    CASE WHEN i % 3 = 0 THEN (1 + i % 5) * 100 ELSE -(1 + i % 5) * 100 END, 'USD', ts::date + 2, 'PENDING',
    ts + interval '50 milliseconds'
FROM (SELECT i, now() - (:n - i) * interval '2 seconds' - interval '1 hour' AS ts
      FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS i) AS s
"""

# What each stage's inbox keeps of the messages it handled (within the 30 days retention keeps).
_INBOX = """
INSERT INTO inbox (stage, message_id, processed_at, digest)
SELECT st, md5('i' || i || st)::uuid::text, ts + interval '30 milliseconds', md5('d' || i || st)
FROM (SELECT i, now() - (:n - i) * interval '2 seconds' - interval '1 hour' AS ts
      FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS i) AS s
CROSS JOIN unnest(ARRAY['intake', 'risk_gate', 'router', 'execution_handler', 'settlement']) AS st
"""

TABLES = (
    ("orders", _ORDERS),
    ("order_events", _EVENTS),
    ("execution_reports", _REPORTS),
    ("order_requests", _REQUESTS),
    ("trade_confirmations", _CONFIRMATIONS),
    ("settlement_instructions", _INSTRUCTIONS),
    ("inbox", _INBOX),
)


def chunks(total: int, size: int = CHUNK) -> list[tuple[int, int]]:
    """Inclusive (lo, hi) bounds covering 1..total in steps of ``size``."""
    return [(lo, min(lo + size - 1, total)) for lo in range(1, total + 1, size)]


def preload(engine: Engine, orders: int, say: Callable[[str], None] = print) -> dict[str, float]:
    """Insert ``orders`` orders of history; returns the seconds spent and the rows written per table."""
    started = time.perf_counter()
    rows: dict[str, int] = {}
    for lo, hi in chunks(orders):
        for table, sql in TABLES:
            with engine.begin() as connection:
                result = connection.execute(text(sql), {"lo": lo, "hi": hi, "n": orders})
                rows[table] = rows.get(table, 0) + (result.rowcount or 0)
        say(f"  history: {hi:,}/{orders:,} orders loaded ({time.perf_counter() - started:.0f}s)")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        for table, _ in TABLES:
            connection.execute(text(f"VACUUM ANALYZE {table}"))
    seconds = time.perf_counter() - started
    return {"orders": float(orders), "seconds": seconds, **{f"rows_{t}": float(n) for t, n in rows.items()}}
