"""``oms test``: pytest against the servers, started first unless the environment names others."""

from __future__ import annotations

import os
import subprocess
import sys

from tools.infra.servers import ensure_started
from tools.infra.settings import ROOT, InfraError


def run_tests(argv: list[str]) -> int:
    """``oms test [pytest args]``: start the servers, then run pytest against them; pytest's exit code."""
    env = dict(os.environ)
    if not (env.get("OMS_TEST_DATABASE_URL") and env.get("OMS_TEST_AMQP_URL")):
        try:
            urls = ensure_started()
        except InfraError as exc:
            print(f"oms test: {exc}", file=sys.stderr)
            return 1
        # Point the tests at the servers just ensured, whatever else (a Docker engine) the machine offers.
        env.update(
            OMS_TEST_DATABASE_URL=urls.database_url,
            OMS_TEST_AMQP_URL=urls.amqp_url,
            OMS_TEST_MANAGEMENT_URL=urls.management_url,
        )
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *argv]
    # B603: this interpreter's pytest, no shell; the arguments are the developer's own `./oms test` ones.
    return subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode  # nosec B603
