"""The processes that make up the running system, and a small supervisor shared by ``oms up`` and the tests."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from common.settings import load_settings

# Log rotation by size: each process writes to <log dir>/<name>.log (stdout and stderr, appending); past
# LOG_MAX_BYTES it is moved to <name>.log.1 (older copies shift up to .LOG_BACKUPS, the oldest is dropped).
# Both are settings (OMS_LOG_MAX_BYTES, OMS_LOG_BACKUPS), read when this module is loaded.
_LOGGING = load_settings().logging
LOG_MAX_BYTES = _LOGGING.max_bytes
LOG_BACKUPS = _LOGGING.backups


def _shift_backups(path: Path, backups: int) -> None:
    for index in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{index}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{index + 1}"))


def rotate_log(path: Path, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS, *, in_use: bool = True) -> bool:
    """Rotate ``path`` if it has reached ``max_bytes``; True when it did.

    A file no process writes (``in_use=False``: before a process starts) is renamed. A file a running process
    writes is copied to ``.1`` and then truncated in place ("copytruncate"): the process keeps its descriptor,
    opened for appending, so its next line lands at the start of the emptied file. Lines written between the
    copy and the truncation (microseconds) are lost, the known price of copytruncate.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if max_bytes <= 0 or size < max_bytes:
        return False
    if backups < 1:
        if in_use:
            os.truncate(path, 0)
        else:
            path.unlink()
        return True
    _shift_backups(path, backups)
    first = path.with_name(f"{path.name}.1")
    if in_use:
        shutil.copyfile(path, first)
        os.truncate(path, 0)
    else:
        path.replace(first)
    return True


@dataclass(frozen=True)
class ProcessSpec:
    """One process: a name and the Python module it runs."""

    name: str
    module: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)


STAGES = ("intake", "risk_gate", "router", "execution_handler", "settlement")

PIPELINE = tuple(ProcessSpec(stage, f"services.{stage}") for stage in STAGES) + (
    ProcessSpec("outbox_relay", "services.outbox_relay"),
)
VENUE = ProcessSpec("venue_sim", "services.venue_sim")
FRONT_END = ProcessSpec("api", "services.api")
# The background jobs: the dramatiq worker and the scheduler that enqueues the periodic jobs.
JOBS = (
    ProcessSpec("jobs_worker", "services.jobs.worker"),
    ProcessSpec("jobs_scheduler", "services.jobs.scheduler"),
)


def system(
    with_venue: bool = True, with_api: bool = True, extra: Iterable[ProcessSpec] = (), with_jobs: bool = False
) -> list[ProcessSpec]:
    """Every process of the system, in start order (the jobs only when asked: tests start them themselves)."""
    specs = list(PIPELINE)
    if with_venue:
        specs.append(VENUE)
    if with_api:
        specs.append(FRONT_END)
    if with_jobs:
        specs.extend(JOBS)
    specs.extend(extra)
    return specs


MAX_REPLICAS = 8  # of one stage on one host; past the partition count a replica is only a standby


def parse_replicas(text: str) -> dict[str, int]:
    """``execution_handler=2,settlement=2`` -> replicas by stage (every stage not named runs once)."""
    replicas: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        stage, _, count = part.partition("=")
        if stage == "all":
            replicas.update(parse_replicas(",".join(f"{s}={count}" for s in STAGES)))
            continue
        if stage not in STAGES:
            raise ValueError(f"{stage!r} is not a stage (one of {', '.join(STAGES)})")
        if not count.isdigit() or not 1 <= int(count) <= MAX_REPLICAS:
            raise ValueError(f"{part!r}: the count must be 1 to {MAX_REPLICAS}")
        replicas[stage] = int(count)
    return replicas


def kind_of(name: str) -> str:
    """The kind of process a name is (``execution_handler-2`` -> ``execution_handler``)."""
    return name.split("-", 1)[0]


