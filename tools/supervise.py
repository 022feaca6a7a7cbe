"""The supervisor of ``oms up``: keeps every process running, restarting one that exits with back-off.

``oms up`` runs the loop in the foreground; ``oms up --detach`` runs the same loop in a daemon,
``python -m tools.supervise`` (a session of its own, its output in ``.data/logs/supervisor.log``, its pid in
``.data/run/supervisor.pid``). Either way the loop records what it runs in ``.data/run/processes.json``,
which ``oms ps`` reads, and stops its children on SIGTERM or SIGINT (SIGTERM, then SIGKILL after a timeout).

A child that exits is started again after a delay that doubles from 0.5 s up to 30 s, so a process that
cannot start (its server is away) does not spin; a child that stayed up a minute starts again from 0.5 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tools.processes import ProcessSpec, Running, Supervisor, kill_group

FIRST_DELAY_SECONDS = 0.5
MAX_DELAY_SECONDS = 30.0
STABLE_AFTER_SECONDS = 60.0
TICK_SECONDS = 0.2
STOP_TIMEOUT_SECONDS = 20.0
# How often the loop checks the size of every log it owns (tools.processes.rotate_log: copytruncate past the size).
ROTATE_EVERY_SECONDS = 10.0

Report = Callable[[str], None]


def run_dir(data_dir: Path) -> Path:
    """Where the supervisor keeps its pid and state files."""
    return data_dir / "run"


def pid_file(data_dir: Path) -> Path:
    """The pid of the supervisor running from this data dir (the daemon's, or a foreground ``oms up``'s)."""
    return run_dir(data_dir) / "supervisor.pid"


def state_file(data_dir: Path) -> Path:
    """What the supervisor runs, for ``oms ps``."""
    return run_dir(data_dir) / "processes.json"


def log_file(data_dir: Path) -> Path:
    """The daemon's own output."""
    return data_dir / "logs" / "supervisor.log"


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not running.
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if fields and fields[0] == "Z":
            return False
    return True


def running_supervisor(data_dir: Path) -> int | None:
    """The pid of the supervisor of this data dir if one runs (a stale pid file is ignored)."""
    path = pid_file(data_dir)
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    if not is_alive(pid):
        return None
    # Guard against a recycled pid: the process must be one of ours (Linux; elsewhere trust the pid).
    with contextlib.suppress(OSError):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"tools." not in cmdline:
            return None
    return pid


def write_pid_file(data_dir: Path, pid: int) -> None:
    """Record the supervisor's pid."""
    path = pid_file(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid}\n")


def remove_pid_file(data_dir: Path, pid: int) -> None:
    """Forget the pid file if it is still ours."""
    path = pid_file(data_dir)
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text().strip()) == pid:
            path.unlink()


@dataclass
class Child:
    """One supervised process: what runs now, how often it was restarted, when it may start again."""

    spec: ProcessSpec
    running: Running | None = None
    restarts: int = 0
    started_at: float = 0.0  # wall clock, for ``ps``
    started_mono: float = 0.0
    delay: float = FIRST_DELAY_SECONDS
    start_at: float | None = None  # monotonic; set while waiting to start again
    last_exit: int | None = None

    @property
    def state(self) -> str:
        if self.running is not None and self.running.popen.poll() is None:
            return "running"
        if self.start_at is not None:
            return "backoff"
        return "stopped"


