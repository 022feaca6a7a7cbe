"""The Docker path: docker compose runs Postgres and RabbitMQ instead of local processes, on the same ports."""

from __future__ import annotations

import os
import shutil
import subprocess

from tools.infra.settings import ROOT, InfraError
from tools.infra.system import run

COMPOSE_FILE = ROOT / "docker-compose.yml"


def docker_engine_answers() -> bool:
    """True when a Docker engine (not just the client) is reachable."""
    if not shutil.which("docker"):
        return False
    try:
        # B603/B607: a fixed argv, no shell; `docker` is looked up on PATH on purpose (found by shutil.which).
        result = subprocess.run(["docker", "info"], capture_output=True, timeout=15, check=False)  # nosec B603 B607
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def use_docker(docker: bool | None) -> bool:
    """Whether to use docker compose: ``docker`` when given, else ``OMS_INFRA=docker``; refused with no engine."""
    wanted = docker if docker is not None else os.environ.get("OMS_INFRA", "").lower() == "docker"
    if wanted and not docker_engine_answers():
        raise InfraError("--docker / OMS_INFRA=docker asked for Docker, but no Docker engine answers `docker info`")
    return wanted


def compose(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``docker compose`` on the project's compose file, as project ``oms``."""
    return run(["docker", "compose", "-p", "oms", "-f", str(COMPOSE_FILE), *args], timeout=timeout)
