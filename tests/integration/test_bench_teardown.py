"""``oms bench`` ended by SIGTERM (``timeout``, ``kill``) still tears its sandbox down: no database, no vhost and
no process of it left behind to cost the servers CPU in every later run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.messaging.topology import all_stage_queues
from common.settings import REPO_ROOT
from tests.support.polling import wait_until
from tests.support.servers import databases_named, vhosts_named
from tools import infra
from tools.infra import InfraUrls
from tools.sandbox import consumers_ready

pytestmark = pytest.mark.integration


@pytest.fixture()
def local_servers(infra_urls: InfraUrls) -> InfraUrls:
    """The tests' servers, when they are those ``oms bench`` runs on (as under ``./oms test``, which points the
    tests at the servers it ensured; testcontainers' are others)."""
    if not os.environ.get("OMS_TEST_DATABASE_URL"):
        pytest.skip("the tests run on servers of their own (testcontainers), oms bench on the project's")
    if infra.ensure_started().database_url != infra_urls.database_url:
        pytest.skip("OMS_TEST_DATABASE_URL names servers other than those oms bench runs on")
    return infra_urls


def _bench_vhosts(management_url: str) -> set[str]:
    return vhosts_named(management_url, "oms_bench_")


def _bench_databases(database_url: str) -> set[str]:
    return databases_named(database_url, "oms_bench_")


@pytest.fixture()
def bench_process(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    output = tmp_path / "bench.log"
    with output.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tools.cli", "bench", "--rate", "2", "--seconds", "300", "--idle", "0"],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        print(f"--- oms bench's output\n{output.read_text()}")  # shown by pytest when the test failed


def test_a_bench_ended_by_sigterm_drops_its_database_and_vhost(
    local_servers: InfraUrls, bench_process: subprocess.Popen[bytes]
) -> None:
    before = _bench_vhosts(local_servers.management_url)
    ours = wait_until(
        lambda: _bench_vhosts(local_servers.management_url) - before, timeout=120, message="the bench's vhost"
    )
    (vhost,) = ours
    try:
        queues = [q.name for q in all_stage_queues()]
        assert not consumers_ready(local_servers.management_url, vhost, queues, timeout=120), "never ran"
        assert vhost in _bench_databases(local_servers.database_url)

        bench_process.send_signal(signal.SIGTERM)
        assert bench_process.wait(90) == 128 + signal.SIGTERM

        assert vhost not in _bench_vhosts(local_servers.management_url)
        assert vhost not in _bench_databases(local_servers.database_url)
    finally:  # what a failed teardown left, so it does not cost the rest of the session
        bench_process.kill()
        bench_process.wait(30)
        infra.delete_vhost(vhost, local_servers.management_url)
        infra.drop_database(vhost, local_servers.database_url)