class SupervisionLoop:
    """Starts the processes, restarts any that exits (exponential back-off), stops them all at the end."""

    def __init__(
        self,
        supervisor: Supervisor,
        specs: Sequence[ProcessSpec],
        state_path: Path | None = None,
        report: Report = print,
        *,
        first_delay: float = FIRST_DELAY_SECONDS,
        max_delay: float = MAX_DELAY_SECONDS,
        stable_after: float = STABLE_AFTER_SECONDS,
        stop_timeout: float = STOP_TIMEOUT_SECONDS,
    ) -> None:
        self.supervisor = supervisor
        self.children = {s.name: Child(s, delay=first_delay) for s in specs}
        self.state_path = state_path
        self.report = report
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.stable_after = stable_after
        self.stop_timeout = stop_timeout
        self.started_at = time.time()
        self._lock = threading.Lock()

    def _start(self, child: Child) -> None:
        if child.running is not None:
            child.running.log_file.close()
        child.running = self.supervisor.start(child.spec)
        child.started_at = time.time()
        child.started_mono = time.monotonic()
        child.start_at = None

    def start_all(self) -> None:
        """Start every process."""
        with self._lock:
            for child in self.children.values():
                self._start(child)
            self.write_state()

    def tick(self) -> None:
        """Notice exits, start what is due; one pass."""
        now = time.monotonic()
        changed = False
        with self._lock:
            for child in self.children.values():
                running = child.running
                if child.start_at is None and running is not None and running.popen.poll() is not None:
                    kill_group(running)
                    child.last_exit = running.popen.returncode
                    if now - child.started_mono >= self.stable_after:
                        child.delay = self.first_delay  # it had been fine for a while: a fresh failure
                    child.start_at = now + child.delay
                    self.report(
                        f"{child.spec.name} (pid {running.popen.pid}) exited with {child.last_exit}; "
                        f"restarting in {child.delay:g}s"
                    )
                    child.delay = min(child.delay * 2, self.max_delay)
                    changed = True
                if child.start_at is not None and now >= child.start_at:
                    child.restarts += 1
                    self._start(child)
                    assert child.running is not None
                    self.report(f"{child.spec.name} restarted (#{child.restarts}, pid {child.running.popen.pid})")
                    changed = True
            if changed:
                self.write_state()

    def dead(self) -> list[Child]:
        """The children not running now (exited, waiting to start again)."""
        with self._lock:
            return [c for c in self.children.values() if c.state != "running"]

    def rotate_logs(self) -> None:
        """Rotate the children's logs, and the daemon's own, that have reached their size."""
        with self._lock:
            own = self.supervisor.log_dir / "supervisor.log"
            for path in self.supervisor.rotate_logs(extra=[own] if own.exists() else []):
                self.report(f"log {path.name} rotated to {path.name}.1")

    def run(self, stop: threading.Event) -> None:
        """Supervise until ``stop`` is set, then stop every child."""
        next_rotation = time.monotonic() + ROTATE_EVERY_SECONDS
        try:
            while not stop.is_set():
                self.tick()
                if time.monotonic() >= next_rotation:
                    self.rotate_logs()
                    next_rotation = time.monotonic() + ROTATE_EVERY_SECONDS
                stop.wait(TICK_SECONDS)  # the supervisor's tick
        finally:
            self.stop_all()

    def stop_all(self) -> None:
        """SIGTERM every child, SIGKILL what is left after the timeout; records them stopped."""
        with self._lock:
            for child in self.children.values():
                child.start_at = None
            self.supervisor.stop_all(self.stop_timeout)
            self.write_state()

    def snapshot(self) -> dict[str, Any]:
        """The state ``oms ps`` shows."""
        processes = {}
        for name, child in self.children.items():
            state = child.state
            processes[name] = {
                "pid": child.running.popen.pid if child.running is not None and state == "running" else None,
                "state": state,
                "restarts": child.restarts,
                "started_at": child.started_at if state == "running" else None,
                "last_exit": child.last_exit,
            }
        return {"supervisor_pid": os.getpid(), "started_at": self.started_at, "processes": processes}

    def write_state(self) -> None:
        """Write the snapshot atomically (a reader never sees half a file)."""
        if self.state_path is None:
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.state_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.snapshot(), indent=1))
        temporary.replace(self.state_path)


def install_stop_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT end the loop (the children are stopped on the way out)."""

    def _stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)


# ---- the daemon: python -m tools.supervise -----------------------------------------------------------------


def _timestamped(line: str) -> None:
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds")  # ISO 8601 in UTC, like common.logging
    print(json.dumps({"ts": stamp, "level": "INFO", "service": "oms.supervisor", "message": line}), flush=True)


def daemon_command(specs_json: str, data_dir: Path) -> list[str]:
    """The command line of the detached supervisor."""
    return [sys.executable, "-m", "tools.supervise", "--data-dir", str(data_dir), "--specs", specs_json]


def specs_to_json(specs: Sequence[ProcessSpec]) -> str:
    """Process specs for the daemon's command line."""
    return json.dumps([{"name": s.name, "module": s.module, "args": list(s.args), "env": dict(s.env)} for s in specs])


def specs_from_json(text: str) -> list[ProcessSpec]:
    """The inverse of ``specs_to_json``."""
    return [ProcessSpec(d["name"], d["module"], tuple(d["args"]), dict(d["env"])) for d in json.loads(text)]


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """The detached supervisor: run the loop until SIGTERM."""
    from common.settings import REPO_ROOT

    parser = argparse.ArgumentParser(prog="python -m tools.supervise")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--specs", required=True, help="the processes, as JSON")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    data_dir: Path = args.data_dir
    pid = os.getpid()
    write_pid_file(data_dir, pid)
    stop = threading.Event()
    install_stop_signals(stop)
    # Children die with the supervisor (PDEATHSIG): a supervisor that is gone leaves nothing unsupervised.
    supervisor = Supervisor(dict(env or {}), data_dir / "logs", REPO_ROOT, die_with_parent=True)
    loop = SupervisionLoop(supervisor, specs_from_json(args.specs), state_file(data_dir), _timestamped)
    _timestamped(f"supervisor running (pid {pid}); processes: {', '.join(loop.children)}")
    try:
        loop.start_all()
        loop.run(stop)
    finally:
        _timestamped("supervisor stopped its processes; exiting")
        remove_pid_file(data_dir, pid)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
