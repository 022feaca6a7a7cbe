"""The one settings object: every variable named and described, read once, a bad value refused by name, and
docs/configuration.md current (regenerate it with ``./oms config docs``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from common.settings import (
    REPO_ROOT,
    SECTIONS,
    ConfigurationError,
    InfraSettings,
    Settings,
    StageSettings,
    VenueSettings,
    load_settings,
)
from tools import configdoc

# Quoted variable names in code, ${OMS_...} in compose files and shell, `OMS_...:` keys of compose environments.
_MENTION = re.compile(r"[\"']OMS_[A-Z0-9_]+[\"']|\$\{OMS_[A-Z0-9_]+|^\s+OMS_[A-Z0-9_]+:", re.MULTILINE)
# Names that look like variables and are not: constants of the code.
_NOT_VARIABLES = {"OMS_EXCHANGE"}


def _variables() -> list[str]:
    return [name for section in SECTIONS.values() for f in section.model_fields.values() for name in _env_names(f)]


def _env_names(field: object) -> list[str]:
    alias = getattr(field, "validation_alias", None)
    return [str(c) for c in getattr(alias, "choices", [alias])]


def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OMS_"):
            monkeypatch.delenv(name)


def test_every_setting_names_its_variable_and_says_what_it_does() -> None:
    for section in SECTIONS.values():
        assert section.__doc__
        for name, field in section.model_fields.items():
            assert field.description, f"{section.__name__}.{name} has no description"
            assert all(v.startswith("OMS_") for v in _env_names(field)), f"{section.__name__}.{name}"
    primary = [_env_names(f)[0] for s in SECTIONS.values() for f in s.model_fields.values()]
    assert len(primary) == len(set(primary)), "a variable is read by two settings"


def test_every_variable_the_repository_mentions_is_documented() -> None:
    documented = set(_variables()) | {name for name, _, _ in configdoc.TOOL_VARIABLES}
    mentioned: set[str] = set()
    files = [REPO_ROOT / "docker-compose.yml", REPO_ROOT / "oms", REPO_ROOT / "Dockerfile"]
    for root in ("common", "services", "tools", "tests"):
        files += sorted((REPO_ROOT / root).rglob("*.py"))
    for path in files:
        if path.exists():
            mentioned |= {m.strip(" \"'${:") for m in _MENTION.findall(path.read_text(errors="replace"))}
    assert sorted(mentioned - documented - _NOT_VARIABLES) == []


def test_the_environment_is_read_with_the_historic_names(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_environment(monkeypatch)
    monkeypatch.setenv("OMS_PG_PORT", "5999")
    monkeypatch.setenv("OMS_BATCH_SIZE", "7")
    monkeypatch.setenv("OMS_VENUE_REJECT_SYMBOLS", "esz6, xyz,")
    monkeypatch.setenv("OMS_VENUE_MAX_QTY", "")  # empty: unset
    monkeypatch.setenv("OMS_BIND_HOST", "0.0.0.0")
    monkeypatch.setenv("OMS_JWT_SECRET", "s3cret")
    settings = load_settings()
    assert settings.infra.database_url == "postgresql+psycopg://oms:oms@127.0.0.1:5999/oms"
    assert settings.stage.batch_size == 7
    assert settings.venue.reject_symbols == frozenset({"ESZ6", "XYZ"}) and settings.venue.max_qty is None
    assert (settings.api.host, settings.infra.metrics_host) == ("0.0.0.0", "0.0.0.0")
    assert settings.api.jwt_secret is not None and settings.api.jwt_secret.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)


def test_a_section_given_is_used_as_given_and_the_others_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_environment(monkeypatch)
    monkeypatch.setenv("OMS_BATCH_SIZE", "9")
    monkeypatch.setenv("OMS_VENUE_SEED", "3")
    settings = Settings(stage=StageSettings(batch_size=1), infra=InfraSettings(database_url="postgresql://x/y"))
    assert settings.stage.batch_size == 1 and settings.venue.seed == 3
    assert settings.infra.database_url == "postgresql://x/y"
    assert VenueSettings(fee_rate=Decimal("0.01")).seed == 42  # a section built by hand reads nothing


def test_a_bad_value_is_refused_with_the_variables_name(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_environment(monkeypatch)
    monkeypatch.setenv("OMS_BATCH_SIZE", "abc")
    monkeypatch.setenv("OMS_VENUE_PARTIAL_FILLS", "0")
    monkeypatch.setenv("OMS_LOG_LEVEL", "chatty")
    monkeypatch.setenv("OMS_JWT_SECRET_FILE", "")
    with pytest.raises(ConfigurationError) as refused:
        load_settings()
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("invalid configuration: OMS_BATCH_SIZE: Input should be a valid integer")
    assert "(got 'abc')" in message
    assert "OMS_VENUE_PARTIAL_FILLS: Input should be greater than or equal to 1" in message
    assert "OMS_LOG_LEVEL: " in message


def test_a_process_started_with_a_bad_value_says_which_in_one_line() -> None:
    env = {**os.environ, "OMS_BATCH_SIZE": "abc", "PYTHONPATH": str(REPO_ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "services.intake"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2
    assert run.stderr.startswith("invalid configuration: OMS_BATCH_SIZE: Input should be a valid integer")
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr


def test_the_configuration_page_is_current() -> None:
    # Out of date: run `./oms config docs` (or .venv/bin/python -m tools.configdoc docs) and commit the page.
    assert configdoc.main(["docs", "--check"]) == 0, "docs/configuration.md is out of date: run ./oms config docs"


def test_the_configuration_page_is_the_same_on_every_machine(tmp_path: Path) -> None:
    page = tmp_path / "configuration.md"
    assert configdoc.main(["docs", "--output", str(page)]) == 0
    assert str(REPO_ROOT) not in page.read_text()
