"""Fixtures of the browser tests: the real REST server process and a headless chromium driven by selenium.

The browser is Debian's ``chromium`` with its ``chromium-driver`` (``.ci/run`` installs both); selenium is
pointed at them explicitly, so it never tries to download a browser or a driver. Without them the tests skip,
saying so; nothing else makes them skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from common.settings import REPO_ROOT
from common.store.db import make_engine
from tests.support.api import TEST_SECRET, private_vhost
from tests.support.polling import wait_until
from tools.seed import seed_demo

if TYPE_CHECKING:
    from tools.infra import InfraUrls

CHROMIUM_NAMES = ("chromium", "chromium-browser")
CHROMEDRIVER = "chromedriver"


def _chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def browser_binaries() -> tuple[str, str]:
    """The chromium and chromedriver executables, or a skip naming the packages that are missing."""
    chromium, driver = _chromium(), shutil.which(CHROMEDRIVER)
    if chromium is None or driver is None:
        missing = [name for name, path in (("chromium", chromium), ("chromium-driver", driver)) if path is None]
        pytest.skip(f"needs Debian's {' and '.join(missing)} (apt-get install -y chromium chromium-driver)")
    return chromium, driver


@pytest.fixture(scope="module")
def rest_server(
    browser_binaries: tuple[str, str],
    database_url: str,
    amqp_url: str,
    infra_urls: InfraUrls,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """``python -m services.api --rest-only`` on a free port, the demo data seeded; yields its base URL.

    It asks for the browser first: without one there is no point starting a server (the test skips).
    """
    engine = make_engine(database_url)
    with engine.begin() as connection:
        seed_demo(connection)
    engine.dispose()
    port = _free_port()
    data_dir: Path = tmp_path_factory.mktemp("browser-api")
    stderr_path = data_dir / "stderr.log"
    with private_vhost(infra_urls, amqp_url) as vhost_url:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT),
            "OMS_DATABASE_URL": database_url,
            "OMS_AMQP_URL": vhost_url,
            "OMS_JWT_SECRET": TEST_SECRET,
            "OMS_REST_PORT": str(port),
            "OMS_DATA_DIR": str(data_dir),
            "OMS_API_HOST": "127.0.0.1",
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        with stderr_path.open("w") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "services.api", "--rest-only", "--workers", "1"],
                cwd=REPO_ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        base = f"http://127.0.0.1:{port}"

        def live() -> bool:
            assert process.poll() is None, f"the REST server exited: {stderr_path.read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(f"{base}/health/live", timeout=2) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        try:
            wait_until(live, timeout=30, interval=0.1, message="the REST server to answer")
            yield base
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture()
def browser(browser_binaries: tuple[str, str], tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """A headless chromium (a fresh profile each test)."""
    chromium, driver = browser_binaries
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where chromium's sandbox cannot start
        "--disable-dev-shm-usage",  # a small /dev/shm must not crash the renderer
        "--window-size=1400,1600",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(argument)
    service = Service(executable_path=driver, log_output=str(tmp_path / "chromedriver.log"))
    chrome = webdriver.Chrome(service=service, options=options)
    try:
        yield chrome
    finally:
        chrome.quit()
