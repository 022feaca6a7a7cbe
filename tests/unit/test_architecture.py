"""The import contracts of .importlinter hold: a stage imports common/, never another stage; the domain
imports no infrastructure; common imports neither services nor tools; the application layer (common/orders)
reaches the store only through its ports.

import-linter runs once, as its CLI does at the repository root (no cache left behind); each contract is its
own test, so a failure names the contract it broke and shows the import chains that break it.
"""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / ".importlinter"


def _contract_names() -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(CONFIG, encoding="utf-8")
    return [parser[section]["name"] for section in parser.sections() if section.startswith("importlinter:contract:")]


CONTRACTS = _contract_names()


@pytest.fixture(scope="module")
def lint_report() -> str:
    """What ``lint-imports`` printed; an error building the graph (a bad contract, a missing module) fails here."""
    run = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"]
        + ["--config", str(CONFIG), "--no-cache", "--no-logo"],
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = run.stdout + run.stderr
    if not re.search(r"^Contracts: \d+ kept, \d+ broken\.", report, re.MULTILINE):
        pytest.fail(f"lint-imports did not check the contracts (exit {run.returncode}):\n{report}")
    return report


def test_the_contracts_are_there() -> None:
    assert CONTRACTS == [
        "A stage imports common/, never another stage",
        "The domain imports no infrastructure",
        "common imports neither services nor tools",
        "The application layer reaches the store only through its ports",
    ]


@pytest.mark.parametrize("contract", CONTRACTS)
def test_import_contract_is_kept(lint_report: str, contract: str) -> None:
    status = re.search(rf"^{re.escape(contract)} (KEPT|BROKEN)$", lint_report, re.MULTILINE)
    assert status is not None, f"contract {contract!r} was not checked:\n{lint_report}"
    assert status.group(1) == "KEPT", f"import contract broken: {contract}\n{lint_report}"
