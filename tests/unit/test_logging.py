"""Logs: JSON lines with an ISO 8601 UTC ``ts``, gunicorn's lines in JSON too, and files that rotate by size."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from common.logging import configure_logging, json_handler, log_context
from common.settings import REPO_ROOT
from common.store.orders_repo import _log_state_change
from tools import supervise
from tools.processes import ProcessSpec, Running, Supervisor, rotate_log


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _assert_iso_utc(ts: str) -> None:
    from datetime import datetime

    # e.g. 2026-11-30T09:30:00.123+00:00: date, time to the millisecond, an explicit UTC offset.
    assert len(ts) == len("2026-11-30T09:30:00.123+00:00"), ts
    parsed = datetime.fromisoformat(ts)
    assert parsed.utcoffset() == timedelta(0), ts
    assert ts.endswith("+00:00") and "T" in ts


def test_lines_are_json_with_an_iso_utc_timestamp_and_the_context(
    root_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging("oms.test", "INFO")
    log = logging.getLogger("oms.test.module")
    with log_context(order_id="ORD-1", message_id="m-1", correlation_id="c-1"):
        log.info("order state changed", extra={"from_state": "NEW", "to_state": "APPROVED"})
    log.debug("not at INFO")
    (line,) = _lines(stream)
    _assert_iso_utc(line["ts"])
    assert line["level"] == "INFO"
    assert line["service"] == "oms.test"
    assert line["logger"] == "oms.test.module"
    assert line["message"] == "order state changed"
    assert (line["order_id"], line["message_id"], line["correlation_id"]) == ("ORD-1", "m-1", "c-1")
    assert (line["from_state"], line["to_state"]) == ("NEW", "APPROVED")


def test_the_order_state_change_line_carries_the_ids(root_logging: None) -> None:
    stream = io.StringIO()
    logging.getLogger().handlers[:] = [json_handler("oms.test", stream)]
    logging.getLogger().setLevel(logging.DEBUG)
    order = SimpleNamespace(id="ORD-2", state=SimpleNamespace(value="FILLED"), status=SimpleNamespace(value="FILLED"))
    _log_state_change(order, "PARTIALLY_FILLED", "corr-2", "msg-2")  # type: ignore[arg-type]
    (line,) = _lines(stream)
    assert line["message"] == "order state changed"
    expected = {
        "order_id": "ORD-2",
        "from_state": "PARTIALLY_FILLED",
        "to_state": "FILLED",
        "status": "FILLED",
        "message_id": "msg-2",
        "correlation_id": "corr-2",
    }
    assert {k: line[k] for k in expected} == expected


def test_gunicorn_logs_json_lines_for_itself_and_for_each_request(
    root_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gunicorn.config import Config

    from services.api.__main__ import _json_logger_class

    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    cfg = Config()
    cfg.set("accesslog", "-")
    cfg.set("loglevel", "info")
    logger = _json_logger_class()(cfg)
    logger.info("Booting worker with pid: %s", 42)
    response = SimpleNamespace(status="201 CREATED", sent=123, headers=[])
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/orders",
        "QUERY_STRING": "",
        "RAW_URI": "/orders",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_USER_AGENT": "test",
    }
    logger.access(response, SimpleNamespace(headers=[]), environ, timedelta(milliseconds=12))
    (own,) = _lines(err)
    assert own["message"] == "Booting worker with pid: 42" and own["logger"] == "gunicorn.error"
    _assert_iso_utc(own["ts"])
    (access,) = _lines(out)
    assert access["message"] == "request" and access["logger"] == "gunicorn.access"
    assert (access["method"], access["path"], access["status"], access["bytes"]) == ("POST", "/orders", 201, 123)
    assert access["ms"] == 12.0
    _assert_iso_utc(access["ts"])


def test_the_supervisor_stamps_its_own_lines_in_iso_utc(capsys: pytest.CaptureFixture[str]) -> None:
    supervise._timestamped("hello")
    line = json.loads(capsys.readouterr().out)
    _assert_iso_utc(line["ts"])


# ---- rotation ------------------------------------------------------------------------------------------------


def test_rotate_log_keeps_a_bounded_number_of_copies(tmp_path: Path) -> None:
    log = tmp_path / "stage.log"
    for round_ in range(4):
        log.write_text(f"round {round_}\n" * 100)
        assert rotate_log(log, max_bytes=500, backups=2, in_use=False)
        assert not log.exists()
    assert (tmp_path / "stage.log.1").read_text().startswith("round 3")
    assert (tmp_path / "stage.log.2").read_text().startswith("round 2")
    assert not (tmp_path / "stage.log.3").exists()
    log.write_text("small\n")
    assert not rotate_log(log, max_bytes=500, backups=2)


def test_copytruncate_lets_the_writer_go_on_at_the_start_of_the_file(tmp_path: Path) -> None:
    log = tmp_path / "api.log"
    with log.open("ab") as writer:  # as the supervisor opens a child's output: appending
        writer.write(b"x" * 1000 + b"\n")
        writer.flush()
        assert rotate_log(log, max_bytes=500, backups=3, in_use=True)
        assert log.stat().st_size == 0
        writer.write(b"after\n")
        writer.flush()
    assert log.read_bytes() == b"after\n"  # no hole of NULs where the old content was
    assert (tmp_path / "api.log.1").read_bytes() == b"x" * 1000 + b"\n"


def test_the_supervisor_rotates_logs_at_restart_and_while_running(tmp_path: Path) -> None:
    supervisor = Supervisor({}, tmp_path / "logs", REPO_ROOT, log_max_bytes=2000, log_backups=2)
    log_path = tmp_path / "logs" / "chatty.log"
    log_path.write_bytes(b"z" * 5000)  # a large log of an earlier run: renamed before the process starts
    crasher = supervisor.start(ProcessSpec("chatty", "tools.no_such_module_for_the_test"))
    crasher.popen.wait(timeout=30)
    crasher.log_file.close()
    assert (tmp_path / "logs" / "chatty.log.1").read_bytes() == b"z" * 5000
    assert b"No module named" in log_path.read_bytes()

    # A running child writing a line every few milliseconds through the file the supervisor opened for it.
    script = "import time\nwhile True:\n    print('y' * 99, flush=True)\n    time.sleep(0.002)\n"
    out = log_path.open("ab")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=out)
    supervisor.running["chatty"] = Running(ProcessSpec("chatty", "-c"), child, log_path, out)
    try:
        deadline = time.monotonic() + 10
        while log_path.stat().st_size < 2000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert supervisor.rotate_logs() == [log_path]
        assert (tmp_path / "logs" / "chatty.log.1").stat().st_size >= 2000
        assert (tmp_path / "logs" / "chatty.log.2").read_bytes() == b"z" * 5000
        time.sleep(0.2)
        text = log_path.read_bytes()
        assert text and b"\0" not in text  # the child goes on, from the start of the emptied file
        assert text.startswith(b"y" * 99 + b"\n") or text.startswith(b"y")
    finally:
        child.kill()
        child.wait()
        out.close()
