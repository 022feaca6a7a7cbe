"""The local RabbitMQ node's scheduler count: OMS_RABBITMQ_SCHEDULERS into its +S; unset or 0, Erlang's default."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.infra import rabbitmq
from tools.infra.settings import InfraError, ServerSettings


def _arguments(settings: ServerSettings) -> list[str]:
    return rabbitmq._env(settings)["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"].split()


def test_the_variable_sets_the_nodes_schedulers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OMS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("OMS_RABBITMQ_SCHEDULERS", "3")
    settings = ServerSettings.from_env()
    assert settings.rabbit_schedulers == 3
    arguments = _arguments(settings)
    assert arguments[arguments.index("+S") + 1] == "3:3"
    assert "inet_dist_use_interface" in arguments  # distribution stays on loopback


@pytest.mark.parametrize("value", [None, "0"])
def test_unset_or_zero_leaves_erlangs_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str | None
) -> None:
    monkeypatch.setenv("OMS_DATA_DIR", str(tmp_path))
    if value is None:
        monkeypatch.delenv("OMS_RABBITMQ_SCHEDULERS", raising=False)
    else:
        monkeypatch.setenv("OMS_RABBITMQ_SCHEDULERS", value)
    settings = ServerSettings.from_env()
    assert settings.rabbit_schedulers == 0
    arguments = _arguments(settings)
    assert "+S" not in arguments
    assert "inet_dist_use_interface" in arguments


def test_a_count_that_is_not_a_number_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OMS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("OMS_RABBITMQ_SCHEDULERS", "two")
    with pytest.raises(InfraError, match="OMS_RABBITMQ_SCHEDULERS"):
        ServerSettings.from_env()