def with_replicas(specs: list[ProcessSpec], replicas: Mapping[str, int]) -> list[ProcessSpec]:
    """``specs`` with each stage of ``replicas`` run that many times (``<stage>``, ``<stage>-2`` ...), each told
    which replica it is, so it consumes its share of the stage's partition queues."""
    out: list[ProcessSpec] = []
    for spec in specs:
        count = replicas.get(spec.name, 1)
        if count == 1:
            out.append(spec)
            continue
        for index in range(count):
            env = {**spec.env, "OMS_STAGE_REPLICAS": str(count), "OMS_STAGE_REPLICA_INDEX": str(index)}
            name = spec.name if index == 0 else f"{spec.name}-{index + 1}"
            out.append(ProcessSpec(name, spec.module, spec.args, env))
    return out


@dataclass
class Running:
    """A started process and its log."""

    spec: ProcessSpec
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Linux: the child gets SIGTERM when the process that started it dies, so a killed test run or
    # benchmark leaves no orphan workers behind.
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def kill_group(running: Running) -> None:
    """SIGKILL what is left of an exited process's group: the processes it forked (the dramatiq worker's own
    worker processes) outlive a SIGKILLed parent and would go on consuming, running yesterday's code."""
    # start_new_session made the process the leader of a group whose id is its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(running.popen.pid, signal.SIGKILL)


class Supervisor:
    """Starts processes with a shared environment, logs each to a file, stops them all."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_dir: Path,
        cwd: Path,
        die_with_parent: bool = False,
        *,
        log_max_bytes: int = LOG_MAX_BYTES,
        log_backups: int = LOG_BACKUPS,
    ) -> None:
        self.env = {**os.environ, **env}
        self.log_dir = log_dir
        self.cwd = cwd
        self.die_with_parent = die_with_parent and sys.platform == "linux"
        self.running: dict[str, Running] = {}
        self.log_max_bytes = log_max_bytes
        self.log_backups = log_backups
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, spec: ProcessSpec) -> Running:
        """Start (or restart) one process."""
        log_path = self.log_dir / f"{spec.name}.log"
        previous = self.running.get(spec.name)
        in_use = previous is not None and previous.popen.poll() is None
        with contextlib.suppress(OSError):  # a log that cannot be rotated is still appended to
            rotate_log(log_path, self.log_max_bytes, self.log_backups, in_use=in_use)
        log_file = log_path.open("ab")
        # B603: this interpreter running one of our modules (a ProcessSpec from code), no shell.
        popen = subprocess.Popen(  # nosec B603
            [sys.executable, "-m", spec.module, *spec.args],
            cwd=self.cwd,
            env={**self.env, **spec.env},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if self.die_with_parent else None,
        )
        running = Running(spec, popen, log_path, log_file)
        self.running[spec.name] = running
        return running

    def start_all(self, specs: Iterable[ProcessSpec]) -> None:
        """Start every process."""
        for spec in specs:
            self.start(spec)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send a signal to one process (SIGKILL for crash tests) and reap it."""
        running = self.running[name]
        running.popen.send_signal(sig)
        running.popen.wait(timeout=30)
        kill_group(running)

    def rotate_logs(self, extra: Iterable[Path] = ()) -> list[Path]:
        """Rotate (copytruncate) the logs of the running processes, and ``extra`` files, that reached the size."""
        rotated = []
        for path in [r.log_path for r in self.running.values()] + list(extra):
            with contextlib.suppress(OSError):
                if rotate_log(path, self.log_max_bytes, self.log_backups, in_use=True):
                    rotated.append(path)
        return rotated

    def dead(self) -> list[Running]:
        """The processes that have exited."""
        return [r for r in self.running.values() if r.popen.poll() is not None]

    def stop_all(self, timeout: float = 20.0) -> None:
        """SIGTERM everything, then SIGKILL what is still there after ``timeout``."""
        for running in self.running.values():
            if running.popen.poll() is None:
                running.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for running in self.running.values():
            remaining = max(deadline - time.monotonic(), 0.1)
            try:
                running.popen.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                running.popen.kill()
                running.popen.wait(timeout=10)
            kill_group(running)
            running.log_file.close()
        self.running.clear()

    def tail(self, name: str, lines: int = 40) -> str:
        """The end of a process's log, for error messages."""
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
