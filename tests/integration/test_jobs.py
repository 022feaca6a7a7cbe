"""The background jobs on the real database: DAY expiry, statistics refresh, retention, reconciliation.

Each test books orders for an account of its own (the database is shared by the whole session) and hands the
jobs that account, so they never touch another test's orders.
"""

from __future__ import annotations

import importlib
import uuid
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import Engine, insert, select, text, update

from common.domain import Side, TimeInForce
from common.orders.commands import cancel_order
from common.orders.records import REQUEST_SENT
from common.settings import InfraSettings, JobsSettings, SessionSettings, Settings
from common.store import tables
from common.store.requests_repo import record_request, set_request_status
from common.store.tables import dlq_replays, job_runs, order_reconciliations
from common.store.uow import UnitOfWork
from services.jobs.config import JOBS_QUEUE, SYSTEM_USER, session_calendar
from services.jobs.expiry import EXPIRY_REASON, expire_day_orders
from services.jobs.reconcile import reconcile_stuck_orders
from services.jobs.retention import purge_retention
from services.jobs.session import SessionCalendar
from services.jobs.statistics import refresh_statistics
from tests.support.api import new_account
from tests.support.orders import create_order, order_record, outbox_bodies, store

pytestmark = pytest.mark.integration

D = Decimal
NEW_YORK = ZoneInfo("America/New_York")
# A Tuesday; AAPL (the demo data) closes at 16:00 New York time.
SESSION_DAY_CLOSE = datetime(2026, 3, 10, 16, 0, tzinfo=NEW_YORK).astimezone(UTC)
CALENDAR = SessionCalendar.of("America/New_York", "16:00")


@pytest.fixture
def account(engine: Engine) -> str:
    """An account of the test's own."""
    return new_account(engine, prefix="ACC-T")


def book(
    engine: Engine,
    account: str,
    *,
    created_at: datetime,
    state: str = "NEW",
    status: str = "PENDING",
    tif: str = "DAY",
    side: str = "BUY",
    symbol: str = "AAPL",
    **columns: Any,
) -> str:
    """An order as the intake books it, then moved to ``state`` (the jobs read the columns, not the history)."""
    order = create_order(
        account_id=account,
        symbol=symbol,
        side=Side(side),
        quantity=D("10"),
        price=D("100"),
        time_in_force=TimeInForce(tif),
        user_id="test",
        now=created_at,
    )
    store(engine, order)
    if state != "NEW" or columns:
        with engine.begin() as connection:
            connection.execute(
                update(tables.orders)
                .where(tables.orders.c.id == order.id)
                .values(state=state, status=status, updated_at=created_at, **columns)
            )
    return order.id


# --------------------------------------------------------------------------- DAY expiry


def test_day_orders_open_at_the_close_are_ended_and_the_venue_is_told(engine: Engine, account: str) -> None:
    before = SESSION_DAY_CLOSE - timedelta(hours=2)
    unrouted = book(engine, account, created_at=before)
    approved = book(engine, account, created_at=before, state="APPROVED")
    at_venue = book(engine, account, created_at=before, state="OPEN", status="OPEN")
    gtc = book(engine, account, created_at=before, state="OPEN", status="OPEN", tif="GTC")
    after_close = book(engine, account, created_at=SESSION_DAY_CLOSE + timedelta(minutes=5))
    filled = book(engine, account, created_at=before, state="FILLED", status="FILLED", filled_quantity=D("10"))

    now = SESSION_DAY_CLOSE + timedelta(minutes=10)
    outcome = expire_day_orders(engine, CALENDAR, now=now, accounts=[account])

    assert outcome == {"expired": 2, "cancel_requested": 1, "cancel_outstanding": 0, "skipped": 0}
    for order_id in (unrouted, approved):
        row = order_record(engine, order_id)
        assert (row.state, row.status) == ("EXPIRED", "CANCELED")
        with engine.connect() as connection:
            event = connection.execute(
                select(tables.order_events)
                .where(tables.order_events.c.order_id == order_id)
                .order_by(tables.order_events.c.sequence.desc())
            ).first()
        assert event is not None and event.type == "ORDER_EXPIRED" and event.user_id == SYSTEM_USER
        assert event.payload["reason"] == EXPIRY_REASON
    # At the venue: a cancel request to the router (the reason is in its request row); the order moves when the
    # venue answers.
    row = order_record(engine, at_venue)
    assert row.state == "OPEN" and row.pending_request["kind"] == "CANCEL"
    [route_cancel] = outbox_bodies(engine, at_venue, "router.cancel")
    assert "reason" not in route_cancel
    assert route_cancel["requestId"] == row.pending_request["requestId"]
    for untouched, state in ((gtc, "OPEN"), (after_close, "NEW"), (filled, "FILLED")):
        assert order_record(engine, untouched).state == state

    # Run again (a retry, or the sweep): nothing more happens; the cancel already sent is left to itself.
    again = expire_day_orders(engine, CALENDAR, now=now, accounts=[account])
    assert again == {"expired": 0, "cancel_requested": 0, "cancel_outstanding": 1, "skipped": 0}
    assert len(outbox_bodies(engine, at_venue, "router.cancel")) == 1


