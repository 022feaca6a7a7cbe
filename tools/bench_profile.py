"""``oms bench --profile NAMES``: py-spy on chosen processes during the measured window, and a summary.

py-spy (a development dependency) samples a running process (pausing it for each sample unless
``--profile-nonblocking``: only then are threads blocked in a system call reliably told idle) and writes
collapsed stacks (``--format raw``: one line per distinct stack, frames joined by ``;``, then the sample
count). Idle samples are left out, so the percentages are of the process's busy samples. ``hot_spots`` ranks
functions by self time (the innermost frame) and, separately, by inclusive time (on the stack at all).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

# "function (path/to/file.py:123)" -> "function (path/to/file.py)": lines differ within one function.
_LINE = re.compile(r":\d+\)$")


def _frame(frame: str) -> str:
    return _LINE.sub(")", frame.strip())


def parse_collapsed(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    """(frames outermost first, samples) per line of py-spy's raw output."""
    stacks = []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stacks.append(([_frame(f) for f in stack.split(";") if f.strip()], int(count)))
    return stacks


_SITE = re.compile(r"(?:site|dist)-packages/([A-Za-z0-9_]+)")
_STDLIB = re.compile(r"/lib/python3\.\d+/([A-Za-z0-9_]+)")
_FILE = re.compile(r"\(([^()]*)\)$")
_PROJECT_DIRS = ("services", "common", "tools")


def _filename(frame: str) -> str:
    match = _FILE.search(frame)
    return match.group(1) if match else ""


def package(frame: str) -> str:
    """Where a frame's code lives: a third-party package, ``stdlib:<module>`` or a project package.

    py-spy names files relative to the sys.path entry they were found on ("psycopg/cursor.py",
    "asyncio/events.py", "common/store/db.py"); absolute paths are read from their site-packages or lib part.
    """
    filename = _filename(frame)
    if match := _SITE.search(filename):
        return match.group(1)
    if match := _STDLIB.search(filename):
        return f"stdlib:{match.group(1)}"
    parts = filename.split("/")
    if len(parts) >= 2 and parts[0] in _PROJECT_DIRS:
        return f"{parts[0]}/{parts[1]}"
    head = parts[0].removesuffix(".py")
    if head in sys.stdlib_module_names:
        return f"stdlib:{head}"
    return head or "other"


def is_project(frame: str) -> bool:
    """A frame of the project's own code (services/, common/, tools/, named relative to the repo)."""
    return _filename(frame).split("/")[0] in _PROJECT_DIRS


# Innermost frames where a thread waits rather than computes: the event loop's epoll, an idle thread-pool
# worker, psycopg waiting for the server's answer (its C wait loop shows as this frame). py-spy's idle detection
# does not catch them all here, so they are set apart by name and the ranking is of the other samples.
WAITING = (
    "EpollSelector.select (selectors.py)",
    "_worker (concurrent/futures/thread.py)",
    "Connection.wait (psycopg/connection.py)",
    "Condition.wait (threading.py)",
    "Event.wait (threading.py)",
)


@dataclass(frozen=True)
class HotSpots:
    """Self and inclusive sample shares of one profile (of the on-CPU samples: ``WAITING`` leaves set apart)."""

    samples: int
    waiting_pct: list[tuple[str, float]]
    self_pct: list[tuple[str, float]]
    inclusive_pct: list[tuple[str, float]]
    package_pct: list[tuple[str, float]]


def hot_spots(stacks: list[tuple[list[str], int]], top: int = 10) -> HotSpots:
    """The ``top`` functions by self share of the samples, project functions by inclusive share, packages."""
    everything = sum(count for _, count in stacks)
    waits: Counter[str] = Counter()
    for frames, count in stacks:
        if frames and frames[-1] in WAITING:
            waits[frames[-1]] += count
    stacks = [(frames, count) for frames, count in stacks if not (frames and frames[-1] in WAITING)]
    total = sum(count for _, count in stacks)
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    for frames, count in stacks:
        if frames:
            own[frames[-1]] += count
            packages[package(frames[-1])] += count
        for frame in set(frames):
            if is_project(frame):
                inclusive[frame] += count
    waiting = [(name, 100.0 * n / everything) for name, n in waits.most_common()]
    if not total:
        return HotSpots(0, waiting, [], [], [])

    def pct(counter: Counter[str], skip_above: float = 101.0) -> list[tuple[str, float]]:
        shares = [(name, 100.0 * n / total) for name, n in counter.most_common()]
        return [(name, share) for name, share in shares if share <= skip_above][:top]

    # Inclusive: the project's own functions, less the entry points every sample passes through.
    return HotSpots(total, waiting, pct(own), pct(inclusive, skip_above=90.0), pct(packages))


def py_spy() -> str | None:
    """The py-spy executable beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """py-spy record on several processes at once, for ``seconds``."""

    def __init__(
        self, pids: Mapping[str, int], out_dir: Path, seconds: float, rate: int = 100, nonblocking: bool = False
    ) -> None:
        self.pids = dict(pids)
        self.nonblocking = nonblocking
        self.out_dir = out_dir
        self.seconds = seconds
        self.rate = rate
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        """Start one py-spy per process (its subprocesses included)."""
        binary = py_spy()
        if binary is None:
            raise RuntimeError("py-spy is not installed: ./oms installs the dev extras (pyproject.toml)")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            # Blocking (the default) pauses the process for each sample: slower, but py-spy then tells idle
            # threads (blocked in epoll, in a socket read) from busy ones; --nonblocking counts many as busy.
            command = [binary, "record", "--subprocesses", "-r", str(self.rate)]
            command += ["--nonblocking"] if self.nonblocking else []
            command += ["-d", str(max(1, int(self.seconds))), "-p", str(pid), "--format", "raw"]
            command += ["-o", str(self.out_dir / f"{name}.txt")]
            log = (self.out_dir / f"{name}.py-spy.log").open("wb")
            # B603: an argv list (no shell): the installed py-spy, our own flags and the pids we started.
            self.running[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)  # nosec B603

    def finish(self, timeout: float = 60) -> dict[str, HotSpots]:
        """Wait for every recording to end; the hot spots of each."""
        found = {}
        for name, process in self.running.items():
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.terminate()
                process.wait(timeout=10)
            path = self.out_dir / f"{name}.txt"
            if path.exists():
                found[name] = hot_spots(parse_collapsed(path.read_text().splitlines()))
        return found


def report(name: str, spots: HotSpots) -> str:
    """The top functions of one process, self and inclusive."""
    lines = [f"py-spy {name}: {spots.samples} on-CPU samples; set apart as waiting (% of all samples):"]
    lines += [f"    {pct:5.1f}%  {frame}" for frame, pct in spots.waiting_pct]
    lines.append("  self time (% of on-CPU samples):")
    lines += [f"    {pct:5.1f}%  {frame}" for frame, pct in spots.self_pct]
    lines.append("  self time by package:")
    lines += [f"    {pct:5.1f}%  {pkg}" for pkg, pct in spots.package_pct]
    lines.append("  inclusive, project functions (on the stack, entry points above 90% left out):")
    lines += [f"    {pct:5.1f}%  {frame}" for frame, pct in spots.inclusive_pct]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """``python -m tools.bench_profile DIR``: the hot spots of every collapsed-stack file in DIR again."""
    for path in sorted(Path(argv[0]).glob("*.txt")):
        print(report(path.stem, hot_spots(parse_collapsed(path.read_text().splitlines()))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
