"""The processes that make up the running system, and a small supervisor shared by ``oms up`` and the tests."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


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


class Supervisor:
    """Starts processes with a shared environment, logs each to a file, stops them all."""

    def __init__(self, env: Mapping[str, str], log_dir: Path, cwd: Path, die_with_parent: bool = False) -> None:
        self.env = {**os.environ, **env}
        self.log_dir = log_dir
        self.cwd = cwd
        self.die_with_parent = die_with_parent and sys.platform == "linux"
        self.running: dict[str, Running] = {}
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, spec: ProcessSpec) -> Running:
        """Start (or restart) one process."""
        log_path = self.log_dir / f"{spec.name}.log"
        log_file = log_path.open("ab")
        popen = subprocess.Popen(
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
            running.log_file.close()
        self.running.clear()

    def tail(self, name: str, lines: int = 40) -> str:
        """The end of a process's log, for error messages."""
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