def test_expiry_follows_the_instruments_own_session_and_the_holidays(engine: Engine, account: str) -> None:
    # VOD closes at 16:30 London time: 16:00 New York has not closed its session of that day yet.
    london_close = datetime(2026, 3, 10, 16, 30, tzinfo=ZoneInfo("Europe/London")).astimezone(UTC)
    vod = book(engine, account, symbol="VOD", created_at=london_close - timedelta(hours=3))
    assert (
        expire_day_orders(engine, CALENDAR, now=london_close - timedelta(minutes=1), accounts=[account])["expired"] == 0
    )
    assert (
        expire_day_orders(engine, CALENDAR, now=london_close + timedelta(minutes=1), accounts=[account])["expired"] == 1
    )
    assert order_record(engine, vod).state == "EXPIRED"

    # A holiday has no close: a DAY order entered that day lives until the next trading day's close.
    holiday = SessionCalendar.of("America/New_York", "16:00", holidays=[SESSION_DAY_CLOSE.date()])
    aapl = book(engine, account, created_at=SESSION_DAY_CLOSE - timedelta(hours=1))
    assert (
        expire_day_orders(engine, holiday, now=SESSION_DAY_CLOSE + timedelta(hours=1), accounts=[account])["expired"]
        == 0
    )
    next_close = SESSION_DAY_CLOSE + timedelta(days=1)
    assert expire_day_orders(engine, holiday, now=next_close + timedelta(seconds=1), accounts=[account])["expired"] == 1
    assert order_record(engine, aapl).state == "EXPIRED"


# --------------------------------------------------------------------------- statistics


def test_statistics_view_matches_the_orders(engine: Engine, account: str) -> None:
    day = datetime(2026, 2, 3, 15, 0, tzinfo=UTC)
    filled: dict[str, Any] = {"state": "FILLED", "status": "FILLED", "filled_quantity": D("10")}
    book(engine, account, created_at=day, average_execution_price=D("101.5"), **filled)
    book(engine, account, created_at=day, average_execution_price=D("99.25"), **filled)
    book(engine, account, created_at=day, side="SELL", average_execution_price=D("100"), **filled)
    book(engine, account, created_at=day, state="CANCELED", status="CANCELED")
    book(engine, account, created_at=day, state="EXPIRED", status="CANCELED")
    book(engine, account, created_at=day, state="REJECTED", status="REJECTED")
    book(engine, account, created_at=day)  # still pending
    book(engine, account, created_at=day + timedelta(days=1))  # another day

    result = refresh_statistics(engine)

    assert result["rows"] >= 2
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT trade_date, total_orders, filled_orders, canceled_orders, rejected_orders, buy_notional, "
                "sell_notional FROM daily_order_statistics WHERE account_id = :account ORDER BY trade_date"
            ),
            {"account": account},
        ).all()
        # The whole view against the same aggregate computed from the orders now.
        mismatched = connection.execute(
            text(
                "SELECT count(*) FROM (SELECT DATE_TRUNC('day', created_at AT TIME ZONE 'UTC') AS d, account_id, "
                "count(*) AS n FROM orders GROUP BY 1, 2) o FULL JOIN daily_order_statistics s "
                "ON s.trade_date = o.d AND s.account_id = o.account_id WHERE s.total_orders IS DISTINCT FROM o.n"
            )
        ).scalar()
    assert mismatched == 0
    assert [tuple(r)[1:] for r in rows] == [
        (7, 3, 2, 1, D("10") * D("101.5") + D("10") * D("99.25"), D("1000")),
        (1, 0, 0, 0, D("0"), D("0")),
    ]


# --------------------------------------------------------------------------- retention


