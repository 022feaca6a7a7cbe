"""A stand-in Risk Analysis Service for the tests: the contract of docs/risk-service.md on a local port.

It runs in a thread of the test process (``http.server``, a thread per request) and does what a test asks:
approve, reject some symbols, answer an error status, or hang (no answer until released); it can be stopped
and started again on the same port, as a service that goes away and comes back. It records every batch it is
asked about, and answers 401 to a request without the expected bearer token when it has one.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ASSESSMENTS_PATH = "/v1/assessments"
# A request the stub hangs on is released at stop at the latest, or after this long.
HANG_LIMIT_SECONDS = 30.0


@dataclass
class Behaviour:
    """What the stub answers."""

    reject_symbols: frozenset[str] = frozenset()
    status: int = 200  # anything else: that status, with no results
    hang: bool = False
    omit: frozenset[str] = frozenset()  # order ids left out of the answer (a contract breach)


@dataclass
class RiskServiceStub:
    """The stub; ``url`` is its base URL (give it to ``OMS_RISK_SERVICE_URL``)."""

    token: str | None = None
    port: int = 0
    behaviour: Behaviour = field(default_factory=Behaviour)
    batches: list[dict[str, Any]] = field(default_factory=list)
    auth_headers: list[str | None] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _released: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        """The base URL (the port stays the same across stop and start)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """Whether it listens now."""
        return self._server is not None

    def start(self) -> RiskServiceStub:
        """Listen (on the same port as before, if it ran already)."""
        if self._server is not None:
            return self
        self._released = threading.Event()
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler_for(self))
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        # A short poll interval: stop() returns within it (the default half second adds up over a test module).
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="risk-service-stub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and release any request it hangs on: from now on, connections are refused."""
        server, self._server = self._server, None
        if server is None:
            return
        self._released.set()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def answer(
        self,
        *,
        reject: Iterable[str] = (),
        status: int = 200,
        hang: bool = False,
        omit: Iterable[str] = (),
    ) -> None:
        """From now on: approve all but the ``reject`` symbols, or answer ``status``, or hang."""
        if not hang:
            self._released.set()  # whatever hangs now is let go
        else:
            self._released = threading.Event()
        self.behaviour = Behaviour(frozenset(reject), status, hang, frozenset(omit))

    def calls(self) -> int:
        """How many batches it was asked about (whatever it answered)."""
        with self._lock:
            return len(self.batches)

    def order_ids(self) -> list[str]:
        """Every order id it was asked about, in order."""
        with self._lock:
            return [item["orderId"] for batch in self.batches for item in batch.get("orders", [])]

    def _record(self, body: dict[str, Any], authorization: str | None) -> None:
        with self._lock:
            self.batches.append(body)
            self.auth_headers.append(authorization)


def _handler_for(stub: RiskServiceStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: one request per connection, so a stopped stub answers nothing on a kept-alive connection.
        protocol_version = "HTTP/1.0"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: the test output is the tests'
            return

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self.path != ASSESSMENTS_PATH:
                self._send(404, {"error": "not found"})
                return
            authorization = self.headers.get("Authorization")
            try:
                body = json.loads(raw)
            except ValueError:
                self._send(400, {"error": "not JSON"})
                return
            stub._record(body, authorization)
            if stub.token is not None and authorization != f"Bearer {stub.token}":
                self._send(401, {"error": "unauthorized"})
                return
            behaviour = stub.behaviour
            if behaviour.hang:
                stub._released.wait(HANG_LIMIT_SECONDS)
                with contextlib.suppress(OSError):  # the client gave up long ago
                    self._send(503, {"error": "released"})
                return
            if behaviour.status != 200:
                self._send(behaviour.status, {"error": f"status {behaviour.status} as asked"})
                return
            results = [
                _result(item, behaviour.reject_symbols)
                for item in body.get("orders", [])
                if item["orderId"] not in behaviour.omit
            ]
            self._send(200, {"results": results})

    return Handler


def _result(item: dict[str, Any], reject_symbols: frozenset[str]) -> dict[str, Any]:
    base = {"orderId": item["orderId"], "requestId": item.get("requestId")}
    if item["symbol"] in reject_symbols:
        return {**base, "decision": "REJECT", "reason": f"{item['symbol']} is on the stub's reject list"}
    return {**base, "decision": "APPROVE", "reason": None}


def free_port() -> int:
    """A port nothing listens on now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_stub(token: str | None = None) -> Iterator[RiskServiceStub]:
    """A started stub, stopped at the end."""
    stub = RiskServiceStub(token=token).start()
    try:
        yield stub
    finally:
        stub.stop()
