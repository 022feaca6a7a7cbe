"""Both servers together: start, stop and report on Postgres and RabbitMQ, as local processes or with Docker."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator

from tools.infra import postgres, rabbitmq
from tools.infra.docker import compose, use_docker
from tools.infra.settings import InfraError, InfraUrls, ServerSettings, ServerStatus
from tools.infra.system import is_root, print_progress


@contextlib.contextmanager
def _lock(settings: ServerSettings) -> Iterator[None]:
    """Serialise start/stop between processes (parallel test runs, two terminals)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if is_root():
        # The service users only need to traverse the data folder, never to write to it.
        settings.data_dir.chmod(0o755)
    with open(settings.data_dir / ".infra.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_started(*, docker: bool | None = None, verbose: bool = False) -> InfraUrls:
    """Start Postgres and RabbitMQ unless they already run; return where they answer."""
    settings = ServerSettings.from_env()
    if use_docker(docker):
        from tools import secrets  # the compose file reads its secrets from files: made first, once

        secrets.init()
        compose("up", "-d", "--wait", "postgres", "rabbitmq")
        return secrets.compose_urls(settings)
    with _lock(settings):
        pg = postgres.start(settings)
        rabbit = rabbitmq.start(settings)
    if verbose:
        print_progress(f"postgres: {pg} (port {settings.pg_port}; log {settings.pg_log})")
        print_progress(f"rabbitmq: {rabbit} (node {settings.nodename}; log {settings.rabbit_log})")
    return settings.urls


def stop(*, docker: bool | None = None) -> list[str]:
    """Stop both servers (a server that is not running is fine); returns what was done."""
    settings = ServerSettings.from_env()
    if use_docker(docker):
        compose("stop", "postgres", "rabbitmq")
        return ["docker compose: postgres and rabbitmq stopped"]
    with _lock(settings):
        # Both are attempted even when the first fails, so a broken Postgres does not leave RabbitMQ running.
        errors: list[str] = []
        done: list[str] = []
        for name, action in (("rabbitmq", rabbitmq.stop), ("postgres", postgres.stop)):
            try:
                done.append(f"{name}: {action(settings)}")
            except InfraError as exc:
                errors.append(f"{name}: {exc}")
    if errors:
        raise InfraError("\n".join(errors))
    return done


def status(*, docker: bool | None = None) -> list[ServerStatus]:
    """Each server's state."""
    settings = ServerSettings.from_env()
    if use_docker(docker):
        out = compose("ps", "postgres", "rabbitmq").stdout.strip()
        return [ServerStatus("docker compose", "running" in out.lower() or "up" in out.lower(), out)]
    return [postgres.status(settings), rabbitmq.status(settings)]
