"""``oms bench --floor``'s arithmetic: CPU per operation net of idle, an order's floor, the saturating rate, and
the command line."""

from __future__ import annotations

import math

import pytest

from tools import bench, bench_floor


def test_per_operation_takes_the_servers_idle_per_second_and_the_clients_pacing_per_operation() -> None:
    cpu = {"client": 1.2, "postgres": 0.5, "rabbitmq": 2.0}
    idle = {"client": 0.0002, "postgres": 0.01, "rabbitmq": 0.05}  # client: s per operation; servers: s per s
    out = bench_floor.per_operation(cpu, idle, seconds=10.0, operations=1000)
    assert out["client"] == pytest.approx(1000 * (1.2 - 0.2) / 1000)
    assert out["postgres"] == pytest.approx(1000 * (0.5 - 0.1) / 1000)
    assert out["rabbitmq"] == pytest.approx(1000 * (2.0 - 0.5) / 1000)


def test_per_operation_never_goes_below_zero_and_skips_groups_not_measured() -> None:
    out = bench_floor.per_operation({"client": 0.1, "postgres": 0.05}, {"postgres": 0.02}, seconds=5.0, operations=10)
    assert out == {"client": pytest.approx(10.0), "postgres": 0.0}


def test_order_floor_is_seven_hand_overs_with_a_transaction_and_four_public_messages() -> None:
    steps = {
        "amqp_hop": {"client": 1.0, "postgres": 0.0, "rabbitmq": 1.5},
        "public_publish": {"client": 0.8, "rabbitmq": 0.3},
        "stage_transaction": {"client": 1.0, "postgres": 0.8},
    }
    floor = bench_floor.order_floor(steps)
    assert floor["client"] == pytest.approx(7 * 2.0 + 4 * 0.8)
    assert floor["postgres"] == pytest.approx(7 * 0.8)
    assert floor["rabbitmq"] == pytest.approx(7 * 1.5 + 4 * 0.3)
    assert floor["total"] == pytest.approx(floor["client"] + floor["postgres"] + floor["rabbitmq"])
    assert floor["servers"] == pytest.approx(floor["postgres"] + floor["rabbitmq"])


def test_saturating_rate() -> None:
    assert bench_floor.saturating_rate(40.0, 2) == pytest.approx(50.0)
    assert math.isinf(bench_floor.saturating_rate(0.0, 2))


def test_floor_table_names_every_step_and_the_conclusion() -> None:
    steps = {step: {group: 1.0 for group in bench_floor.GROUPS} for step in bench_floor.STEPS}
    floor = bench_floor.order_floor(steps)
    text = bench_floor.floor_table(
        {
            "rate": 50,
            "seconds": 10,
            "steps": steps,
            "latency_ms": {"amqp_hop": {"p50": 2.0, "p99": 4.0}},
            "order_floor_ms": floor,
            "cores": 2,
            "saturating_rate": bench_floor.saturating_rate(floor["total"], 2),
            "servers_saturating_rate": bench_floor.saturating_rate(floor["servers"], 2),
        }
    )
    for step in bench_floor.STEPS:
        assert step in text
    assert f"at least {floor['total']:.1f} ms of CPU" in text
    assert floor["total"] == pytest.approx(54.0)  # each group 7 x (1 + 1) + 4 x 1
    assert "2 cores are all busy with orders flowing alone at 37 orders/s" in text


@pytest.mark.parametrize("extra", [["--rest", "--rate", "5"], ["--history", "10"], ["--replicas", "all=2"]])
def test_floor_refuses_what_it_does_not_measure(extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        bench.main(["--floor", *extra])
    assert exited.value.code == 2
    assert "--floor measures the building blocks alone" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--rate", "0"], "--rate must be above 0"), (["--seconds", "-1"], "--seconds must be above 0")],
)
def test_rate_and_seconds_must_be_above_zero(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        bench.main(["--floor", *extra])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
