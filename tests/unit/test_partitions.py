"""Partitions of the stage queues: the key's partition is stable, hand-overs name theirs, replicas share them."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from common.messages.catalogue import EXECUTION_REPORT, FILL_BOOKED, RISK_CHECK, ROUTE_NEW, TRADE_DECISION
from common.messages.partitions import PARTITIONS, base_key, owned_partitions, partition_of, partitioned_key
from common.messaging.topology import STAGE_QUEUES, all_stage_queues, replica_queues
from common.settings import REPO_ROOT
from tools.processes import ProcessSpec, kind_of, parse_replicas, system, with_replicas


class Sink:
    def __init__(self) -> None:
        self.keys: list[str] = []

    def add(self, exchange: str, routing_key: str, *args: object, **kwargs: object) -> None:
        self.keys.append(routing_key)


def test_a_key_has_one_partition_everywhere() -> None:
    # CRC-32, not Python's salted hash: another process, host or version places a key the same way.
    assert [partition_of(k) for k in ("ACC-001", "ACC-002", "ACC-004")] == [2, 0, 1]
    assert partitioned_key("risk.check", "ACC-001") == "risk.check.2"
    assert partitioned_key("risk.check", None) == "risk.check"  # nothing to place by: partition 0's bare key


@given(st.text(min_size=1, max_size=60))
def test_every_key_lands_in_a_partition_and_its_suffix_comes_off(key: str) -> None:
    routed = partitioned_key(ROUTE_NEW.routing_key, key)
    assert 0 <= partition_of(key) < PARTITIONS
    assert base_key(routed) == ROUTE_NEW.routing_key


def test_only_a_numeric_last_word_is_a_partition() -> None:
    assert base_key("settlement.fill.3") == "settlement.fill"
    assert base_key("settlement.fill") == "settlement.fill"
    assert base_key("ACC-1.AAPL.FILLED") == "ACC-1.AAPL.FILLED"
    assert base_key("prices.٣") == "prices.٣"  # a digit, but not an ASCII one


def test_hand_overs_name_their_partition_and_public_messages_keep_their_keys() -> None:
    sink = Sink()
    FILL_BOOKED.send(sink, {}, "order-1")
    RISK_CHECK.send(sink, {}, "order-1", partition_key="ACC-001")
    TRADE_DECISION.send(sink, {}, "decision-1")
    EXECUTION_REPORT.send(sink, {}, "order-1")
    assert sink.keys == [
        f"settlement.fill.{partition_of('order-1')}",  # by order id (the correlation id)
        "risk.check.2",  # by account
        "intake.decision",
        "execution.report",
    ]


@pytest.mark.parametrize("replicas", [1, 2, 3, 4])
def test_the_replicas_of_a_stage_consume_every_partition_once(replicas: int) -> None:
    owned = [p for i in range(replicas) for p in owned_partitions(i, replicas)]
    assert sorted(owned) == list(range(PARTITIONS))


def test_a_replica_past_the_partition_count_stands_by_on_one() -> None:
    assert owned_partitions(5, 6) == (1,)
    with pytest.raises(ValueError, match="replica 2 is not one of 2"):
        owned_partitions(2, 2)


def test_each_replica_consumes_its_own_queues() -> None:
    stage = STAGE_QUEUES["execution_handler"]
    assert [q.name for q in replica_queues(stage, 0, 1)] == [
        "oms.execution_handler",
        "oms.execution_handler.p1",
        "oms.execution_handler.p2",
        "oms.execution_handler.p3",
    ]
    assert [q.name for q in replica_queues(stage, 1, 2)] == ["oms.execution_handler.p1", "oms.execution_handler.p3"]
    assert len(all_stage_queues()) == PARTITIONS * len(STAGE_QUEUES)


def test_partition_queues_bind_their_own_keys_and_public_keys_through_the_hash_exchange() -> None:
    risk = STAGE_QUEUES["risk_gate"].partition_queues()
    assert risk[0].bindings() == [("oms", "risk.check.0"), ("oms", "risk.check")]
    assert risk[3].bindings() == [("oms", "risk.check.3")]
    reports = STAGE_QUEUES["execution_handler"].partition_queues()
    assert {q.bindings()[0] for q in reports} == {("oms.execution_handler.partitions", "100")}
    assert reports[0].hash_arguments == {"hash-property": "correlation_id"}
    assert reports[0].obsolete_bindings() == [("oms", "execution.report")]  # an unpartitioned broker's
    assert STAGE_QUEUES["intake"].hash_arguments == {"hash-header": "x-account-id"}


def test_replicas_are_parsed_and_each_is_told_which_it_is() -> None:
    assert parse_replicas("execution_handler=2, settlement=3") == {"execution_handler": 2, "settlement": 3}
    assert set(parse_replicas("all=2").values()) == {2} and len(parse_replicas("all=2")) == 5
    for bad, reason in (("venue_sim=2", "not a stage"), ("router=0", "1 to 8"), ("router", "1 to 8")):
        with pytest.raises(ValueError, match=reason):
            parse_replicas(bad)
    specs = with_replicas(system(with_venue=False, with_api=False), {"router": 2})
    routers = [s for s in specs if kind_of(s.name) == "router"]
    assert [(s.name, dict(s.env)) for s in routers] == [
        ("router", {"OMS_STAGE_REPLICAS": "2", "OMS_STAGE_REPLICA_INDEX": "0"}),
        ("router-2", {"OMS_STAGE_REPLICAS": "2", "OMS_STAGE_REPLICA_INDEX": "1"}),
    ]
    assert ProcessSpec("intake", "services.intake") in specs  # the others run once, as they were


def test_compose_scales_every_stage_and_tells_each_replica_how_many_there_are() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    for stage in STAGE_QUEUES:
        service = compose["services"][stage]
        variable = f"${{OMS_{stage.upper()}_REPLICAS:-1}}"
        # The same number twice: a replica's share of the partitions depends on how many share them.
        assert service["deploy"]["replicas"] == variable
        assert service["environment"]["OMS_STAGE_REPLICAS"] == variable
        assert "OMS_STAGE_REPLICA_INDEX" not in service["environment"]  # each claims its own (common/store/replicas.py)
