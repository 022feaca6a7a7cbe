"""Encryption at rest of order notes and cancel reasons over REST: unreadable in the tables, readable through
the API (orders and their events), and still readable after a key rotation and a re-encryption
(``./oms data-keys``), with the audit hash chains still verifying.

On a database of its own: ``data-keys reencrypt`` rewrites every order's notes in the database it is given, and
the rest of the session's tests read theirs without keys.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine, text

from common import jsonutil
from common.store.field_crypto import ENVELOPE_PREFIX, PREFIX, DataKeys, kid_of, load_or_create, with_data_keys
from common.store.uow import UnitOfWork
from tests.support.api import bearer, new_account, rest_app
from tests.support.db import open_engine
from tests.support.orders import changing_order, mark_routed, outbox_bodies
from tools import audit_chain, data_keys

if TYPE_CHECKING:
    from tools.infra import InfraUrls

AUTH = {"Authorization": bearer()}
NOTES = "client Zoë Martin asked to work this slowly — IBAN DE89 3704 0044 0532 0130 00"


@pytest.fixture(scope="module")
def database(infra_urls: InfraUrls) -> Iterator[str]:
    from tools import infra, migrate

    name = f"oms_test_{uuid.uuid4().hex[:12]}"
    url = infra.create_database(name, infra_urls.database_url)
    try:
        migrate.upgrade(url)
        yield url
    finally:
        infra.drop_database(name, infra_urls.database_url)


@pytest.fixture(scope="module")
def keys_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One key ring for the module's database."""
    return tmp_path_factory.mktemp("keys") / "data-keys.json"


