"""The one way a process starts (common/runtime/process.py): SIGTERM or SIGINT drains the work at hand, then
the process exits 0; a blocking loop runs the same way in a thread."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from common.settings import REPO_ROOT

SERVICE = """
import asyncio, sys, threading
from common.runtime.process import ThreadedService, run_service
from common.settings import Settings

class Batches:
    def __init__(self) -> None:
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        print("ready", flush=True)
        await self.stopping.wait()
        await asyncio.sleep(0.2)  # the batch at hand is finished, not dropped
        print("drained", flush=True)

    def stop(self) -> None:
        self.stopping.set()

def blocking(stop: threading.Event) -> None:
    print("ready", flush=True)
    stop.wait()
    print("drained", flush=True)

build = Batches if sys.argv[1] == "async" else (lambda: ThreadedService(blocking))
sys.exit(run_service("oms.test", Settings(), build))
"""


@pytest.mark.parametrize("kind", ["async", "thread"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_drains_the_work_at_hand_then_exits_0(kind: str, sig: signal.Signals) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMS_METRICS_PORT": "0"}
    process = subprocess.Popen(
        [sys.executable, "-c", SERVICE, kind],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(sig)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert out.strip() == "drained"
    assert '"message": "stopped"' in err  # the JSON log line of run_service


GC = """
import gc, sys
from common.runtime.process import configure_process
from common.settings import load_settings

before = gc.get_freeze_count()
configure_process("oms.test", load_settings())
print(gc.get_threshold()[0], gc.get_freeze_count() > before)
"""


@pytest.mark.parametrize(("setting", "threshold"), [(None, 20_000), ("5000", 5000), ("0", 700)])
def test_a_process_freezes_what_it_holds_and_collects_its_youngest_objects_less_often(
    setting: str | None, threshold: int
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("OMS_GC_THRESHOLD", None)
    if setting is not None:
        env["OMS_GC_THRESHOLD"] = setting
    done = subprocess.run(
        [sys.executable, "-c", GC], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == [str(threshold), "True"]
