"""``./oms audit``: the security checks, each of which either checks or says plainly that it did not.

    ./oms audit code                  # bandit on common, services, tools, migrations (.bandit); CI runs this
    ./oms audit code PATH ...         # the same check and gate on these files or folders only
    ./oms audit deps                  # pip-audit on requirements.lock against OSV (needs the network)
    ./oms audit deps --service pypi   # ... against PyPI's JSON API instead
    ./oms audit verify [--order ID]   # the order_events hash chains (tools/audit_chain.py)

Exit codes: 0 checked and clean; 1 findings (a HIGH severity bandit finding at MEDIUM or HIGH confidence, a
known vulnerability in a pinned package); 2 a usage error; 3 NOT checked: the scanner is missing, a file could
not be parsed, a package could not be looked up, or the vulnerability database could not be reached. A check
that could not run never exits 0.

Also ``python -m tools.audit code``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from common.settings import REPO_ROOT

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_NOT_CHECKED = 3

# ---- audit code: bandit -----------------------------------------------------------------------------------

BANDIT_CONFIG = REPO_ROOT / ".bandit"
# The gate: a HIGH severity finding fails the run unless bandit itself calls it a guess (LOW confidence). In
# bandit 1.9.4 every HIGH severity check reports at MEDIUM or HIGH confidence, so this drops nothing today, and
# a HIGH-only confidence gate would miss Flask's debug=True (B201), wildcard injection (B609) and unverified
# SSH host keys (B507), which bandit reports at MEDIUM confidence.
GATE_SEVERITY = "HIGH"
GATE_CONFIDENCES = frozenset({"MEDIUM", "HIGH"})
SEVERITIES = ("HIGH", "MEDIUM", "LOW")
BANDIT_TIMEOUT_S = 600.0


class NotChecked(Exception):
    """The check could not run to the end: its findings, if any, are unknown."""


@dataclass(frozen=True)
class CodeFinding:
    """One bandit result."""

    test_id: str
    severity: str
    confidence: str
    filename: str
    line: int
    text: str
    more_info: str

    @property
    def gated(self) -> bool:
        """Whether this finding fails the run."""
        return self.severity == GATE_SEVERITY and self.confidence in GATE_CONFIDENCES


@dataclass(frozen=True)
class CodeReport:
    """What bandit found, and over how much code."""

    findings: list[CodeFinding]
    files: int
    lines: int
    suppressed: int  # results silenced by nosec comments: naming test ids (skipped_tests) or bare (nosec)

    @property
    def gated(self) -> list[CodeFinding]:
        """The findings that fail the run."""
        return [finding for finding in self.findings if finding.gated]


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        raise NotChecked(
            f"{distribution} is not installed (it is a pinned dev dependency: ./oms installs it)"
        ) from None


def parse_bandit_report(text: str) -> CodeReport:
    """Read bandit's JSON report; NotChecked when a file could not be scanned or nothing was."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NotChecked(f"bandit wrote no readable report ({exc})") from None
    errors = data.get("errors") or []
    if errors:
        where = "; ".join(f"{error.get('filename')}: {error.get('reason')}" for error in errors)
        raise NotChecked(f"bandit could not scan {len(errors)} file(s): {where}")
    metrics: dict[str, dict[str, Any]] = data.get("metrics") or {}
    totals = metrics.get("_totals", {})
    files = len([name for name in metrics if name != "_totals"])
    if files == 0:
        raise NotChecked("bandit found no Python file to scan")
    findings = [
        CodeFinding(
            test_id=str(result["test_id"]),
            severity=str(result["issue_severity"]).upper(),
            confidence=str(result["issue_confidence"]).upper(),
            filename=str(result["filename"]),
            line=int(result["line_number"]),
            text=str(result["issue_text"]),
            more_info=str(result.get("more_info", "")),
        )
        for result in data.get("results") or []
    ]
    findings.sort(key=lambda f: (not f.gated, SEVERITIES.index(f.severity) if f.severity in SEVERITIES else 3))
    suppressed = int(totals.get("skipped_tests", 0)) + int(totals.get("nosec", 0))
    return CodeReport(findings=findings, files=files, lines=int(totals.get("loc", 0)), suppressed=suppressed)


