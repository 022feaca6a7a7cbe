"""The order_events hash chain on a real database: written by the application, walked by ``./oms audit verify``,
which names a row changed, removed or inserted by hand (as the owner, the one role that still may).

The module works on a database of its own: the verification walks every order, and other tests' rows are not
this module's to vouch for.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from contextlib import redirect_stdout
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from common.store.event_chain import canonical, link
from services.jobs.retention import purge_order_chains
from tests.support.api import new_account, store_order
from tests.support.db import open_engine
from tests.support.orders import event_records
from tools import audit_chain, infra, migrate
from tools.infra import InfraUrls

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def chain_url(infra_urls: InfraUrls) -> Iterator[str]:
    """A database of this module's own, migrated to head."""
    name = f"oms_chain_{uuid.uuid4().hex[:10]}"
    url = infra.create_database(name, infra_urls.database_url)
    try:
        migrate.upgrade(url)
        yield url
    finally:
        infra.drop_database(name, infra_urls.database_url)


@pytest.fixture(scope="module")
def owner(chain_url: str) -> Iterator[Engine]:
    """The schema owner's engine (the demo data seeded)."""
    with open_engine(chain_url) as engine:
        yield engine


def verify(url: str, *args: str) -> tuple[int, list[str]]:
    """``./oms audit verify --url URL *args``: the exit code and the lines it printed."""
    out = io.StringIO()
    with redirect_stdout(out):
        code = audit_chain.main(["--url", url, "--batch", "2", *args])
    return code, out.getvalue().splitlines()


def book(engine: Engine, status: str = "FILLED") -> str:
    return store_order(engine, new_account(engine, prefix="ACC-CH"), status=status)


def test_chains_written_by_the_application_verify(owner: Engine, chain_url: str) -> None:
    orders = [book(owner, status) for status in ("PENDING", "OPEN", "PARTIALLY_FILLED", "FILLED", "CANCELED")]
    events = [event_records(owner, order_id) for order_id in orders]
    assert all(rows and rows[0].sequence == 1 for rows in events)

    code, lines = verify(chain_url)

    assert code == 0, lines
    assert lines[-1].endswith("every chain whole")
    assert "0 changed, 0 removed, 0 inserted" in lines[-1]


def test_a_row_changed_removed_or_inserted_by_hand_is_named(owner: Engine, chain_url: str) -> None:
    changed, removed, truncated, appended, clean = (book(owner) for _ in range(5))
    changed_row = event_records(owner, changed)[1]
    removed_row = event_records(owner, removed)[1]
    tail_row = event_records(owner, truncated)[-1]
    last = event_records(owner, appended)[-1]
    forged_id = str(uuid.uuid4())
    # A forger who knows the algorithm: the row links to the last one and matches its own hash, but the order's
    # head still names the event before it.
    forged_hash = link(
        bytes(last.hash),
        canonical(
            id=forged_id,
            order_id=appended,
            sequence=last.sequence + 1,
            type="ORDER_CANCELED",
            payload_json='{"reason": "never happened"}',
            user_id="mallory",
            timestamp=last.timestamp,
            correlation_id=appended,
            message_id=None,
        ),
    )
    with owner.begin() as connection:
        connection.execute(
            text("UPDATE order_events SET payload = jsonb_set(payload, '{tampered}', 'true') WHERE id = :id"),
            {"id": changed_row.id},
        )
        connection.execute(text("DELETE FROM order_events WHERE id = :id"), {"id": removed_row.id})
        connection.execute(text("DELETE FROM order_events WHERE id = :id"), {"id": tail_row.id})
        connection.execute(
            text(
                "INSERT INTO order_events (id, order_id, type, payload, user_id, timestamp, correlation_id, sequence, "
                "message_id, prev_hash, hash) VALUES (:id, :order_id, 'ORDER_CANCELED', "
                """'{"reason": "never happened"}', 'mallory', :ts, :order_id, :sequence, NULL, :prev, :hash)"""
            ),
            {
                "id": forged_id,
                "order_id": appended,
                "ts": last.timestamp,
                "sequence": last.sequence + 1,
                "prev": bytes(last.hash),
                "hash": forged_hash,
            },
        )

    code, lines = verify(chain_url)

    assert code == 1
    findings = [line for line in lines if not line.startswith("audit verify:")]
    assert any(line.startswith("CHANGED") and changed_row.id in line for line in findings), findings
    assert any(
        line.startswith("REMOVED") and removed in line and f"sequence {removed_row.sequence} missing" in line
        for line in findings
    ), findings
    assert any(line.startswith("REMOVED") and truncated in line and "head" in line for line in findings), findings
    assert any(line.startswith("INSERTED") and forged_id in line for line in findings), findings
    assert not any(clean in line for line in findings)
    assert "1 changed, 2 removed, 1 inserted" in lines[-1] and lines[-1].endswith("4 findings")

    assert verify(chain_url, "--order", clean)[0] == 0
    code, lines = verify(chain_url, "--order", changed)
    assert code == 1 and len(lines) == 2 and changed_row.id in lines[0]
    assert verify(chain_url, "--order", str(uuid.uuid4()))[0] == 1  # no such order


def test_a_purge_recorded_by_retention_verifies_and_an_unrecorded_one_does_not(owner: Engine, chain_url: str) -> None:
    purged, erased = book(owner), book(owner)
    old = datetime.now(UTC) - timedelta(days=400)
    with owner.begin() as connection:
        connection.execute(
            text("UPDATE orders SET updated_at = :old WHERE id = ANY(:ids)"), {"old": old, "ids": [purged]}
        )
    # Only this module's order is old enough; the orders of the other tests are recent.
    dropped = purge_order_chains(owner, retention_days=365)
    assert dropped["orders"] == 1 and dropped["events"] >= 4
    assert event_records(owner, purged) == []
    with owner.connect() as connection:
        record = connection.execute(
            text("SELECT last_sequence, retention_days, purged_by FROM purged_order_chains WHERE order_id = :id"),
            {"id": purged},
        ).one()
    assert record.last_sequence == dropped["events"] and record.retention_days == 365 and record.purged_by

    code, lines = verify(chain_url, "--order", purged)
    assert code == 0 and "1 chain dropped by retention as recorded" in lines[-1]

    with owner.begin() as connection:
        connection.execute(text("DELETE FROM order_events WHERE order_id = :id"), {"id": erased})
    code, lines = verify(chain_url, "--order", erased)
    assert code == 1 and lines[0].startswith("REMOVED") and "no events left" in lines[0]
