"""Least privilege in Postgres (migration 0008): the workers' role writes what the pipeline and the jobs write but
Postgres refuses it an UPDATE or DELETE of ``order_events``; the read side only reads; retention deletes, and
records the chains it drops.

The roles are the local server's (tools/infra/postgres.py makes them and their passwords); on servers given by
``OMS_TEST_DATABASE_URL`` or containers, where this checkout made no role, the module is skipped.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import ProgrammingError

from services.jobs.expiry import expire_day_orders
from services.jobs.reconcile import reconcile_stuck_orders
from services.jobs.retention import purge_retention
from services.jobs.runs import run_job
from services.jobs.session import SessionCalendar
from services.jobs.statistics import refresh_statistics
from tests.support.api import new_account, store_order
from tests.support.db import open_engine
from tests.support.orders import event_records, order_record, submit
from tools import infra, migrate
from tools.infra import InfraUrls

pytestmark = pytest.mark.integration

DENIED = "permission denied"


def _role_engine(kind: str, database_url: str) -> Iterator[Engine]:
    url = infra.role_url(kind, database_url)
    if url is None:
        pytest.skip(f"no local {kind} role for this server (tools/infra/postgres.py makes them for the local one)")
    with open_engine(url, demo_data=False) as engine:
        yield engine


@pytest.fixture(scope="module")
def worker(database_url: str) -> Iterator[Engine]:
    yield from _role_engine(infra.postgres.WORKER, database_url)


@pytest.fixture(scope="module")
def reader(database_url: str) -> Iterator[Engine]:
    yield from _role_engine(infra.postgres.READER, database_url)


@pytest.fixture(scope="module")
def deleter(database_url: str) -> Iterator[Engine]:
    yield from _role_engine(infra.postgres.RETENTION, database_url)


@pytest.fixture(scope="module")
def owner(database_url: str) -> Iterator[Engine]:
    with open_engine(database_url) as engine:
        yield engine


def refused(engine: Engine, sql: str, *, why: str = DENIED, **parameters: object) -> str:
    """Run ``sql``; Postgres must refuse it for want of a right (``why``). The error's text."""
    with pytest.raises(ProgrammingError) as raised, engine.begin() as connection:
        connection.execute(text(sql), parameters)
    assert why in str(raised.value), raised.value
    return str(raised.value)


def test_the_worker_role_books_orders_but_postgres_refuses_it_an_update_or_delete_of_events(
    owner: Engine, worker: Engine
) -> None:
    order, created = submit(worker, account_id=new_account(owner, prefix="ACC-ROLE"))
    assert created and order.state == "NEW"
    event = event_records(worker, order.id)[0]

    message = refused(worker, "UPDATE order_events SET payload = '{}' WHERE id = :id", id=event.id)
    assert "order_events" in message
    refused(worker, "DELETE FROM order_events WHERE id = :id", id=event.id)
    refused(worker, "TRUNCATE order_events")
    refused(worker, "ALTER TABLE order_events DROP CONSTRAINT chk_order_events_hash_length", why="must be owner")
    refused(worker, "DELETE FROM orders WHERE id = :id", id=order.id)
    refused(worker, "SELECT * FROM purged_order_chains")
    assert [e.id for e in event_records(owner, order.id)] == [event.id]  # untouched

    with worker.begin() as connection:  # what the pipeline does write, it may
        connection.execute(text("UPDATE orders SET notes = 'ok' WHERE id = :id"), {"id": order.id})


def test_the_jobs_run_as_the_worker_role(owner: Engine, worker: Engine) -> None:
    account = new_account(owner, prefix="ACC-ROLE")
    close = datetime(2026, 3, 10, 16, 0, tzinfo=ZoneInfo("America/New_York")).astimezone(UTC)
    day_order = store_order(worker, account, created_at=close - timedelta(hours=2))
    stuck = store_order(worker, account)
    with owner.begin() as connection:
        connection.execute(
            text("UPDATE orders SET updated_at = now() - interval '1 hour' WHERE id = :id"), {"id": stuck}
        )

    reconciled = reconcile_stuck_orders(worker, after_seconds=600, accounts=[account])
    expired = expire_day_orders(
        worker, SessionCalendar.of("America/New_York", "16:00"), now=close + timedelta(minutes=10), accounts=[account]
    )
    summary = run_job(worker, "test_roles", lambda: refresh_statistics(worker))

    assert expired["expired"] >= 1 and order_record(owner, day_order).state == "EXPIRED"
    assert reconciled == {"risk_check_resent": 1}
    assert summary["rows"] >= 1


def test_the_read_role_only_reads(owner: Engine, reader: Engine) -> None:
    order_id = store_order(owner, new_account(owner, prefix="ACC-ROLE"), status="FILLED")
    with reader.connect() as connection:
        assert connection.execute(
            text("SELECT count(*) FROM order_events WHERE order_id = :id"), {"id": order_id}
        ).scalar()
        assert connection.execute(text("SELECT count(*) FROM order_summary WHERE id = :id"), {"id": order_id}).scalar()
        connection.execute(text("SELECT count(*) FROM purged_order_chains")).scalar()
    refused(reader, "UPDATE orders SET notes = 'x' WHERE id = :id", id=order_id)
    refused(reader, "INSERT INTO inbox (stage, message_id) VALUES ('x', :id)", id=str(uuid.uuid4()))
    refused(reader, "SELECT refresh_daily_order_statistics()")


def test_retention_as_its_role_drops_and_records_old_closed_chains_only(
    owner: Engine, worker: Engine, deleter: Engine
) -> None:
    account = new_account(owner, prefix="ACC-ROLE")
    old_closed, old_open, recent_closed = (
        store_order(worker, account, status=status) for status in ("FILLED", "OPEN", "FILLED")
    )
    long_ago = datetime.now(UTC) - timedelta(days=4000)
    with owner.begin() as connection:
        connection.execute(
            text("UPDATE orders SET updated_at = :at WHERE id = ANY(:ids)"),
            {"at": long_ago, "ids": [old_closed, old_open]},
        )

    deleted = purge_retention(deleter, retention_days=30, order_events_days=3650)

    assert deleted["order_event_chains"] >= 1
    assert event_records(owner, old_closed) == []
    assert event_records(owner, old_open) and event_records(owner, recent_closed)
    with owner.connect() as connection:
        recorded = connection.execute(
            text("SELECT order_id, purged_by FROM purged_order_chains WHERE order_id = ANY(:ids)"),
            {"ids": [old_closed, old_open, recent_closed]},
        ).all()
    assert [(row.order_id, row.purged_by) for row in recorded] == [
        (old_closed, infra.postgres.role_names()["retention"])
    ]
    refused(deleter, "UPDATE orders SET notes = 'x' WHERE id = :id", id=old_open)
    refused(deleter, "INSERT INTO order_events (id) VALUES (:id)", id=str(uuid.uuid4()))


def test_grants_to_a_role_that_does_not_exist_are_skipped(
    infra_urls: InfraUrls, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    missing = f"oms_missing_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("OMS_DB_WORKER_ROLE", missing)
    name = f"oms_roles_{uuid.uuid4().hex[:8]}"
    url = infra.create_database(name, infra_urls.database_url)
    try:
        with caplog.at_level("WARNING"):
            migrate.upgrade(url)
        assert migrate.status(url).up_to_date
        assert any(missing in record.getMessage() and "skipped" in record.getMessage() for record in caplog.records)
    finally:
        infra.drop_database(name, infra_urls.database_url)
