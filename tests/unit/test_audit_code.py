"""``./oms audit code``: bandit (the pinned one, really run, offline) and its gate, on small files made here;
every ``# nosec`` in the scanned code names its test and says why; the fixes of the first scan's findings."""

from __future__ import annotations

import configparser
import json
import re
import tokenize
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common import health
from common.settings import REPO_ROOT
from tools import audit

SHELL_INJECTION = """\
import subprocess


def run(command: str) -> None:
    subprocess.call(command, shell=True){comment}
"""
FLASK_DEBUG = """\
import flask

app = flask.Flask(__name__)
app.run(debug=True)
"""
BELOW_THE_GATE = """\
import random
import urllib.request


def fetch(url: str) -> bytes:
    return urllib.request.urlopen(url).read()


def jitter() -> float:
    return random.random()
"""


def _scan(folder: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = audit.main(["code", str(folder)])
    out, err = capsys.readouterr()
    return code, out, err


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def test_a_high_severity_finding_fails_the_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "code", "runner.py", SHELL_INJECTION.format(comment=""))
    code, out, err = _scan(path.parent, capsys)
    assert code == audit.EXIT_FINDINGS == 1
    assert f"FAIL HIGH/HIGH       B602 {path}:5" in out
    assert "findings by severity: high 1, medium 0, low 0" in out
    assert "audit code: FAILED: 1 finding(s) of HIGH severity at MEDIUM or HIGH confidence" in err


def test_a_high_severity_finding_at_medium_confidence_fails_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path / "code", "web.py", FLASK_DEBUG)
    code, out, _ = _scan(path.parent, capsys)
    assert code == audit.EXIT_FINDINGS
    assert f"FAIL HIGH/MEDIUM     B201 {path}:4" in out


def test_findings_below_the_gate_are_listed_and_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "code", "helpers.py", BELOW_THE_GATE)
    code, out, _ = _scan(path.parent, capsys)
    assert code == audit.EXIT_OK
    assert f"MEDIUM/HIGH     B310 {path}:6" in out
    assert f"LOW/HIGH        B311 {path}:10" in out
    assert "findings by severity: high 0, medium 1, low 1 (0 silenced by # nosec BXXX)" in out
    assert "audit code: OK: no finding of HIGH severity at MEDIUM or HIGH confidence" in out


def test_a_nosec_naming_the_test_silences_it_and_is_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "code", "runner.py", SHELL_INJECTION.format(comment="  # nosec B602"))
    code, out, _ = _scan(path.parent, capsys)
    assert code == audit.EXIT_OK
    assert "findings by severity: high 0, medium 0, low 0 (1 silenced by # nosec BXXX)" in out


def test_a_file_bandit_cannot_parse_is_not_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path / "code", "fine.py", "x = 1\n")
    broken = _write(tmp_path / "code", "broken.py", "def broken(:\n")
    code, out, err = _scan(broken.parent, capsys)
    assert code == audit.EXIT_NOT_CHECKED == 3
    assert err.startswith(f"audit code: bandit could not scan 1 file(s): {broken}: ")
    assert err.rstrip().endswith("code NOT checked")
    assert "OK" not in out


def test_a_folder_without_python_is_not_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = _scan(tmp_path / "empty", capsys)
    assert code == audit.EXIT_NOT_CHECKED
    assert "bandit found no Python file to scan: code NOT checked" in err


def _bandit_result(severity: str, confidence: str) -> dict[str, Any]:
    return {
        "test_id": "B999",
        "issue_severity": severity,
        "issue_confidence": confidence,
        "filename": "x.py",
        "line_number": 1,
        "issue_text": "t",
        "more_info": "",
    }


@pytest.mark.parametrize(
    ("severity", "confidence", "gated"),
    [
        ("HIGH", "HIGH", True),
        ("HIGH", "MEDIUM", True),
        ("HIGH", "LOW", False),  # bandit's own guess: listed, not failing
        ("MEDIUM", "HIGH", False),
        ("LOW", "HIGH", False),
    ],
)
def test_the_gate(severity: str, confidence: str, gated: bool) -> None:
    report = audit.parse_bandit_report(
        json.dumps(
            {
                "errors": [],
                "results": [_bandit_result(severity, confidence)],
                "metrics": {"x.py": {}, "_totals": {"loc": 1, "nosec": 0, "skipped_tests": 0}},
            }
        )
    )
    assert [f.gated for f in report.findings] == [gated]
    assert len(report.gated) == (1 if gated else 0)


# ---- every `# nosec` in the scanned code names its test and gives the reason ------------------------------


def _scanned_files() -> Iterator[Path]:
    config = configparser.ConfigParser()
    config.read(audit.BANDIT_CONFIG)
    section = config["bandit"]
    assert section["targets"].split(",") == ["common", "services", "tools", "migrations"]
    excluded = [pattern.strip("*") for pattern in section["exclude"].split(",")]
    for target in section["targets"].split(","):
        for path in sorted((REPO_ROOT / target).rglob("*.py")):
            if not any(part in f"/{path.relative_to(REPO_ROOT)}" for part in excluded):
                yield path


def _comments(path: Path) -> dict[int, str]:
    with path.open("rb") as handle:
        return {
            token.start[0]: token.string
            for token in tokenize.tokenize(handle.readline)
            if token.type == tokenize.COMMENT
        }


NOSEC = re.compile(r"#\s*nosec\b:?\s*(?P<ids>[^#]*)(?P<rest>#.*)?")


def test_every_nosec_names_its_tests_and_gives_the_reason() -> None:
    """A bare ``# nosec`` would silence every test on the line; the reason is a comment right above (naming
    the same test ids) or one after the pragma on the line."""
    problems: list[str] = []
    seen = 0
    for path in _scanned_files():
        lines = path.read_text().splitlines()
        for number, comment in _comments(path).items():
            match = NOSEC.search(comment)
            if match is None:
                continue
            seen += 1
            where = f"{path.relative_to(REPO_ROOT)}:{number}"
            ids = re.findall(r"B\d{3}", match["ids"])
            if not re.fullmatch(r"B\d{3}(?:[ ,]+B\d{3})*", match["ids"].strip()):
                problems.append(f"{where}: name the test ids only, e.g. `# nosec B603` ({comment!r})")
                continue
            above: list[str] = []
            index = number - 2
            while index >= 0 and lines[index].lstrip().startswith("#"):
                above.append(lines[index])
                index -= 1
            reason = " ".join(above) + (match["rest"] or "")
            missing = [test_id for test_id in ids if test_id not in reason]
            if missing:
                problems.append(f"{where}: no reason naming {', '.join(missing)} in the comment above the line")
    assert seen > 0  # the scan found the tree's nosec comments (the check itself works)
    assert problems == []


# ---- fixes of the first scan's findings -------------------------------------------------------------------


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "custom://x"])
def test_the_health_probe_opens_only_http_urls(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []

    def fake_urlopen(target: str, timeout: float) -> Any:
        opened.append(target)
        raise OSError("not here")

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    assert health.probe(url) == 1
    assert opened == []
    assert health.probe("http://127.0.0.1:1/health/ready") == 1
    assert opened == ["http://127.0.0.1:1/health/ready"]
