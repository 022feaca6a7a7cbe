"""Packing internal hops into carriers: what is packed, and that a record comes out as it went in."""

from __future__ import annotations

import pytest

from common.messages.exchanges import BROKER_EXCHANGE, OMS_EXCHANGE, ORDER_UPDATES_EXCHANGE
from common.messages.headers import CARRIER_HEADER
from common.messaging.batch import is_carrier, pack, record_count, unpack
from common.store.outbox import OutboxMessage


def _row(exchange: str, routing_key: str, mid: str, body: str = '{"a":1.10}') -> OutboxMessage:
    return OutboxMessage(mid, exchange, routing_key, "T", f"c-{mid}", body, {"x-oms-user": "u"})


def test_internal_hops_of_a_batch_travel_as_one_carrier_per_routing_key() -> None:
    rows = [
        _row(OMS_EXCHANGE, "risk.check", "r1"),
        _row(BROKER_EXCHANGE, "orders.new", "b1"),
        _row(OMS_EXCHANGE, "risk.check", "r2"),
        _row(OMS_EXCHANGE, "settlement.fill", "s1"),
        _row(ORDER_UPDATES_EXCHANGE, "A.X.OPEN", "u1"),
        _row(OMS_EXCHANGE, "risk.check", "r3"),
    ]
    carriers = pack(rows)
    by_first = {c.record_ids[0]: c for c in carriers}
    assert by_first["r1"].record_ids == ["r1", "r2", "r3"] and is_carrier(by_first["r1"].message.type)
    assert by_first["r1"].message.headers[CARRIER_HEADER] == 3
    # Public contracts and a lone internal row go as they are.
    for mid in ("b1", "u1", "s1"):
        assert by_first[mid].message is next(r for r in rows if r.message_id == mid)
    assert sorted(rid for c in carriers for rid in c.record_ids) == sorted(r.message_id for r in rows)


def test_a_record_keeps_its_id_properties_and_exact_body_bytes() -> None:
    rows = [_row(OMS_EXCHANGE, "router.new", "m1", '{"q":1.10,"s":"\\"x\\""}'), _row(OMS_EXCHANGE, "router.new", "m2")]
    (carrier,) = pack(rows)
    body = carrier.message.body
    assert isinstance(body, bytes)
    records = unpack(body, "router.new", redelivered=True)
    assert [r.message_id for r in records] == ["m1", "m2"]
    assert records[0].body == b'{"q":1.10,"s":"\\"x\\""}'  # the digest of a plain copy is the same
    assert records[0].correlation_id == "c-m1" and records[0].type == "T" and records[0].redelivered
    assert records[0].headers == {"x-oms-user": "u"} and records[0].routing_key == "router.new"
    assert record_count(carrier.message.headers) == 2 and record_count({}) == 1 and record_count(None) == 1


@pytest.mark.parametrize("body", [b"", b"[]", b"{}", b'[{"id":1,"body":"x"}]', b'[{"body":"x"}]', b"\xff"])
def test_a_body_that_is_not_a_batch_of_records_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        unpack(body, "risk.check", redelivered=False)