@pytest.fixture()
def keys_file(keys_path: Path, database: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = keys_path
    # What `./oms data-keys` reads: this key ring, this database.
    monkeypatch.setenv("OMS_DATA_KEYS_FILE", str(path))
    monkeypatch.setenv("OMS_DATABASE_URL", database)
    return path


@pytest.fixture()
def raw(database: str) -> Iterator[Engine]:
    """An engine without keys: what someone reading the tables directly sees."""
    with open_engine(database) as engine:
        yield engine


@pytest.fixture()
def keyed(raw: Engine, keys_file: Path) -> Engine:
    """As bootstrap.engine builds it for the processes; reload_seconds=0 so this process sees a rotation at once."""
    return with_data_keys(raw, DataKeys(keys_file, reload_seconds=0))


@pytest.fixture()
def client(keyed: Engine, database: str, amqp_url: str) -> FlaskClient:
    return rest_app(keyed, database, amqp_url).test_client()


def _create(client: FlaskClient, account: str, notes: str, key: str | None = None) -> Any:
    body = {
        "accountId": account,
        "symbol": "AAPL",
        "side": "BUY",
        "type": "LIMIT",
        "quantity": Decimal("10"),
        "price": Decimal("189.55"),
        "timeInForce": "GTC",
        "notes": notes,
    }
    headers = {**AUTH, **({"Idempotency-Key": key} if key else {})}
    return client.post("/orders", data=jsonutil.dumps(body), content_type="application/json", headers=headers)


def _stored(raw: Engine, order_id: str) -> tuple[str, str]:
    with raw.connect() as connection:
        notes = connection.execute(text("SELECT notes FROM orders WHERE id = :id"), {"id": order_id}).scalar_one()
        created = connection.execute(
            text("SELECT payload->>'notes' FROM order_events WHERE order_id = :id AND type = 'ORDER_CREATED'"),
            {"id": order_id},
        ).scalar_one()
    return notes, created


def _notes_via_api(client: FlaskClient, order_id: str) -> str:
    response = client.get(f"/orders/{order_id}", headers=AUTH)
    assert response.status_code == 200, response.get_data(as_text=True)
    notes: str = jsonutil.loads(response.get_data())["notes"]
    return notes


def test_notes_are_unreadable_in_the_table_and_readable_through_the_api(
    client: FlaskClient, raw: Engine, keys_file: Path
) -> None:
    account = new_account(raw)
    key = str(uuid.uuid4())
    created = _create(client, account, NOTES, key)
    assert created.status_code == 201, created.get_data(as_text=True)
    order_id = jsonutil.loads(created.get_data())["id"]
    assert jsonutil.loads(created.get_data())["notes"] == NOTES

    current = load_or_create(keys_file).current
    for stored in _stored(raw, order_id):
        assert stored.startswith(f"{PREFIX}{current}:")
        assert "Zoë" not in stored and "IBAN" not in stored and "DE89" not in stored
    assert _notes_via_api(client, order_id) == NOTES
    listed = client.get(f"/orders?accountId={account}", headers=AUTH)
    assert [o["notes"] for o in jsonutil.loads(listed.get_data())["content"]] == [NOTES]
    # The audit trail through the API shows the notes the order was created with, not the stored ciphertext.
    trail = client.get(f"/orders/{order_id}/events", headers=AUTH)
    assert trail.status_code == 200, trail.get_data(as_text=True)
    created_events = [e for e in jsonutil.loads(trail.get_data())["events"] if e["type"] == "ORDER_CREATED"]
    assert [e["payload"]["notes"] for e in created_events] == [NOTES]
    # A retry under the same idempotency key is compared with the creation terms: decrypted, they match.
    again = _create(client, account, NOTES, key)
    assert again.status_code == 200, again.get_data(as_text=True)
    assert jsonutil.loads(again.get_data())["id"] == order_id
    reused = _create(client, account, "other notes", key)
    assert reused.status_code == 422 and "IDEMPOTENCY_KEY_REUSED" in reused.get_data(as_text=True)
    assert "notes" in reused.get_data(as_text=True)


def test_a_plaintext_row_from_before_stays_readable(client: FlaskClient, raw: Engine) -> None:
    account = new_account(raw)
    order_id = jsonutil.loads(_create(client, account, "legacy").get_data())["id"]
    with raw.begin() as connection:
        connection.execute(text("UPDATE orders SET notes = 'written in 2025' WHERE id = :id"), {"id": order_id})
    assert _notes_via_api(client, order_id) == "written in 2025"


def test_rotation_and_reencryption_keep_every_order_readable(
    client: FlaskClient, raw: Engine, keys_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    account = new_account(raw)
    first = jsonutil.loads(_create(client, account, "before the rotation").get_data())["id"]
    old = load_or_create(keys_file).current

    assert data_keys.main(["rotate"]) == 0
    new = load_or_create(keys_file).current
    assert new != old
    second = jsonutil.loads(_create(client, account, "after the rotation").get_data())["id"]
    assert kid_of(_stored(raw, first)[0]) == old and kid_of(_stored(raw, second)[0]) == new
    assert _notes_via_api(client, first) == "before the rotation"

    assert data_keys.main(["reencrypt", "--batch", "1"]) == 0
    assert data_keys.main(["reencrypt"]) == 0  # restartable: nothing left to do
    assert "done: 0 values" in capsys.readouterr().out
    with raw.connect() as connection:
        kids = {kid_of(n) for n in connection.execute(text("SELECT notes FROM orders WHERE notes <> ''")).scalars()}
    assert kids == {new}  # every order row, including the plaintext one of the test before
    assert _notes_via_api(client, first) == "before the rotation"
    assert _notes_via_api(client, second) == "after the rotation"

    # The creation events keep the old key (append-only, hash-chained): it cannot be removed yet.
    assert kid_of(_stored(raw, first)[1]) == old
    assert data_keys.main(["remove", old]) == 1
    assert "order_events" in capsys.readouterr().err
    assert old in load_or_create(keys_file).keys
    # The chains were hashed over the encrypted payloads, and re-encryption left the events alone: they verify.
    report = io.StringIO()
    assert audit_chain.run(raw, None, 100, report) == audit_chain.EXIT_CLEAN, report.getvalue()


# --------------------------------------------------------------------------- cancel reasons

REASON = "Zoë Martin called: her adviser placed this on the wrong account (IBAN DE89 3704)"
# Whatever the form, none of these may appear in a table: the reason's telling parts.
TELLING = ("Zoë", "adviser", "DE89")


def _cancel(client: FlaskClient, order_id: str, reason: str) -> Any:
    body = {"action": "CANCEL", "notes": reason}
    response = client.put(
        f"/orders/{order_id}", data=jsonutil.dumps(body), content_type="application/json", headers=AUTH
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return jsonutil.loads(response.get_data())


def _route(keyed: Engine, order_id: str) -> None:
    """Move the order on to ROUTED as the risk gate and the router would (a cancel then goes to the venue)."""
    with changing_order(keyed, order_id) as (_, order):
        mark_routed(order, datetime.now(UTC))


def _reasons_in_tables(raw: Engine, order_id: str) -> dict[str, Any]:
    """Where a cancel's reason is stored, as stored."""
    with raw.connect() as connection:
        events = connection.execute(
            text(
                "SELECT type, payload->>'reason' FROM order_events WHERE order_id = :id"
                " AND type IN ('CANCEL_REQUESTED', 'ORDER_CANCELED') ORDER BY sequence"
            ),
            {"id": order_id},
        ).all()
        requests = connection.execute(
            text("SELECT reason FROM order_requests WHERE order_id = :id AND kind = 'CANCEL'"), {"id": order_id}
        ).scalars()
        pending = connection.execute(
            text("SELECT pending_request->>'reason' FROM orders WHERE id = :id"), {"id": order_id}
        ).scalar_one()
    return {"events": [tuple(e) for e in events], "requests": list(requests), "pending": pending}


def _plaintext_anywhere(raw: Engine, order_id: str) -> list[str]:
    """The tables holding any telling part of the reason in clear for this order (whole rows as text)."""
    found = []
    with raw.connect() as connection:
        for table, column in (
            ("orders", "id"),
            ("order_events", "order_id"),
            ("order_requests", "order_id"),
            ("outbox", "correlation_id"),
        ):
            for word in TELLING:
                rows = connection.execute(
                    text(f"SELECT count(*) FROM {table} AS t WHERE t.{column} = :id AND t::text LIKE :word"),  # noqa: S608
                    {"id": order_id, "word": f"%{word}%"},
                ).scalar_one()
                if rows:
                    found.append(f"{table}: {word}")
    return found


def _events_via_api(client: FlaskClient, order_id: str) -> list[tuple[str, Any]]:
    trail = client.get(f"/orders/{order_id}/events", headers=AUTH)
    assert trail.status_code == 200, trail.get_data(as_text=True)
    return [(e["type"], e["payload"].get("reason")) for e in jsonutil.loads(trail.get_data())["events"]]


def _verify(raw: Engine) -> None:
    report = io.StringIO()
    assert audit_chain.run(raw, None, 100, report) == audit_chain.EXIT_CLEAN, report.getvalue()


def test_cancel_reasons_are_unreadable_in_the_tables_and_readable_through_the_api(
    client: FlaskClient, raw: Engine, keyed: Engine, keys_file: Path
) -> None:
    account = new_account(raw)
    current = load_or_create(keys_file).current
    # Before routing: canceled at once (ORDER_CANCELED, at_venue false, with the client's reason).
    unrouted = jsonutil.loads(_create(client, account, "n").get_data())["id"]
    assert _cancel(client, unrouted, REASON)["status"] == "CANCELED"
    [(kind, stored)] = _reasons_in_tables(raw, unrouted)["events"]
    assert kind == "ORDER_CANCELED" and stored.startswith(f"{ENVELOPE_PREFIX}{current}:")
    assert _plaintext_anywhere(raw, unrouted) == []
    assert ("ORDER_CANCELED", REASON) in _events_via_api(client, unrouted)

    # At the venue: a cancel request (order_requests), the order's pending request, a CANCEL_REQUESTED event.
    at_venue = jsonutil.loads(_create(client, account, "n").get_data())["id"]
    _route(keyed, at_venue)
    answer = _cancel(client, at_venue, REASON)
    assert answer["state"] == "ROUTED", answer  # until the venue answers
    stored = _reasons_in_tables(raw, at_venue)
    assert [kind for kind, _ in stored["events"]] == ["CANCEL_REQUESTED"]
    assert stored["events"][0][1].startswith(f"{ENVELOPE_PREFIX}{current}:")
    [request_reason] = stored["requests"]
    assert request_reason.startswith(f"{PREFIX}{current}:") and stored["pending"].startswith(f"{PREFIX}{current}:")
    assert _plaintext_anywhere(raw, at_venue) == []  # the RouteCancel in the outbox carries no reason
    assert all("reason" not in body for body in outbox_bodies(raw, at_venue, "router.cancel"))
    assert ("CANCEL_REQUESTED", REASON) in _events_via_api(client, at_venue)
    # The stages read them back in clear (the router reads the request row, the commands the pending request).
    with UnitOfWork(keyed) as uow:
        order = uow.orders.get(at_venue)
        assert order is not None and order.pending_request is not None
        assert order.pending_request.reason == REASON
        request = uow.requests.get(order.pending_request.request_id)
        assert request is not None and request.reason == REASON
    # Without the keys (someone reading the tables), the API would show the ciphertext, never the text.
    assert REASON not in str(_reasons_in_tables(raw, at_venue))
    _verify(raw)


def test_cancel_reasons_survive_rotation_and_reencryption_with_the_chains_intact(
    client: FlaskClient, raw: Engine, keyed: Engine, keys_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    account = new_account(raw)
    unrouted = jsonutil.loads(_create(client, account, "n").get_data())["id"]
    _cancel(client, unrouted, REASON + " (1)")
    at_venue = jsonutil.loads(_create(client, account, "n").get_data())["id"]
    _route(keyed, at_venue)
    _cancel(client, at_venue, REASON + " (2)")
    old = load_or_create(keys_file).current
    with raw.connect() as connection:
        hashes_before = {i: bytes(h) for i, h in connection.execute(text("SELECT id, hash FROM order_events"))}

    assert data_keys.main(["rotate"]) == 0
    new = load_or_create(keys_file).current
    # Still readable under the old key, before any re-encryption.
    assert ("ORDER_CANCELED", REASON + " (1)") in _events_via_api(client, unrouted)
    assert ("CANCEL_REQUESTED", REASON + " (2)") in _events_via_api(client, at_venue)

    assert data_keys.main(["reencrypt", "--batch", "2"]) == 0
    assert data_keys.main(["reencrypt"]) == 0  # restartable: nothing left to do
    assert "done: 0 values" in capsys.readouterr().out
    for order_id in (unrouted, at_venue):
        stored = _reasons_in_tables(raw, order_id)
        assert {kid_of(reason) for _, reason in stored["events"]} == {new}
        assert {kid_of(reason) for reason in stored["requests"]} <= {new}
        assert stored["pending"] is None or kid_of(stored["pending"]) == new
        assert _plaintext_anywhere(raw, order_id) == []
    assert kid_of(_reasons_in_tables(raw, at_venue)["requests"][0]) == new
    with raw.connect() as connection:
        usage = data_keys.usage_by_kid(connection)
        hashes_after = {i: bytes(h) for i, h in connection.execute(text("SELECT id, hash FROM order_events"))}
    for place in ("orders.notes", "orders.pending_request", "order_requests.reason", "order_events.reason"):
        assert old not in usage[place], (place, usage[place])
    assert usage["order_events.reason"][new] >= 2
    # The envelopes' keys were re-wrapped: every row keeps its hash, and every chain verifies.
    assert hashes_after == hashes_before
    _verify(raw)
    # Readable through the API and by the stages, under the new key.
    assert ("ORDER_CANCELED", REASON + " (1)") in _events_via_api(client, unrouted)
    assert ("CANCEL_REQUESTED", REASON + " (2)") in _events_via_api(client, at_venue)
    with UnitOfWork(keyed) as uow:
        order = uow.orders.get(at_venue)
        assert order is not None and order.pending_request is not None
        assert order.pending_request.reason == REASON + " (2)"
