"""The ``oms`` command line's conventions: usage errors, exit codes, a closed pipe, --version, ``logs``."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import IO

import pytest

from common.settings import REPO_ROOT
from tests.support.polling import wait_until
from tools import cli, logs
from tools.decision import decimal_arg

# Nothing listens on port 1: connecting fails at once, as with a database that is down.
DEAD_DATABASE = "postgresql+psycopg://oms:oms@127.0.0.1:1/oms"


def run_oms(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``./oms ARGS`` as a process (through tools.cli, as ./oms hands over to it), with a deadline."""
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# ---- dispatch and exit codes ----------------------------------------------------------------------------


def test_help_lists_every_command_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["help"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert f"  {name} " in out


def test_an_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["no-such-command"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "unknown command 'no-such-command'" in err
    assert "usage: ./oms" in err


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == cli.EXIT_USAGE
    assert "usage: ./oms" in capsys.readouterr().err


def test_help_for_a_command_is_its_own_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["help", "order"])
    assert exit_info.value.code == 0
    assert "usage: oms order" in capsys.readouterr().out


@pytest.mark.parametrize("args", [["--version"], ["-V"], ["version"]])
def test_version_prints_the_package_version(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(args) == cli.EXIT_OK
    assert capsys.readouterr().out == f"oms {metadata.version('oms')}\n"


def test_version_matches_pyproject() -> None:
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert cli.DISTRIBUTION == project["name"]
    assert cli.project_version() == project["version"]


def test_a_bad_number_is_a_usage_error_not_a_traceback() -> None:
    result = run_oms("decision", "--account", "ACC-001", "--symbol", "AAPL", "--side", "BUY", "--quantity", "abc")
    assert result.returncode == cli.EXIT_USAGE
    assert "argument --quantity: 'abc' is not a number" in result.stderr
    assert "Traceback" not in result.stderr
    assert "InvalidOperation" not in result.stderr


@pytest.mark.parametrize("text", ["abc", "", "1e", "NaN", "Infinity", "-inf"])
def test_decimal_arg_refuses_what_is_not_a_finite_number(text: str) -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        decimal_arg(text)


def test_decimal_arg_keeps_the_exact_decimal() -> None:
    assert str(decimal_arg("100.10")) == "100.10"


@pytest.mark.parametrize(
    "args",
    [
        ["order"],
        ["order", "show"],
        ["order", "show", "x", "--bogus"],
        ["logs"],
        ["logs", "intake", "-n", "-3"],
        ["decision", "--account", "A", "--symbol", "S", "--side", "BUY", "--quantity", "1", "--wait", "--timeout", "0"],
        ["check", "--settle", "soon"],
    ],
)
def test_argparse_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == cli.EXIT_USAGE
    assert "usage:" in capsys.readouterr().err


def test_a_runtime_failure_exits_1_with_one_line_not_a_traceback() -> None:
    result = run_oms("order", "show", "00000000-0000-0000-0000-000000000000", "--url", DEAD_DATABASE)
    assert result.returncode == cli.EXIT_FAILURE
    assert "oms order: OperationalError" in result.stderr
    assert "Traceback" not in result.stderr


def test_oms_debug_shows_the_traceback() -> None:
    result = run_oms("order", "show", "x", "--url", DEAD_DATABASE, env={"OMS_DEBUG": "1"})
    assert result.returncode == 1
    assert "Traceback" in result.stderr


def test_a_closed_pipe_ends_quietly_with_141() -> None:
    # The reader is gone before the first write: every write fails with EPIPE (Python ignores SIGPIPE, so it
    # is a BrokenPipeError), as for `./oms help | head -3` once head has exited.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "tools.cli", "help"],
            cwd=REPO_ROOT,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert result.returncode == cli.EXIT_BROKEN_PIPE
    assert result.stderr == ""


def test_a_pipe_closed_after_the_first_lines_ends_quietly(tmp_path: Path) -> None:
    # The real shell case: more output than a pipe buffer holds, and a reader that stops after three lines.
    script = f"{sys.executable} -m tools.cli logs big -n 100000 | head -3"
    result = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {script}"],
        cwd=REPO_ROOT,
        env={**os.environ, "OMS_DATA_DIR": str(_big_log_dir(tmp_path))},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stdout.splitlines() == ["line 0", "line 1", "line 2"]
    assert result.stderr == ""
    assert result.returncode == cli.EXIT_BROKEN_PIPE


def _big_log_dir(directory: Path) -> Path:
    (directory / "logs").mkdir()
    (directory / "logs" / "big.log").write_text("".join(f"line {n}\n" for n in range(100_000)))
    return directory


# ---- oms logs ------------------------------------------------------------------------------------------


@pytest.fixture()
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "intake.log").write_text("".join(f"intake {n}\n" for n in range(50)))
    (tmp_path / "logs" / "router.log").write_text("router 0\n")
    monkeypatch.setenv("OMS_DATA_DIR", str(tmp_path))
    return tmp_path


def test_logs_prints_the_last_lines(data_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["logs", "intake", "-n", "3"]) == 0
    assert capfd.readouterr().out == "intake 47\nintake 48\nintake 49\n"


def test_logs_prints_20_lines_by_default(data_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["logs", "intake"]) == 0
    assert capfd.readouterr().out.splitlines() == [f"intake {n}" for n in range(30, 50)]


def test_logs_of_an_unknown_process_lists_the_available_ones(data_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["logs", "nope"]) == cli.EXIT_USAGE
    assert "no log for process 'nope'; available: intake, router" in capfd.readouterr().err


@pytest.mark.parametrize(
    ("content", "count", "expected"),
    [
        (b"", 5, b""),
        (b"a\nb\n", 5, b"a\nb\n"),
        (b"a\nb\nc", 2, b"b\nc"),  # the last line is still being written
        (b"a\nb\nc\n", 0, b""),
        (b"x" * 200_000 + b"\nlast\n", 1, b"last\n"),  # across read blocks
    ],
)
def test_last_lines(tmp_path: Path, content: bytes, count: int, expected: bytes) -> None:
    path = tmp_path / "p.log"
    path.write_bytes(content)
    with path.open("rb") as handle:
        assert logs.last_lines(handle, count) == expected
        assert handle.tell() == len(content)


def _lines_of(stream: IO[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _drain(lines: queue.Queue[str], seen: list[str]) -> list[str]:
    while True:
        try:
            seen.append(lines.get_nowait())
        except queue.Empty:
            return seen


@pytest.fixture()
def following(data_dir: Path) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str]]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tools.cli", "logs", "router", "-n", "5", "-f"],
        cwd=REPO_ROOT,
        env={**os.environ, "OMS_DATA_DIR": str(data_dir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    try:
        yield process, _lines_of(process.stdout)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def test_logs_follow_prints_what_is_appended_through_rotation_until_ctrl_c(
    data_dir: Path, following: tuple[subprocess.Popen[str], queue.Queue[str]]
) -> None:
    process, lines = following
    log = data_dir / "logs" / "router.log"
    seen: list[str] = []
    wait_until(lambda: _drain(lines, seen) == ["router 0"], timeout=30, message="the existing line")

    with log.open("a") as handle:
        handle.write("router 1\nrouter 2\n")
    wait_until(lambda: _drain(lines, seen)[-1:] == ["router 2"], timeout=60, message="appended lines")

    # copytruncate (tools/processes.py rotate_log): the file is emptied in place and written from its start.
    os.truncate(log, 0)
    with log.open("a") as handle:
        handle.write("after truncation\n")
    wait_until(lambda: _drain(lines, seen)[-1:] == ["after truncation"], timeout=60, message="after truncation")

    # A rotation that renames: the new file is read from its start.
    log.rename(log.with_name("router.log.1"))
    log.write_text("new file\n")
    wait_until(lambda: _drain(lines, seen)[-1:] == ["new file"], timeout=60, message="the new file")

    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=10) == 0
    assert seen == ["router 0", "router 1", "router 2", "after truncation", "new file"]
    assert process.stderr is not None and "Traceback" not in process.stderr.read()