def test_retention_removes_only_what_it_should(engine: Engine, account: str) -> None:
    now = datetime.now(UTC)
    old, recent = now - timedelta(days=45), now - timedelta(days=2)
    stage = f"ret_{uuid.uuid4().hex[:8]}"
    ids = {name: f"{stage}-{name}" for name in ("old", "recent", "old_unsent")}
    with engine.begin() as connection:
        connection.execute(
            insert(tables.inbox),
            [
                {"stage": stage, "message_id": ids["old"], "processed_at": old},
                {"stage": stage, "message_id": ids["recent"], "processed_at": recent},
            ],
        )
        outbox_row = {"exchange": "oms", "routing_key": "x", "type": "T", "headers": {}, "body": "{}", "claimed": False}
        connection.execute(
            insert(tables.outbox),
            [
                {**outbox_row, "message_id": ids["old"], "created_at": old, "sent_at": old},
                {**outbox_row, "message_id": ids["recent"], "created_at": recent, "sent_at": recent},
                {**outbox_row, "message_id": ids["old_unsent"], "created_at": old, "sent_at": None},
            ],
        )
        connection.execute(
            insert(tables.message_failures),
            [
                {"stage": stage, "message_id": ids["old"], "error": "e", "attempts": 1, "last_failed_at": old},
                {"stage": stage, "message_id": ids["recent"], "error": "e", "attempts": 1, "last_failed_at": recent},
            ],
        )
        run_ids = connection.execute(
            insert(job_runs).returning(job_runs.c.id),
            [
                {"job": stage, "started_at": old, "finished_at": old, "outcome": "OK", "summary": {}},
                {"job": stage, "started_at": recent, "finished_at": recent, "outcome": "OK", "summary": {}},
            ],
        ).scalars()
        old_run, recent_run = sorted(run_ids)
        connection.execute(
            insert(dlq_replays).values(
                run_id=stage,
                action="REPLAY",
                actor="auditor",
                queue="q",
                message_id=ids["old"],
                outcome="REPLAYED",
                filters={},
                created_at=now - timedelta(days=400),
            )
        )
    # An order a year old, filled, with its audit trail and execution: kept (compliance).
    ancient = book(
        engine, account, created_at=now - timedelta(days=400), state="FILLED", status="FILLED", filled_quantity=D("10")
    )
    with engine.begin() as connection:
        connection.execute(
            insert(tables.execution_reports).values(
                id=str(uuid.uuid4()),
                order_id=ancient,
                execution_id=f"{stage}-exec",
                quantity=D("10"),
                price=D("100"),
                timestamp=now - timedelta(days=400),
                fees=D("0"),
                exec_type="FILL",
                busted=False,
                received_at=now - timedelta(days=400),
            )
        )

    deleted = purge_retention(engine, retention_days=30, now=now)

    assert deleted["inbox"] >= 1 and deleted["outbox"] >= 1 and deleted["message_failures"] >= 1
    with engine.connect() as connection:

        def left(table: Any, *where: Any) -> set[str]:
            return set(connection.execute(select(table.c.message_id).where(*where)).scalars())

        assert left(tables.inbox, tables.inbox.c.stage == stage) == {ids["recent"]}
        assert left(tables.outbox, tables.outbox.c.message_id.in_(ids.values())) == {ids["recent"], ids["old_unsent"]}
        assert left(tables.message_failures, tables.message_failures.c.stage == stage) == {ids["recent"]}
        assert set(connection.execute(select(job_runs.c.id).where(job_runs.c.job == stage)).scalars()) == {recent_run}
        assert old_run != recent_run
        assert left(dlq_replays, dlq_replays.c.run_id == stage) == {ids["old"]}
        kept_events = connection.execute(
            select(tables.order_events.c.id).where(tables.order_events.c.order_id == ancient)
        ).all()
        kept_reports = connection.execute(
            select(tables.execution_reports.c.id).where(tables.execution_reports.c.order_id == ancient)
        ).all()
    assert order_record(engine, ancient).state == "FILLED"
    assert kept_events and len(kept_reports) == 1


# --------------------------------------------------------------------------- reconciliation


