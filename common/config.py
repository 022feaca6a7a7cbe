"""Settings read from the environment (``OMS_*``), with defaults that match the local servers."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, str(default)))


# Loopback unless asked: on a shared machine a listener on every interface lets anyone reach the API and the
# metrics. Containers set OMS_BIND_HOST=0.0.0.0 (docker-compose.yml, Dockerfile).
DEFAULT_BIND_HOST = "127.0.0.1"


def listen_host(variable: str | None = None) -> str:
    """The address a listener binds: its own variable (e.g. ``OMS_API_HOST``), else ``OMS_BIND_HOST``, else
    loopback."""
    own = os.environ.get(variable, "").strip() if variable else ""
    return own or os.environ.get("OMS_BIND_HOST", "").strip() or DEFAULT_BIND_HOST


@dataclass(frozen=True)
class Settings:
    """Every tunable of the service; one instance is built by ``common.bootstrap``."""

    # The local servers' ports (OMS_PG_PORT, OMS_AMQP_PORT, as tools/infra.py starts them) make the defaults, so
    # every tool reaches the instance its environment names, not the one on the default ports.
    database_url: str = field(
        default_factory=lambda: _env(
            "OMS_DATABASE_URL", f"postgresql+psycopg://oms:oms@127.0.0.1:{_env('OMS_PG_PORT', '54329')}/oms"
        )
    )
    amqp_url: str = field(
        default_factory=lambda: _env("OMS_AMQP_URL", f"amqp://guest:guest@127.0.0.1:{_env('OMS_AMQP_PORT', '56729')}/")
    )
    data_dir: Path = field(default_factory=lambda: Path(_env("OMS_DATA_DIR", str(REPO_ROOT / ".data"))))
    # Stage runtime: how many deliveries one transaction may take, and how long to wait to fill a batch.
    batch_size: int = field(default_factory=lambda: _env_int("OMS_BATCH_SIZE", 200))
    batch_linger_ms: float = field(default_factory=lambda: _env_float("OMS_BATCH_LINGER_MS", 0.0))
    delivery_limit: int = field(default_factory=lambda: _env_int("OMS_DELIVERY_LIMIT", 5))
    outbox_grace_seconds: float = field(default_factory=lambda: _env_float("OMS_OUTBOX_GRACE_SECONDS", 10.0))
    outbox_poll_seconds: float = field(default_factory=lambda: _env_float("OMS_OUTBOX_POLL_SECONDS", 1.0))
    settlement_days_equity: int = field(default_factory=lambda: _env_int("OMS_SETTLEMENT_DAYS_EQUITY", 1))
    default_fee_rate: Decimal = field(default_factory=lambda: Decimal(_env("OMS_VENUE_FEE_RATE", "0.0005")))
    rest_port: int = field(default_factory=lambda: _env_int("OMS_REST_PORT", 8080))
    grpc_port: int = field(default_factory=lambda: _env_int("OMS_GRPC_PORT", 50051))
    metrics_port: int = field(default_factory=lambda: _env_int("OMS_METRICS_PORT", 0))
    # Where the listeners bind (see ``listen_host``): REST and gRPC, and each process's /metrics + /health.
    bind_host: str = field(default_factory=listen_host)
    api_host: str = field(default_factory=lambda: listen_host("OMS_API_HOST"))
    metrics_host: str = field(default_factory=lambda: listen_host("OMS_METRICS_HOST"))
    jwt_secret_file: Path = field(
        default_factory=lambda: Path(_env("OMS_JWT_SECRET_FILE", str(REPO_ROOT / ".data" / "jwt-secret")))
    )
    jwt_issuer: str = field(default_factory=lambda: _env("OMS_JWT_ISSUER", "oms"))
    session_timezone: str = field(default_factory=lambda: _env("OMS_SESSION_TZ", "America/New_York"))
    session_close: str = field(default_factory=lambda: _env("OMS_SESSION_CLOSE", "16:00"))
    log_level: str = field(default_factory=lambda: _env("OMS_LOG_LEVEL", "INFO"))


def load_settings() -> Settings:
    """Read the settings from the current environment."""
    return Settings()
