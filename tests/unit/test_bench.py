"""``oms bench``'s arithmetic: /proc stat parsing, process-tree CPU, percentiles, history chunks, JSON shape."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from tools import bench, bench_cpu, bench_history, bench_profile
from tools.bench_cpu import ProcStat, cpu_deltas, descendants, group_ticks, parse_stat, percentile, summarize

# A real line's shape: 52 fields; the command name holds a space and parentheses.
STAT_LINE = (
    "4242 (postgres: oms (x) idle) S 2177 2177 2177 0 -1 4194560 1234 0 0 0 "
    "150 37 9 4 20 0 1 0 5343400 228000000 3000 18446744073709551615 1 1 0 0 0 0 0 4096 1 0 0 0 17 1 0 0 0 0 0"
)


def _stat(pid: int, ppid: int, utime: int, stime: int = 0, cutime: int = 0, cstime: int = 0) -> ProcStat:
    return ProcStat(pid, f"p{pid}", "S", ppid, utime, stime, cutime, cstime)


def test_parse_stat_takes_the_fields_after_the_last_parenthesis() -> None:
    stat = parse_stat(STAT_LINE)
    assert stat == ProcStat(4242, "postgres: oms (x) idle", "S", 2177, 150, 37, 9, 4)
    assert stat.ticks == 150 + 37 + 9 + 4


def test_parse_stat_of_this_process() -> None:
    stat = bench_cpu.read_stat(os.getpid())
    assert stat is not None
    assert stat.pid == os.getpid()
    assert stat.ppid == os.getppid()
    assert stat.utime >= 0


def test_read_stat_of_a_missing_process_is_none() -> None:
    assert bench_cpu.read_stat(2**31 - 1) is None


def test_descendants_walk_the_whole_tree_and_skip_others() -> None:
    stats = {s.pid: s for s in [_stat(1, 0, 0), _stat(10, 1, 5), _stat(11, 10, 5), _stat(12, 11, 5), _stat(20, 1, 7)]}
    assert descendants([10], stats) == {10, 11, 12}
    assert descendants([10, 20], stats) == {10, 11, 12, 20}
    assert descendants([99], stats) == set()


def test_group_ticks_count_an_exited_child_through_the_parents_cutime() -> None:
    before = {s.pid: s for s in [_stat(10, 1, 100), _stat(11, 10, 30, 10)]}
    # Child 11 ran 5 more ticks and exited; the parent reaped it: 45 ticks into its cutime/cstime.
    after = {s.pid: s for s in [_stat(10, 1, 120, cutime=35, cstime=10)]}
    delta = group_ticks([10], after) - group_ticks([10], before)
    assert delta == 20 + 5


def test_group_ticks_count_a_new_child_from_zero() -> None:
    before = {10: _stat(10, 1, 100)}
    after = {10: _stat(10, 1, 100), 12: _stat(12, 10, 8, 2)}
    assert group_ticks([10], after) - group_ticks([10], before) == 10


def test_group_ticks_exclude() -> None:
    stats = {10: _stat(10, 1, 100), 11: _stat(11, 10, 50)}
    assert group_ticks([10], stats, exclude=[11]) == 100


def test_cpu_deltas_in_seconds() -> None:
    assert cpu_deltas({"a": 100, "b": 50}, {"a": 350, "c": 100}, clk_tck=100) == {"a": 2.5, "b": 0.0, "c": 1.0}


def test_percentile_interpolates_like_numpy() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 90) == pytest.approx(90.1)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 100) == 100.0
    assert percentile(values, 0) == 1.0
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0  # unsorted input


def test_summarize() -> None:
    summary = summarize([10.0, 20.0, 30.0, 40.0])
    assert summary["count"] == 4
    assert summary["mean"] == 25.0
    assert summary["p50"] == 25.0
    assert summary["max"] == 40.0
    assert set(summary) == {"count", "mean", "p50", "p90", "p99", "max"}
    assert summarize([]) == {"count": 0}


def test_pid_from_file(tmp_path: Path) -> None:
    (tmp_path / "pid").write_text(f"{os.getpid()}\n/some/dir\n")
    assert bench_cpu.pid_from_file(tmp_path / "pid") == os.getpid()
    (tmp_path / "dead").write_text(f"{2**31 - 1}\n")
    assert bench_cpu.pid_from_file(tmp_path / "dead") is None
    assert bench_cpu.pid_from_file(tmp_path / "missing") is None


def test_the_settled_poll_waits_half_the_time_left_and_is_frequent_only_near_the_end() -> None:
    assert bench._next_poll(left=3000, settled_since=0, seconds_since=0.1) == bench._POLL_IDLE_SECONDS
    assert bench._next_poll(left=2000, settled_since=100, seconds_since=0.25) == bench._POLL_CEILING_SECONDS
    assert bench._next_poll(left=80, settled_since=100, seconds_since=0.25) == pytest.approx(0.1)  # 0.2 s left
    assert bench._next_poll(left=5, settled_since=100, seconds_since=0.25) == bench._POLL_FLOOR_SECONDS
    # never past the end the recent rate predicts, so the window closes within a floor of the end
    for left in range(1, 400):
        assert bench._next_poll(left, 100, 0.25) <= max(bench._POLL_FLOOR_SECONDS, left * 0.0025)


def test_history_chunks_cover_every_order_once() -> None:
    assert bench_history.chunks(250_001, 100_000) == [(1, 100_000), (100_001, 200_000), (200_001, 250_001)]
    assert bench_history.chunks(5, 100_000) == [(1, 5)]
    assert bench_history.chunks(0) == []


def test_per_order() -> None:
    assert bench.per_order({"oms": 100, "broker": 10}, {"oms": 700, "broker": 110, "portfolio": 30}, 100) == {
        "broker": 1.0,
        "oms": 6.0,
        "portfolio": 0.3,
    }


def _result(throughput: float, total: float) -> dict[str, object]:
    return {
        "orders": 100,
        "window_seconds": 100 / throughput,
        "throughput_orders_per_s": throughput,
        "cpu_seconds": {"settlement": total / 10, "postgres": total / 10},
        "cpu_ms_per_order": {"settlement": total / 2, "postgres": total / 2},
        "cpu_ms_per_order_total": total,
        "cpu_ms_per_order_oms_processes": total / 2,
        "cores_busy": 1.5,
        "bench_client_cpu_ms_per_order": 0.5,
        "processes_per_group": {"settlement": 1, "postgres": 12},
        "server_pids": {"postgres": 1, "rabbitmq": 2},
        "messages_per_order": {"oms": 6.0, "broker": 1.0},
        "messages_per_order_total": 7.0,
        "loadavg_before": [0.1, 0.2, 0.3],
        "latency_ms": {"decision_to_filled": summarize([10.0, 20.0])},
    }


def test_table_and_json_shape() -> None:
    document = {"format": "oms-bench/1", "mode": "throughput", "config": {}, "machine": bench.machine()}
    document["result"] = _result(100.0, 30.0)
    out = bench.table(document["result"])  # type: ignore[arg-type]
    assert "settlement" in out and "postgres" in out and "msgs/order" in out and "p99" in out
    assert "shares this machine's Postgres cluster" in out
    round_trip = json.loads(json.dumps(document))
    assert round_trip["machine"]["nproc"] == os.cpu_count()
    assert len(round_trip["machine"]["loadavg"]) == 3


def test_compare_prints_ratios_of_the_figures() -> None:
    a = {"result": _result(100.0, 30.0)}
    b = {"result": _result(200.0, 15.0)}
    out = bench.compare(a, b)
    line = next(row for row in out.splitlines() if row.startswith("result.cpu_ms_per_order_total"))
    assert line.split()[-1] == "0.50"
    line = next(row for row in out.splitlines() if row.startswith("result.throughput_orders_per_s"))
    assert line.split()[-1] == "2.00"
    assert "loadavg" not in out and "server_pids" not in out


def test_flatten() -> None:
    assert bench.flatten({"a": {"b": 1, "c": [2, 3]}, "d": "x", "e": True}) == {
        "a.b": 1.0,
        "a.c[0]": 2.0,
        "a.c[1]": 3.0,
    }


COLLAPSED = [
    "<module> (services/settlement/__main__.py:5);run (common/runtime/stage.py:40);"
    "execute (/x/.venv/lib/python3.12/site-packages/psycopg/cursor.py:100) 60",
    "<module> (services/settlement/__main__.py:5);run (common/runtime/stage.py:41);"
    "_book (services/settlement/handlers.py:77);dumps (/usr/lib/python3.12/json/__init__.py:3) 30",
    "<module> (services/settlement/__main__.py:5);run (common/runtime/stage.py:40) 10",
    "<module> (services/settlement/__main__.py:5);select (selectors.py:9);EpollSelector.select (selectors.py:468) 25",
    "",
    "garbage-without-count",
]


def test_profile_parse_and_hot_spots() -> None:
    stacks = bench_profile.parse_collapsed(COLLAPSED)
    assert len(stacks) == 4
    assert stacks[0][0][-1] == "execute (/x/.venv/lib/python3.12/site-packages/psycopg/cursor.py)"  # line dropped
    spots = bench_profile.hot_spots(stacks, top=5)
    assert spots.samples == 100  # the epoll wait set apart
    assert spots.waiting_pct == [("EpollSelector.select (selectors.py)", 20.0)]
    assert spots.self_pct[0] == ("execute (/x/.venv/lib/python3.12/site-packages/psycopg/cursor.py)", 60.0)
    assert dict(spots.package_pct) == {"psycopg": 60.0, "stdlib:json": 30.0, "common/runtime": 10.0}
    # Inclusive: project frames only, entry points on (nearly) every sample left out.
    assert dict(spots.inclusive_pct) == {"_book (services/settlement/handlers.py)": 30.0}
    assert "psycopg" in bench_profile.report("settlement", spots)


def test_profile_of_nothing() -> None:
    assert bench_profile.hot_spots([]).samples == 0


def test_table_shows_idle_and_net_columns_when_measured() -> None:
    result = _result(100.0, 30.0)
    result["idle_cpu_ms_per_s"] = {"settlement": 20.0, "postgres": 5.0}
    result["cpu_ms_per_order_net_of_idle"] = {"settlement": 13.0, "postgres": 14.5}
    out = bench.table(result)
    assert "idle ms/s" in out and "net ms/order" in out
    row = next(line for line in out.splitlines() if line.startswith("settlement"))
    assert row.split()[-2:] == ["20.0", "13.00"]