def test_stuck_orders_are_redriven_or_asked_about_again(engine: Engine, account: str) -> None:
    now = datetime.now(UTC)
    stuck_since = now - timedelta(minutes=30)
    new = book(engine, account, created_at=stuck_since)
    approved = book(engine, account, created_at=stuck_since, state="APPROVED")
    routed = book(engine, account, created_at=stuck_since, state="ROUTED")
    new_request = str(uuid.uuid4())
    with engine.begin() as connection:
        record_request(
            connection,
            request_id=new_request,
            order_id=routed,
            kind="NEW",
            terms={},
            status=REQUEST_SENT,
            reason=None,
            created_by=None,
            now=stuck_since,
        )
    # Two OPEN orders with a cancel unanswered: one the router sent, one that never left the OMS.
    cancel_sent = book(engine, account, created_at=stuck_since, state="OPEN", status="OPEN")
    cancel_unsent = book(engine, account, created_at=stuck_since, state="OPEN", status="OPEN")
    for order_id in (cancel_sent, cancel_unsent):
        with UnitOfWork(engine) as uow:
            cancel_order(uow, order_id, reason="client asked", user_id="u1")
            uow.commit()
    sent_request = order_record(engine, cancel_sent).pending_request["requestId"]
    with engine.begin() as connection:
        set_request_status(connection, sent_request, REQUEST_SENT, now)
        connection.execute(
            update(tables.orders)
            .where(tables.orders.c.id.in_([cancel_sent, cancel_unsent]))
            .values(updated_at=stuck_since)
        )
    fresh = book(engine, account, created_at=now)  # moved a moment ago: not stuck
    open_quiet = book(engine, account, created_at=stuck_since, state="OPEN", status="OPEN")  # resting: fine

    counts = reconcile_stuck_orders(engine, after_seconds=600, now=now, accounts=[account])

    assert counts == {
        "risk_check_resent": 1,
        "route_new_resent": 1,
        "new_order_resent": 1,
        "cancel_resent": 1,
        "route_cancel_resent": 1,
    }
    assert outbox_bodies(engine, new, "risk.check")[-1]["version"] == order_record(engine, new).version
    assert outbox_bodies(engine, approved, "router.new") == [{"orderId": approved}]
    [resent] = outbox_bodies(engine, routed, "orders.new")
    assert resent["requestId"] == new_request and resent["orderId"] == routed
    [cancel] = outbox_bodies(engine, cancel_sent, "orders.cancel")
    assert cancel["requestId"] == sent_request
    assert len(outbox_bodies(engine, cancel_unsent, "router.cancel")) == 2  # the first, and the one re-sent
    with engine.connect() as connection:
        recorded = dict(
            connection.execute(
                select(order_reconciliations.c.order_id, order_reconciliations.c.action).where(
                    order_reconciliations.c.order_id.in_([new, approved, routed, cancel_sent, cancel_unsent, fresh])
                )
            ).all()
        )
    assert recorded == {
        new: "risk_check_resent",
        approved: "route_new_resent",
        routed: "new_order_resent",
        cancel_sent: "cancel_resent",
        cancel_unsent: "route_cancel_resent",
    }
    assert outbox_bodies(engine, open_quiet, "orders.cancel") == []

    # Just reconciled: left alone until another full period has passed without progress.
    assert reconcile_stuck_orders(engine, after_seconds=600, now=now, accounts=[account]) == {}


# --------------------------------------------------------------------------- actors on a dramatiq worker


def test_actor_runs_on_a_dramatiq_worker_and_records_the_run(
    engine: Engine, database_url: str, amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMS_JOBS_BROKER", "stub")
    import services.jobs.actors as actors

    actors = importlib.reload(actors)
    settings = Settings(
        infra=InfraSettings(database_url=database_url, amqp_url=amqp_url),
        jobs=JobsSettings(broker="stub", gauges_every_seconds=3600),
    )
    actors.wire(settings, engine)
    started = datetime.now(UTC)
    worker = dramatiq.Worker(actors.broker, worker_timeout=100)
    worker.start()
    try:
        actors.refresh_statistics.send()
        stub = actors.broker
        assert isinstance(stub, StubBroker)  # OMS_JOBS_BROKER=stub above; only the stub broker can fail fast
        stub.join(JOBS_QUEUE, fail_fast=True, timeout=30_000)
        worker.join()
    finally:
        worker.stop()
    with engine.connect() as connection:
        runs = connection.execute(
            select(job_runs.c.outcome, job_runs.c.summary).where(
                job_runs.c.job == "refresh_statistics", job_runs.c.started_at >= started
            )
        ).all()
    assert len(runs) == 1
    assert runs[0].outcome == "OK" and runs[0].summary["rows"] >= 0


def test_calendar_default_close_is_the_configured_one() -> None:
    calendar = session_calendar(SessionSettings(timezone="Europe/London", close="16:30"))
    assert calendar.close == time(16, 30)
    assert calendar.last_close(datetime(2026, 3, 10, 17, 0, tzinfo=UTC)) == datetime(2026, 3, 10, 16, 30, tzinfo=UTC)