def run_bandit(paths: Sequence[str] = ()) -> CodeReport:
    """bandit with .bandit's settings over its targets (or over ``paths``), every severity reported."""
    _version("bandit")
    with tempfile.TemporaryDirectory(prefix="oms-bandit-") as folder:
        output = Path(folder) / "bandit.json"
        command = [sys.executable, "-m", "bandit", "--ini", str(BANDIT_CONFIG), "-f", "json", "-o", str(output)]
        command += ["-q", *paths]
        try:
            # B603: this interpreter's bandit with our own arguments, no shell.
            done = subprocess.run(  # nosec B603
                command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=BANDIT_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            raise NotChecked(f"bandit did not finish in {BANDIT_TIMEOUT_S:.0f} s") from None
        # 0: nothing found, 1: something found (the report says what); anything else is bandit failing.
        if done.returncode not in (0, 1) or not output.exists():
            raise NotChecked(f"bandit failed (exit {done.returncode}): {_last_line(done.stderr)}")
        return parse_bandit_report(output.read_text())


def _finding_line(finding: CodeFinding) -> str:
    mark = "FAIL" if finding.gated else "    "
    level = f"{finding.severity}/{finding.confidence}"
    return f"  {mark} {level:<15} {finding.test_id} {finding.filename}:{finding.line}  {finding.text}"


def audit_code(paths: Sequence[str] = ()) -> int:
    """``./oms audit code``: print bandit's findings and the verdict; the exit code of the module docstring."""
    try:
        version = _version("bandit")
        report = run_bandit(paths)
    except NotChecked as exc:
        print(f"audit code: {exc}: code NOT checked", file=sys.stderr)
        return EXIT_NOT_CHECKED
    scope = " ".join(paths) if paths else "the targets of .bandit"
    print(f"audit code: bandit {version} on {scope}: {report.files} files, {report.lines} lines of code")
    for finding in report.findings:
        print(_finding_line(finding))
        if finding.gated and finding.more_info:
            print(f"       {finding.more_info}")
    counts = Counter(finding.severity for finding in report.findings)
    by_severity = ", ".join(f"{severity.lower()} {counts.get(severity, 0)}" for severity in SEVERITIES)
    print(f"findings by severity: {by_severity} ({report.suppressed} silenced by # nosec BXXX)")
    gate = f"{GATE_SEVERITY} severity at {' or '.join(sorted(GATE_CONFIDENCES, reverse=True))} confidence"
    gated = report.gated
    if gated:
        print(
            f"audit code: FAILED: {len(gated)} finding(s) of {gate}; fix them, or where one is a false positive "
            "add `# nosec BXXX` to the line with the reason in a comment (SECURITY.md)",
            file=sys.stderr,
        )
        return EXIT_FINDINGS
    print(f"audit code: OK: no finding of {gate}")
    return EXIT_OK


# ---- audit deps: pip-audit --------------------------------------------------------------------------------

REQUIREMENTS = REPO_ROOT / "requirements.lock"
OSV_URL = "https://api.osv.dev/v1/query"  # pip-audit's own default, named here so the message can say it
PYPI_URL = "https://pypi.org/pypi"
PIP_AUDIT_TIMEOUT_S = 900.0  # the whole run: one query per pinned package, one after another
MAX_SKIPPED_SHOWN = 10  # packages not checked listed by name; the rest counted

# What pip-audit's traceback says when the service is out of reach -> the reason we print.
_UNREACHABLE: tuple[tuple[str, str], ...] = (
    (
        r"NameResolutionError|Failed to resolve|Name or service not known|Temporary failure in name resolution",
        "cannot resolve {host}",
    ),
    (r"ProxyError|Unable to connect to proxy", "the proxy refused the connection"),
    (r"Connection refused", "connection refused by {host}"),
    (r"Network is unreachable|No route to host", "network unreachable"),
    (r"ConnectTimeout|ReadTimeout|timed out", "no answer from {host} in time"),
    (r"SSLError|CERTIFICATE_VERIFY_FAILED", "TLS with {host} failed"),
    (r"(\d{3}) (?:Client|Server) Error", "{host} answered HTTP {0}"),
    (r"ConnectionError|Could not connect|ServiceError|RemoteDisconnected|Connection reset", "could not connect"),
)


@dataclass(frozen=True)
class Vulnerability:
    """One known vulnerability of one pinned package."""

    package: str
    version: str
    id: str
    aliases: tuple[str, ...]
    fix_versions: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class DepsReport:
    """pip-audit's answer: what it checked, what it found, what it could not look up."""

    checked: int
    vulnerabilities: list[Vulnerability]
    skipped: dict[str, str] = field(default_factory=dict)  # package -> why it was not checked


@dataclass(frozen=True)
class Verdict:
    """An exit code and the lines that explain it (to stdout when 0, else to stderr)."""

    code: int
    lines: list[str]


def parse_pip_audit_report(text: str) -> DepsReport:
    """Read pip-audit's JSON report (``-f json``)."""
    data = json.loads(text)
    vulnerabilities: list[Vulnerability] = []
    skipped: dict[str, str] = {}
    checked = 0
    for dependency in data.get("dependencies", []):
        name = str(dependency.get("name"))
        if "skip_reason" in dependency:
            skipped[name] = str(dependency["skip_reason"])
            continue
        checked += 1
        for vuln in dependency.get("vulns", []):
            vulnerabilities.append(
                Vulnerability(
                    package=name,
                    version=str(dependency.get("version")),
                    id=str(vuln.get("id")),
                    aliases=tuple(str(alias) for alias in vuln.get("aliases", [])),
                    fix_versions=tuple(str(version) for version in vuln.get("fix_versions", [])),
                    description=str(vuln.get("description") or "").strip(),
                )
            )
    return DepsReport(checked=checked, vulnerabilities=vulnerabilities, skipped=skipped)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last = lines[-1] if lines else "no output"
    return last if len(last) <= 240 else last[:237] + "..."


def unreachable_reason(stderr: str, service_url: str) -> str | None:
    """Why pip-audit could not reach ``service_url``, from its error output; None when that is not the failure."""
    host = urlsplit(service_url).netloc or service_url
    for pattern, reason in _UNREACHABLE:
        match = re.search(pattern, stderr)
        if match:
            return reason.format(*match.groups(), host=host)
    return None


def judge_deps(returncode: int, report_text: str | None, stderr: str, database: str, service_url: str) -> Verdict:
    """The verdict on one pip-audit run: its exit code, its JSON report (None when it wrote none) and stderr.

    pip-audit exits 1 both on findings and on a crash (an unreachable service ends in a traceback), so the exit
    code alone cannot tell them apart: the report decides. No report means nothing was checked.
    """
    where = f"{database} at {service_url}"
    if report_text is None:
        reason = unreachable_reason(stderr, service_url)
        if reason is not None:
            message = f"could not reach the vulnerability database ({where}: {reason}): dependencies NOT checked"
        else:
            message = f"pip-audit failed (exit {returncode}: {_last_line(stderr)}): dependencies NOT checked"
        return Verdict(EXIT_NOT_CHECKED, [f"audit deps: {message}"])
    try:
        report = parse_pip_audit_report(report_text)
    except (json.JSONDecodeError, AttributeError, TypeError) as exc:
        return Verdict(EXIT_NOT_CHECKED, [f"audit deps: unreadable pip-audit report ({exc}): dependencies NOT checked"])
    if report.checked == 0:
        if report.skipped:
            first, why = next(iter(report.skipped.items()))
            reason = f"no lookup of {len(report.skipped)} succeeded; the first, {first}: {why}"
        else:
            reason = "the report lists no package"
        return Verdict(
            EXIT_NOT_CHECKED,
            [
                f"audit deps: the vulnerability database answered for no package ({where}: {reason}): "
                "dependencies NOT checked"
            ],
        )
    lines: list[str] = []
    for vuln in report.vulnerabilities:
        aliases = f" ({', '.join(vuln.aliases)})" if vuln.aliases else ""
        fixed = f"fixed in {', '.join(vuln.fix_versions)}" if vuln.fix_versions else "no fixed version yet"
        summary = vuln.description if len(vuln.description) <= 160 else vuln.description[:157] + "..."
        lines.append(f"  {vuln.package} {vuln.version}: {vuln.id}{aliases}, {fixed}: {summary}")
    skipped = sorted(report.skipped.items())
    for package, why in skipped[:MAX_SKIPPED_SHOWN]:
        lines.append(f"  {package}: NOT checked: {why}")
    if len(skipped) > MAX_SKIPPED_SHOWN:
        lines.append(f"  ... and {len(skipped) - MAX_SKIPPED_SHOWN} more NOT checked")
    not_checked = f"; {len(skipped)} package(s) NOT checked" if skipped else ""
    if report.vulnerabilities:
        packages = len({vuln.package for vuln in report.vulnerabilities})
        count = len(report.vulnerabilities)
        lines.append(
            f"audit deps: FAILED: {count} known vulnerabilit{'y' if count == 1 else 'ies'} in {packages} package(s) "
            f"({where}{not_checked}); raise the pins in pyproject.toml and requirements.lock"
        )
        return Verdict(EXIT_FINDINGS, lines)
    if skipped:
        lines.append(
            f"audit deps: {len(skipped)} package(s) NOT checked ({where}); the other {report.checked} have no "
            "known vulnerability"
        )
        return Verdict(EXIT_NOT_CHECKED, lines)
    lines.append(f"audit deps: OK: no known vulnerability in {report.checked} packages ({where})")
    return Verdict(EXIT_OK, lines)


def run_pip_audit(requirements: Path, service: str, osv_url: str, timeout: float) -> Verdict:
    """pip-audit on a fully pinned requirements file: no resolution, no pip, one lookup per package."""
    database, service_url = ("OSV", osv_url) if service == "osv" else ("PyPI", PYPI_URL)
    try:
        _version("pip-audit")
    except NotChecked as exc:
        return Verdict(EXIT_NOT_CHECKED, [f"audit deps: {exc}: dependencies NOT checked"])
    if not requirements.is_file():
        return Verdict(EXIT_NOT_CHECKED, [f"audit deps: no file {requirements}: dependencies NOT checked"])
    with tempfile.TemporaryDirectory(prefix="oms-pip-audit-") as folder:
        output = Path(folder) / "pip-audit.json"
        # --no-deps --disable-pip: requirements.lock pins every package, so nothing is resolved or installed.
        command = [sys.executable, "-m", "pip_audit", "-r", str(requirements), "--no-deps", "--disable-pip"]
        command += ["--vulnerability-service", service, "--format", "json", "--output", str(output)]
        command += ["--progress-spinner", "off", "--timeout", str(max(1, round(timeout)))]
        if service == "osv":
            command += ["--osv-url", osv_url]
        try:
            # B603: this interpreter's pip-audit with our own arguments, no shell.
            done = subprocess.run(  # nosec B603
                command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=PIP_AUDIT_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            reason = f"no result in {PIP_AUDIT_TIMEOUT_S:.0f} s"
            message = f"could not reach the vulnerability database ({database} at {service_url}: {reason})"
            return Verdict(EXIT_NOT_CHECKED, [f"audit deps: {message}: dependencies NOT checked"])
        report_text = output.read_text() if output.exists() else None
        return judge_deps(done.returncode, report_text, done.stderr, database, service_url)


def audit_deps(requirements: Path, service: str, osv_url: str, timeout: float) -> int:
    """``./oms audit deps``: print the verdict; the exit code of the module docstring."""
    database = f"OSV ({osv_url})" if service == "osv" else f"PyPI's JSON API ({PYPI_URL})"
    print(f"audit deps: checking {_display(requirements)} against {database} ...", flush=True)
    verdict = run_pip_audit(requirements, service, osv_url, timeout)
    stream = sys.stdout if verdict.code == EXIT_OK else sys.stderr
    for line in verdict.lines:
        print(line, file=stream)
    return verdict.code


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


# ---- audit verify: tools/audit_chain.py -------------------------------------------------------------------

CHAIN_MODULE = "tools.audit_chain"


def audit_verify(argv: list[str]) -> int:
    """``./oms audit verify ...``: handed whole to ``tools.audit_chain.main``."""
    try:
        module = importlib.import_module(CHAIN_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != CHAIN_MODULE:
            raise  # the module exists but something it imports is missing: show the real error
        print(
            f"oms audit verify: not available yet ({CHAIN_MODULE} does not exist): the order_events chains were "
            "NOT verified",
            file=sys.stderr,
        )
        return EXIT_USAGE
    result: int = module.main(argv)
    return result


# ---- the command line -------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oms audit",
        description="Security checks. Exit 0 clean, 1 findings, 2 usage, 3 NOT checked (never a silent pass).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{code,deps,verify}")
    sub = commands.add_parser(
        "code",
        help="bandit on the code (.bandit); fails on a HIGH severity finding at MEDIUM or HIGH confidence",
        description="bandit with .bandit's settings; lists every finding, fails on HIGH severity at MEDIUM or "
        "HIGH confidence. Works offline. CI runs it.",
    )
    sub.add_argument("paths", nargs="*", help="files or folders to scan instead of .bandit's targets")
    sub = commands.add_parser(
        "deps",
        help="pip-audit on requirements.lock (needs the network; says so when it cannot check)",
        description="pip-audit on the pinned packages. Exit 1 on any known vulnerability, 3 when the "
        "vulnerability database cannot be reached (nothing was checked).",
    )
    sub.add_argument("--requirements", type=Path, default=REQUIREMENTS, help="a fully pinned requirements file")
    sub.add_argument(
        "--service", choices=("osv", "pypi"), default="osv", help="the vulnerability database (default: osv)"
    )
    sub.add_argument(
        "--osv-url", default=OSV_URL, help=f"the OSV query API, e.g. a mirror inside the network (default: {OSV_URL})"
    )
    sub.add_argument("--timeout", type=float, default=15.0, help="seconds to wait on each request (default 15)")
    commands.add_parser(
        "verify",
        help="walk the order_events hash chains: verify [--order ID] (./oms audit verify --help)",
        add_help=False,
    )
    return parser


def main(argv: list[str]) -> int:
    """``./oms audit code | deps | verify``."""
    if argv and argv[0] == "verify":
        return audit_verify(argv[1:])  # its own parser: its options are tools/audit_chain.py's
    args = _parser().parse_args(argv)
    if args.command == "code":
        return audit_code(args.paths)
    return audit_deps(args.requirements, args.service, args.osv_url, args.timeout)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
