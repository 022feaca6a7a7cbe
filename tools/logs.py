"""``oms logs PROCESS [-n N] [-f]``: the end of a supervised process's log, and optionally what follows.

``./oms up`` (and its detached supervisor) writes each process's output to ``<data dir>/logs/<process>.log``
(``OMS_DATA_DIR``, default ``.data``); the supervisor's own is ``supervisor.log``. ``-f`` keeps printing what is
appended, polling the file, until Ctrl-C (which ends it normally, exit 0); a log that is truncated or replaced
by rotation meanwhile is read again from its start. An unknown process lists the logs there are, exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import BinaryIO

from common.settings import load_settings

POLL_SECONDS = 0.25
_BLOCK = 64 * 1024


def non_negative_int(text: str) -> int:
    """argparse ``type=`` for a line count."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the number of lines must be 0 or more")
    return value


def log_dir() -> Path:
    """Where the supervisor writes the logs."""
    return load_settings().infra.data_dir / "logs"


def available(directory: Path) -> list[str]:
    """The processes that have a log in ``directory``."""
    if not directory.is_dir():
        return []
    return sorted(path.stem for path in directory.glob("*.log") if path.is_file())


def last_lines(handle: BinaryIO, count: int) -> bytes:
    """The last ``count`` lines of an open file (read backwards by blocks: a log may be large); leaves the
    file positioned at its end."""
    end = handle.seek(0, os.SEEK_END)
    if count == 0:
        return b""
    position, data = end, b""
    # One newline more than lines wanted, unless the file ends without one (a line being written).
    while position > 0 and data.count(b"\n") <= count:
        step = min(_BLOCK, position)
        position -= step
        handle.seek(position)
        data = handle.read(step) + data
    handle.seek(end)
    lines = data.splitlines(keepends=True)
    return b"".join(lines[-count:])


def _write(data: bytes) -> None:
    out = sys.stdout.buffer
    view = memoryview(data)
    # A large write to a pipe can be partial, the rest dropped, when the reader goes away during it (the error
    # then shows on the next write): write until all is taken, so a closed pipe surfaces as BrokenPipeError.
    while view:
        written = out.write(view)
        view = view[written:]
    out.flush()


def _replaced(path: Path, handle: BinaryIO) -> bool:
    """Whether ``path`` now names another file than the one open (rotation moved it) or none at all."""
    try:
        now = path.stat()
    except FileNotFoundError:
        return False  # between a rotation's rename and the new file: keep reading the old one
    opened = os.fstat(handle.fileno())
    return (now.st_ino, now.st_dev) != (opened.st_ino, opened.st_dev)


def follow(path: Path, handle: BinaryIO, stop_after: float | None = None) -> None:
    """Print what is appended to ``path`` after ``handle``'s position until Ctrl-C (or ``stop_after`` seconds,
    for tests). ``handle`` stays the caller's to close; a file opened after a rotation is closed here."""
    deadline = None if stop_after is None else time.monotonic() + stop_after
    current = handle
    try:
        while deadline is None or time.monotonic() < deadline:
            chunk = current.read(_BLOCK)
            if chunk:
                _write(chunk)
                continue
            if _replaced(path, current):
                if current is not handle:
                    current.close()
                current = path.open("rb")  # the new file from its start: nothing written to it is skipped
                continue
            if os.fstat(current.fileno()).st_size < current.tell():
                current.seek(0)  # truncated in place
                continue
            time.sleep(POLL_SECONDS)  # polling the file for more, until Ctrl-C
    finally:
        if current is not handle:
            current.close()


def main(argv: list[str]) -> int:
    """Entry point of ``oms logs``."""
    parser = argparse.ArgumentParser(
        prog="oms logs", description="the end of a supervised process's log (<data dir>/logs/<process>.log)"
    )
    parser.add_argument("process", help="a process `./oms ps` lists (intake, router, api...) or supervisor")
    parser.add_argument("-n", "--lines", type=non_negative_int, default=20, help="lines to print first (20)")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing what is appended; Ctrl-C ends")
    args = parser.parse_args(argv)
    directory = log_dir()
    path = directory / f"{args.process}.log"
    names = available(directory)
    if args.process not in names:
        listing = ", ".join(names) if names else f"none yet (./oms up writes them to {directory})"
        print(f"oms logs: no log for process {args.process!r}; available: {listing}", file=sys.stderr)
        return 2
    with path.open("rb") as handle:
        _write(last_lines(handle, args.lines))
        if args.follow:
            try:
                follow(path, handle)
            except KeyboardInterrupt:
                pass  # Ctrl-C is how -f is meant to end
    return 0
