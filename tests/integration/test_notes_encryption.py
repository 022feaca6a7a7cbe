"""Encryption at rest of order notes over REST: unreadable in the table, readable through the API, and still
readable after a key rotation and a re-encryption (``./oms data-keys``).

On a database of its own: ``data-keys reencrypt`` rewrites every order's notes in the database it is given, and
the rest of the session's tests read theirs without keys.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine, text

from common import jsonutil
from common.store.field_crypto import PREFIX, DataKeys, kid_of, load_or_create, with_data_keys
from tests.support.api import bearer, new_account, rest_app
from tests.support.db import open_engine
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
def client(raw: Engine, database: str, amqp_url: str, keys_file: Path) -> FlaskClient:
    # As bootstrap.engine builds it for the API; reload_seconds=0 so this process sees a rotation at once.
    keyed = with_data_keys(raw, DataKeys(keys_file, reload_seconds=0))
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
    assert "done: 0 rows" in capsys.readouterr().out
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
