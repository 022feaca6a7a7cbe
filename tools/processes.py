"""The processes that make up the running system, and a small supervisor shared by ``oms up`` and the tests."""

from __future__ import annotations

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


def system(with_venue: bool = True, with_api: bool = True, extra: Iterable[ProcessSpec] = ()) -> list[ProcessSpec]:
    """Every process of the system, in start order."""
    specs = list(PIPELINE)
    if with_venue:
        specs.append(VENUE)
    if with_api:
        specs.append(FRONT_END)
    specs.extend(extra)
    return specs


@dataclass
class Running:
    """A started process and its log."""

    spec: ProcessSpec
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]


class Supervisor:
    """Starts processes with a shared environment, logs each to a file, stops them all."""

    def __init__(self, env: Mapping[str, str], log_dir: Path, cwd: Path) -> None:
        self.env = {**os.environ, **env}
        self.log_dir = log_dir
        self.cwd = cwd
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
