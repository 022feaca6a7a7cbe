"""CPU accounting for ``oms bench``: utime+stime of whole process trees, read from /proc, and percentile maths.

A group is one or more root pids and every descendant of theirs at the time of the snapshot. A group's ticks
are the sum, over its live processes, of utime+stime (their own CPU) plus cutime+cstime (the CPU of children
they have reaped). A child that exits during the window drops out of the sum but its whole CPU lands in its
parent's cutime/cstime when reaped, so ``end - start`` counts it too: Postgres backends that come and go, gunicorn
workers, the processes a worker forks. Pure functions first (tested without servers), /proc readers after.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PROC = Path("/proc")


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat that the bench uses (times in clock ticks)."""

    pid: int
    comm: str
    state: str
    ppid: int
    utime: int
    stime: int
    cutime: int
    cstime: int

    @property
    def ticks(self) -> int:
        """Own CPU plus that of reaped children, in clock ticks."""
        return self.utime + self.stime + self.cutime + self.cstime


def parse_stat(text: str) -> ProcStat:
    """Parse one /proc/<pid>/stat line. The command name is in parentheses and may itself hold spaces and
    parentheses, so the fields after it are split from the *last* ')'."""
    open_paren = text.index("(")
    close_paren = text.rindex(")")
    pid = int(text[:open_paren].strip())
    comm = text[open_paren + 1 : close_paren]
    rest = text[close_paren + 1 :].split()
    # rest[0] is field 3 (state); utime is field 14, so rest[11]; stime 15, cutime 16, cstime 17.
    return ProcStat(
        pid=pid,
        comm=comm,
        state=rest[0],
        ppid=int(rest[1]),
        utime=int(rest[11]),
        stime=int(rest[12]),
        cutime=int(rest[13]),
        cstime=int(rest[14]),
    )


def descendants(roots: Iterable[int], stats: Mapping[int, ProcStat]) -> set[int]:
    """The roots (those alive in ``stats``) and every process below them."""
    children: dict[int, list[int]] = {}
    for stat in stats.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    found: set[int] = set()
    todo = [pid for pid in roots if pid in stats]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, ()))
    return found


def group_ticks(roots: Iterable[int], stats: Mapping[int, ProcStat], exclude: Iterable[int] = ()) -> int:
    """Clock ticks of a process tree (zombies count: their times are still in their stat)."""
    skip = set(exclude)
    return sum(stats[pid].ticks for pid in descendants(roots, stats) if pid not in skip)


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * p / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def summarize(values: Sequence[float]) -> dict[str, float]:
    """count, mean, p50, p90, p99 and max of a list of latencies (same unit out as in)."""
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "mean": sum(values) / len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": float(max(values)),
    }


def cpu_deltas(before: Mapping[str, int], after: Mapping[str, int], clk_tck: int = CLK_TCK) -> dict[str, float]:
    """CPU seconds per group between two snapshots (groups missing from one side count as zero there)."""
    return {name: max(0, after.get(name, 0) - before.get(name, 0)) / clk_tck for name in {*before, *after}}


# --- readers ----------------------------------------------------------------------------------------------


def read_stat(pid: int) -> ProcStat | None:
    """The stat of one process, None when it is gone."""
    try:
        return parse_stat((PROC / str(pid) / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def all_stats() -> dict[int, ProcStat]:
    """Every process's stat (processes that vanish while scanning are skipped)."""
    stats = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat is not None:
                stats[stat.pid] = stat
    return stats


def pid_from_file(path: Path) -> int | None:
    """The pid on the first line of a pid file (postmaster.pid, rabbitmq.pid), when that process is alive."""
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if (PROC / str(pid)).exists() else None


def server_groups() -> dict[str, list[int]]:
    """The local servers' root pids, when they run here: the Postgres postmaster, and every RabbitMQ node of a
    local cluster (`infra start --rabbit-nodes 3`: the broker's CPU is all of theirs)."""
    from tools import infra
    from tools.infra import rabbit_cluster

    settings = infra.ServerSettings.from_env()
    groups: dict[str, list[int]] = {}
    postmaster = pid_from_file(settings.pg_data / "postmaster.pid")
    if postmaster:
        groups["postgres"] = [postmaster]
    nodes = rabbit_cluster.nodes(settings) if rabbit_cluster.node_count(settings) > 1 else [settings]
    beams = [pid for pid in (pid_from_file(n.rabbit_pid_file) for n in nodes) if pid]
    if beams:
        groups["rabbitmq"] = beams
    return groups


def own_ticks() -> int:
    """This process's own CPU in clock ticks (not its children's: a bench's workers are its children)."""
    own = os.times()
    return int((own.user + own.system) * CLK_TCK)


class CpuSampler:
    """Snapshots of named process groups: ``{"intake": [pid], "postgres": [postmaster], ...}``."""

    def __init__(self, groups: Mapping[str, Sequence[int]], exclude: Iterable[int] = ()) -> None:
        self.groups = {name: list(pids) for name, pids in groups.items() if pids}
        self.exclude = set(exclude)

    def snapshot(self) -> dict[str, int]:
        """Clock ticks per group now."""
        stats = all_stats()
        return {name: group_ticks(roots, stats, self.exclude) for name, roots in self.groups.items()}

    def members(self) -> dict[str, int]:
        """How many processes each group has now (Postgres: postmaster, auxiliaries and one per connection)."""
        stats = all_stats()
        return {name: len(descendants(roots, stats) - self.exclude) for name, roots in self.groups.items()}
