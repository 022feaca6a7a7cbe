"""``./oms audit deps``: pip-audit (the pinned one, really run) against vulnerability databases on this machine.

No test needs the network: the unreachable database is a loopback port that refuses connections (a socket bound
but not listening), and the reachable one is a stub of OSV's query API on loopback whose answers each test sets.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tools import audit

# Two pinned packages: each pip-audit run below makes two lookups.
PINS = "requests==2.34.2\nflask==3.1.3\n"
VULN = {
    "id": "GHSA-test-0001",
    "aliases": ["CVE-2099-0001"],
    "summary": "a made-up flaw for the test",
    "affected": [
        {
            "package": {"name": "requests", "ecosystem": "PyPI"},
            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "2.35.0"}]}],
        }
    ],
}


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses every connection at once: bound (so no one else takes it), not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@dataclass
class StubOsv:
    """OSV's POST /v1/query on loopback: ``vulns`` by package name, or ``status`` for every answer."""

    url: str
    vulns: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    status: int = 200
    hang: threading.Event | None = None  # set: answer; unset: hold every request (a database that never answers)
    queries: list[tuple[str, str]] = field(default_factory=list)


@pytest.fixture
def osv() -> Iterator[StubOsv]:
    stub = StubOsv(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            name, version = query["package"]["name"], query["version"]
            stub.queries.append((name, version))
            if stub.hang is not None:
                stub.hang.wait(30)
            body = json.dumps({"vulns": stub.vulns[name]} if name in stub.vulns else {}).encode()
            self.send_response(stub.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    stub.url = f"http://127.0.0.1:{server.server_address[1]}/v1/query"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        if stub.hang is not None:
            stub.hang.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def pins(tmp_path: Path) -> Path:
    path = tmp_path / "requirements.lock"
    path.write_text(PINS)
    return path


def _deps(*args: str) -> int:
    return audit.main(["deps", *args])


# ---- the database out of reach: said plainly, never a pass ------------------------------------------------


def test_an_unreachable_database_is_reported_as_not_checked_with_exit_3(
    refusing_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{refusing_port}/v1/query"
    # The real requirements.lock, as `./oms audit deps` reads it; the first lookup already fails.
    assert _deps("--osv-url", url) == audit.EXIT_NOT_CHECKED == 3
    out, err = capsys.readouterr()
    assert err.strip() == (
        f"audit deps: could not reach the vulnerability database (OSV at {url}: connection refused by "
        f"127.0.0.1:{refusing_port}): dependencies NOT checked"
    )
    assert "OK" not in out


def test_pypi_out_of_reach_through_a_proxy_is_not_checked_either(
    refusing_port: int, pins: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A corporate proxy that refuses, as behind a firewall: pip-audit's requests goes through it to pypi.org.
    for name in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{refusing_port}")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert _deps("--service", "pypi", "--requirements", str(pins)) == audit.EXIT_NOT_CHECKED
    err = capsys.readouterr().err
    assert "could not reach the vulnerability database (PyPI at https://pypi.org/pypi: the proxy refused" in err
    assert err.rstrip().endswith("dependencies NOT checked")


def test_a_database_that_never_answers_is_not_checked(
    osv: StubOsv, pins: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    osv.hang = threading.Event()
    assert _deps("--osv-url", osv.url, "--requirements", str(pins), "--timeout", "1") == audit.EXIT_NOT_CHECKED
    assert f"(OSV at {osv.url}: no answer from 127.0.0.1" in capsys.readouterr().err


def test_a_database_that_answers_an_error_is_not_checked(
    osv: StubOsv, pins: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    osv.status = 500
    assert _deps("--osv-url", osv.url, "--requirements", str(pins)) == audit.EXIT_NOT_CHECKED
    err = capsys.readouterr().err
    assert f"could not reach the vulnerability database (OSV at {osv.url}: 127.0.0.1" in err
    assert "answered HTTP 500): dependencies NOT checked" in err


# ---- the database in reach: findings fail, a clean set passes ---------------------------------------------


def test_a_clean_set_passes_after_looking_up_every_pin(
    osv: StubOsv, pins: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _deps("--osv-url", osv.url, "--requirements", str(pins)) == audit.EXIT_OK
    assert sorted(osv.queries) == [("flask", "3.1.3"), ("requests", "2.34.2")]
    assert f"audit deps: OK: no known vulnerability in 2 packages (OSV at {osv.url})" in capsys.readouterr().out


def test_a_known_vulnerability_fails_with_its_id_and_fix(
    osv: StubOsv, pins: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    osv.vulns["requests"] = [VULN]
    assert _deps("--osv-url", osv.url, "--requirements", str(pins)) == audit.EXIT_FINDINGS
    err = capsys.readouterr().err
    # pip-audit names a vulnerability by its CVE when it has one, the database's own id then an alias.
    assert "  requests 2.34.2: CVE-2099-0001 (GHSA-test-0001), fixed in 2.35.0: a made-up flaw for the test" in err
    assert "audit deps: FAILED: 1 known vulnerability in 1 package(s)" in err


# ---- the verdict on pip-audit's outputs -------------------------------------------------------------------


def _report(*dependencies: dict[str, Any]) -> str:
    return json.dumps({"dependencies": list(dependencies), "fixes": []})


def test_packages_that_could_not_be_looked_up_are_not_a_pass() -> None:
    report = _report(
        {"name": "flask", "version": "3.1.3", "vulns": []},
        {"name": "private-pkg", "skip_reason": "Dependency not found on PyPI and could not be audited"},
    )
    verdict = audit.judge_deps(0, report, "", "PyPI", audit.PYPI_URL)
    assert verdict.code == audit.EXIT_NOT_CHECKED
    assert verdict.lines[-1].startswith("audit deps: 1 package(s) NOT checked (PyPI at https://pypi.org/pypi)")


def test_no_package_looked_up_at_all_is_not_checked() -> None:
    report = _report({"name": "flask", "skip_reason": "Dependency not found on PyPI and could not be audited"})
    verdict = audit.judge_deps(0, report, "", "PyPI", audit.PYPI_URL)
    assert verdict.code == audit.EXIT_NOT_CHECKED
    assert "answered for no package" in verdict.lines[0] and verdict.lines[0].endswith("dependencies NOT checked")


def test_a_vulnerability_outranks_packages_not_checked() -> None:
    report = _report(
        {"name": "flask", "version": "3.1.3", "vulns": [{"id": "PYSEC-1", "fix_versions": [], "aliases": []}]},
        {"name": "private-pkg", "skip_reason": "not found"},
    )
    verdict = audit.judge_deps(1, report, "", "OSV", audit.OSV_URL)
    assert verdict.code == audit.EXIT_FINDINGS
    assert "  flask 3.1.3: PYSEC-1, no fixed version yet: " in verdict.lines
    assert "1 package(s) NOT checked" in verdict.lines[-1]


def test_a_crash_without_a_report_is_not_checked_whatever_its_exit_code() -> None:
    for code in (0, 1, 2):
        verdict = audit.judge_deps(code, None, "Traceback ...\nValueError: bad requirement line", "OSV", audit.OSV_URL)
        assert verdict.code == audit.EXIT_NOT_CHECKED
        assert verdict.lines == [
            f"audit deps: pip-audit failed (exit {code}: ValueError: bad requirement line): dependencies NOT checked"
        ]


def test_a_missing_requirements_file_is_not_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _deps("--requirements", str(tmp_path / "nothing.lock")) == audit.EXIT_NOT_CHECKED
    assert "dependencies NOT checked" in capsys.readouterr().err
