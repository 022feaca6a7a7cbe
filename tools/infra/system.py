"""The operating-system plumbing both servers share: commands, service users, owned files, ports, waiting."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from tools.infra.settings import HOST, InfraError


def print_progress(message: str) -> None:
    """One progress line on stdout."""
    # Flushed: progress lines must stay in order with the summary that follows them.
    print(message, flush=True)


def is_root() -> bool:
    """Whether we run as root (the servers then run as their own users)."""
    return os.geteuid() == 0


def user_exists(user: str) -> bool:
    """Whether the OS knows ``user``."""
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def as_user(user: str, cmd: Sequence[str]) -> list[str]:
    """Run ``cmd`` as ``user`` when we are root (servers refuse root); as ourselves otherwise."""
    if not is_root():
        return list(cmd)
    return ["runuser", "-u", user, "--", *cmd]


def run(
    cmd: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` to the end, output captured; InfraError on a timeout, or on failure when ``check``."""
    try:
        # B603: an argv list, no shell; the callers pass the server programs and arguments of tools/infra.
        result = subprocess.run(  # nosec B603
            list(cmd),
            env=dict(env) if env is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise InfraError(f"timed out after {timeout:.0f}s: {' '.join(cmd)}") from exc
    if check and result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise InfraError(f"command failed (exit {result.returncode}): {' '.join(cmd)}\n{output}")
    return result


def prepare_dir(path: Path, owner: str | None) -> None:
    """Make the folder ``path``, owned by ``owner`` when we are root."""
    path.mkdir(parents=True, exist_ok=True)
    if owner and is_root():
        shutil.chown(path, owner, owner)


def write_owned(path: Path, text: str, owner: str | None) -> None:
    """Write ``text`` to ``path`` unless it holds it already, owned by ``owner`` when we are root."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    if owner and is_root():
        shutil.chown(path, owner, owner)


def port_open(port: int, host: str = HOST) -> bool:
    """Whether something accepts TCP connections on ``port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def pid_alive(pid_file: Path, program: str) -> int | None:
    """The pid in ``pid_file`` when that process is alive and runs ``program``, else None."""
    try:
        pid = int(pid_file.read_text().split()[0])
        proc = Path("/proc") / str(pid)
        # A zombie still "exists" for kill(pid, 0) and machines without an init never reap it; a stale pid
        # file may name a process that reused the pid. /proc tells both apart.
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return pid if state != "Z" and program.encode() in cmdline else None


def tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of ``path``, indented; empty when it cannot be read."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


def wait_until(
    ready: Callable[[], bool],
    *,
    what: str,
    deadline: float,
    log: Path,
    failed: Callable[[], str | None] = lambda: None,
) -> None:
    """Poll ``ready`` until it holds; stop early when ``failed`` names a reason, else at the deadline."""
    interval = 0.1
    while True:
        if ready():
            return
        reason = failed()
        if reason is None and time.monotonic() >= deadline:
            reason = "not ready before the deadline (OMS_INFRA_TIMEOUT)"
        if reason is not None:
            raise InfraError(f"{what}: {reason}\n  log: {log}\n{tail(log)}")
        time.sleep(interval)
        interval = min(interval * 1.5, 1.0)


def apt_install(package: str, why: str) -> None:
    """Install ``package`` with apt-get when we are root; otherwise InfraError saying how to."""
    if not is_root() or not shutil.which("apt-get"):
        raise InfraError(f"{why}: install it first, e.g. `sudo apt-get install -y {package}`")
    print_progress(f"infra: {why}; installing {package} with apt-get (about a minute)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-q"], env=env, timeout=600)
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", package], env=env, timeout=900)
