"""The supervisor of ``oms up``: restarts with back-off, records state for ``oms ps``, runs as a daemon that
``oms down`` stops, and refuses a second supervisor on the same data dir.

The children are tiny HTTP servers (``python -m http.server``): real processes, nothing of the OMS.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.settings import REPO_ROOT
from tests.support.polling import wait_until
from tools import infra, supervise, up
from tools.processes import ProcessSpec, Supervisor

SLEEPER = ProcessSpec("sleeper", "http.server", ("0", "--bind", "127.0.0.1"))
CRASHER = ProcessSpec("crasher", "tools.no_such_module_for_the_test")


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OMS_DATA_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def loop_running(data_dir: Path) -> Iterator[tuple[supervise.SupervisionLoop, threading.Event]]:
    supervisor = Supervisor({}, data_dir / "logs", REPO_ROOT, die_with_parent=True)
    loop = supervise.SupervisionLoop(
        supervisor,
        [SLEEPER, CRASHER],
        supervise.state_file(data_dir),
        report=lambda line: None,
        first_delay=0.1,
        max_delay=0.4,
        stable_after=60,
        stop_timeout=5,
    )
    stop = threading.Event()
    loop.start_all()
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    yield loop, stop
    stop.set()
    thread.join(15)


def _state(data_dir: Path) -> dict[str, dict[str, object]]:
    processes: dict[str, dict[str, object]] = json.loads(supervise.state_file(data_dir).read_text())["processes"]
    return processes


def test_a_killed_child_is_restarted_and_the_state_file_says_so(
    loop_running: tuple[supervise.SupervisionLoop, threading.Event], data_dir: Path
) -> None:
    loop, _ = loop_running
    first = _state(data_dir)["sleeper"]
    assert first["state"] == "running" and first["restarts"] == 0
    os.kill(int(str(first["pid"])), signal.SIGKILL)

    def restarted() -> dict[str, object] | None:
        now = _state(data_dir)["sleeper"]
        return now if now["restarts"] == 1 and now["state"] == "running" else None

    now = wait_until(restarted, timeout=60, message="the sleeper restarted")
    assert now is not None
    assert now["pid"] != first["pid"] and now["last_exit"] == -signal.SIGKILL


def test_a_child_that_keeps_failing_is_restarted_with_a_doubling_delay_up_to_the_cap(
    loop_running: tuple[supervise.SupervisionLoop, threading.Event], data_dir: Path
) -> None:
    loop, _ = loop_running
    crasher = loop.children["crasher"]
    wait_until(lambda: crasher.restarts >= 4, timeout=60, message="four restarts of the crasher")
    assert crasher.delay == 0.4  # 0.1, 0.2, 0.4, then capped
    assert _state(data_dir)["sleeper"]["restarts"] == 0  # the others are left alone


def test_stopping_the_loop_stops_every_child(
    loop_running: tuple[supervise.SupervisionLoop, threading.Event], data_dir: Path
) -> None:
    loop, stop = loop_running
    pid = int(str(_state(data_dir)["sleeper"]["pid"]))
    stop.set()
    wait_until(lambda: _state(data_dir)["sleeper"]["state"] == "stopped", timeout=60, message="stopped")
    assert not supervise.is_alive(pid)


def test_the_daemon_supervises_refuses_a_second_up_shows_in_ps_and_stops_on_sigterm(
    data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_servers(**kwargs: object) -> None:
        raise AssertionError("oms up went on to start the servers instead of refusing")

    monkeypatch.setattr(infra, "ensure_started", no_servers)
    command = supervise.daemon_command(supervise.specs_to_json([SLEEPER]), data_dir)
    daemon = subprocess.Popen(command, cwd=REPO_ROOT, start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: supervise.running_supervisor(data_dir) == daemon.pid, timeout=60, message="pid file")
        wait_until(lambda: supervise.state_file(data_dir).exists(), timeout=60, message="state file")
        child = int(str(_state(data_dir)["sleeper"]["pid"]))

        os.kill(child, signal.SIGKILL)  # a killed process comes back
        wait_until(lambda: _state(data_dir)["sleeper"]["restarts"] == 1, timeout=60, message="restarted")

        assert up.main([]) == 1  # refused before touching any server
        assert f"already running (pid {daemon.pid})" in capsys.readouterr().err

        assert up.ps([]) == 0
        listing = capsys.readouterr().out
        assert f"supervisor pid {daemon.pid}" in listing
        line = next(row for row in listing.splitlines() if row.startswith("sleeper"))
        assert "running" in line and line.split()[3] == "1"

        restarted = int(str(_state(data_dir)["sleeper"]["pid"]))
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
        assert not supervise.is_alive(restarted)
        assert supervise.running_supervisor(data_dir) is None
        assert not supervise.pid_file(data_dir).exists()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)


def test_a_stale_pid_file_does_not_block_up(data_dir: Path) -> None:
    supervise.write_pid_file(data_dir, 2**22 + 12345)  # no such process
    assert supervise.running_supervisor(data_dir) is None


def test_what_a_killed_child_forked_is_killed_with_it(data_dir: Path) -> None:
    """Found by the fault suite: a SIGKILLed dramatiq worker left its forked workers running, consuming jobs."""
    pid_file = data_dir / "grandchild.pid"
    forking = ProcessSpec("forking", "tests.support.forking_child", env={"FORKING_CHILD_PID_FILE": str(pid_file)})
    supervisor = Supervisor({}, data_dir / "logs", REPO_ROOT, die_with_parent=True)
    loop = supervise.SupervisionLoop(
        supervisor,
        [forking],
        supervise.state_file(data_dir),
        report=lambda line: None,
        first_delay=0.1,
        max_delay=0.4,
        stable_after=60,
        stop_timeout=5,
    )
    loop.start_all()
    try:
        wait_until(pid_file.exists, timeout=60, message="the child forked its worker")
        grandchild = int(pid_file.read_text())
        child = loop.children["forking"].running
        assert child is not None and supervise.is_alive(grandchild)
        pid_file.unlink()
        os.kill(child.popen.pid, signal.SIGKILL)

        def worker_gone_else_tick() -> bool:
            if not supervise.is_alive(grandchild):
                return True
            loop.tick()
            return False

        def tick_then_restarted() -> bool:
            loop.tick()
            return pid_file.exists()

        wait_until(worker_gone_else_tick, timeout=60, message="worker gone")
        wait_until(lambda: not supervise.is_alive(grandchild), timeout=60, message="the orphaned worker killed")
        wait_until(tick_then_restarted, timeout=60, message="the child restarted")
    finally:
        loop.stop_all()
    # Stopping takes the new worker with it too (a SIGKILL lands a moment after it is sent).
    worker = int(pid_file.read_text())
    wait_until(lambda: not supervise.is_alive(worker), timeout=60, message="the new worker killed at stop")
