"""Client of the platform's Risk Analysis Service: one call per batch, a timeout, retries, a circuit breaker.

The contract is docs/risk-service.md: ``POST <url>/v1/assessments`` with the batch's orders, answered with one
``APPROVE`` or ``REJECT`` per order. ``RiskServiceClient.assess`` never raises: whatever goes wrong (refused,
timed out, an error status, an answer that breaks the contract, the breaker open) becomes ``Assessments`` that
approve nothing, with the reason, so the gate fails closed.

- Timeout: ``OMS_RISK_SERVICE_TIMEOUT_SECONDS`` for the connect and for each read (requests' timeouts).
- Retries (tenacity): only transient failures (refused or dropped connections, timeouts, 408, 429, 5xx), up to
  ``OMS_RISK_SERVICE_RETRIES`` more attempts with exponential back-off and jitter. A 4xx or an answer that breaks
  the contract is not retried: asking again would get the same.
- Circuit breaker (pybreaker): a batch whose call failed after its retries is one failure; after
  ``OMS_RISK_SERVICE_BREAKER_FAILURES`` in a row the breaker opens and batches are rejected at once, without a
  call, for ``OMS_RISK_SERVICE_BREAKER_RESET_SECONDS``; the next batch is then the trial call, which closes it
  (or opens it again). Each transition sets ``oms_risk_service_breaker_state``, counts in
  ``oms_risk_service_breaker_transitions_total`` and writes one JSON log line.

The worst a failing batch costs before the breaker opens is ``(retries + 1) * timeout`` plus the back-off.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import msgspec
import pybreaker
import requests
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from common import jsonutil
from common.domain.validation import plain
from common.metrics import (
    RISK_SERVICE_BREAKER_STATE,
    RISK_SERVICE_BREAKER_TRANSITIONS,
    RISK_SERVICE_CALLS,
    RISK_SERVICE_SECONDS,
)
from common.settings import ConfigurationError, RiskSettings

log = logging.getLogger(__name__)

ASSESSMENTS_PATH = "/v1/assessments"
APPROVE = "APPROVE"
REJECT = "REJECT"
BREAKER_NAME = "risk_service"
STATE_VALUES = {pybreaker.STATE_CLOSED: 0, pybreaker.STATE_HALF_OPEN: 1, pybreaker.STATE_OPEN: 2}
# Statuses worth asking again: the service is overloaded, restarting or behind a proxy that lost it.
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# The most of a service's reason kept: it is stored with the order and shown to the user.
MAX_REASON = 300
# The largest answer read (a batch of 200 results is a few tens of KiB).
MAX_ANSWER_BYTES = 1024 * 1024

Key = tuple[str, str | None]  # (order id, request id): the request id of a replace, None for a new order


@dataclass(frozen=True)
class RiskServiceConfig:
    """How to reach the service and how patient to be (from the ``risk`` settings)."""

    url: str
    timeout_seconds: float = 0.5
    retries: int = 2
    breaker_failures: int = 3
    breaker_reset_seconds: float = 10.0
    token: str | None = field(default=None, repr=False)
    # Back-off between retries: exponential from ``backoff_initial`` with jitter, at most ``backoff_max``.
    backoff_initial: float = 0.05
    backoff_max: float = 1.0
    # The CA that an https service's certificate is checked against (OMS_TLS_CA_FILE); None: the system's.
    ca_file: Path | None = None

    @property
    def assessments_url(self) -> str:
        """Where a batch is posted."""
        return self.url.rstrip("/") + ASSESSMENTS_PATH

    @classmethod
    def of(cls, risk: RiskSettings, ca_file: Path | None = None) -> RiskServiceConfig:
        """From the settings; the token is read from ``OMS_RISK_SERVICE_TOKEN_FILE`` now (at start-up), and a
        file that cannot be read or is empty stops the start (``ConfigurationError``)."""
        return cls(
            ca_file=ca_file,
            url=risk.service_url,
            timeout_seconds=risk.service_timeout_seconds,
            retries=risk.service_retries,
            breaker_failures=risk.service_breaker_failures,
            breaker_reset_seconds=risk.service_breaker_reset_seconds,
            token=read_token(risk.service_token_file) if risk.service_token_file is not None else None,
        )


def read_token(path: Path) -> str:
    """The bearer token in ``path`` (surrounding whitespace dropped)."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigurationError(f"OMS_RISK_SERVICE_TOKEN_FILE: cannot read {path}: {exc.strerror}") from None
    if not token:
        raise ConfigurationError(f"OMS_RISK_SERVICE_TOKEN_FILE: {path} is empty")
    return token


# --------------------------------------------------------------------------- the contract's data


@dataclass(frozen=True, slots=True)
class AssessmentItem:
    """One order (or the new terms of a replace) as the service sees it."""

    order_id: str
    request_id: str | None
    account_id: str
    symbol: str
    side: str
    type: str
    quantity: Decimal
    price: Decimal | None
    notional: Decimal | None

    @property
    def key(self) -> Key:
        """What the answer's result is matched by."""
        return (self.order_id, self.request_id)

    def as_json(self) -> dict[str, Any]:
        """The item as the contract writes it (decimals as strings: no float anywhere)."""
        return {
            "orderId": self.order_id,
            "requestId": self.request_id,
            "accountId": self.account_id,
            "symbol": self.symbol,
            "side": self.side,
            "type": self.type,
            "quantity": plain(self.quantity),
            "price": None if self.price is None else plain(self.price),
            "notional": None if self.notional is None else plain(self.notional),
        }


def notional_of(quantity: Decimal, *prices: Decimal | None) -> Decimal | None:
    """Quantity times the first known price (limit, else stop, else reference); None when none is known."""
    for price in prices:
        if price is not None:
            return quantity * price
    return None


@dataclass(frozen=True, slots=True)
class Verdict:
    """The service's answer about one order, or why there is none (``unavailable``)."""

    approved: bool
    reason: str
    unavailable: bool = False


@dataclass(frozen=True)
class Assessments:
    """The answers for one batch: a verdict per item, or one reason that applies to every item."""

    verdicts: Mapping[Key, Verdict] = field(default_factory=dict)
    unavailable: str | None = None

    def verdict(self, key: Key) -> Verdict | None:
        """The verdict on ``key``; when the service could not be asked, a refusal saying why; None when the
        batch did not hold it."""
        if self.unavailable is not None:
            return Verdict(False, self.unavailable, unavailable=True)
        return self.verdicts.get(key)


def unavailable_reason(why: str) -> str:
    """The rejection reason while the service cannot answer."""
    return f"risk analysis service unavailable: {why}"


CIRCUIT_OPEN = unavailable_reason("circuit open")


def _clean(text: str) -> str:
    # The reason is stored in a text column and shown to users: printable characters only (a NUL fails the
    # transaction), and short.
    return "".join(ch for ch in text if ch.isprintable())[:MAX_REASON]


# --------------------------------------------------------------------------- errors


class RiskServiceError(Exception):
    """A call that got no usable answer; ``str`` is the short reason given to the orders."""


class TransientError(RiskServiceError):
    """A failure that may pass: worth another attempt."""


class _Result(msgspec.Struct):
    # camelCase: the contract's names.
    orderId: str
    decision: Literal["APPROVE", "REJECT"]
    requestId: str | None = None
    reason: str | None = None


class _Answer(msgspec.Struct):
    results: list[_Result]


# Typed decoding checks the answer's shape as it parses (unknown fields are ignored): a few microseconds a
# result, where parsing to plain objects and checking them after cost ten times that.
_DECODER = msgspec.json.Decoder(_Answer)


def _answer_of(response: requests.Response, keys: Iterable[Key]) -> dict[Key, Verdict]:
    """The verdicts of a 200 answer; ``RiskServiceError`` when it breaks the contract."""
    content = response.content
    if len(content) > MAX_ANSWER_BYTES:
        raise RiskServiceError(f"invalid answer: larger than {MAX_ANSWER_BYTES} bytes")
    try:
        answer = _DECODER.decode(content)
    except msgspec.ValidationError as exc:
        raise RiskServiceError(f"invalid answer: {str(exc)[:200]}") from None
    except (msgspec.DecodeError, RecursionError):  # not JSON, or nested past what the parser takes
        raise RiskServiceError("invalid answer: not JSON") from None
    verdicts: dict[Key, Verdict] = {}
    for result in answer.results:
        text = _clean(result.reason) if result.reason else ""
        if result.decision == APPROVE:
            verdicts[(result.orderId, result.requestId)] = Verdict(True, text)
        else:
            verdicts[(result.orderId, result.requestId)] = Verdict(False, text or "no reason given")
    missing = [key for key in keys if key not in verdicts]
    if missing:
        raise RiskServiceError(f"invalid answer: no result for {len(missing)} of the orders (first {missing[0][0]})")
    return verdicts


# --------------------------------------------------------------------------- the breaker made observable


class BreakerObserver(pybreaker.CircuitBreakerListener):
    """Sets the state gauge, counts each transition and logs it as one JSON line."""

    def __init__(self, config: RiskServiceConfig) -> None:
        self.config = config

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        """One transition: metric, counter, log line."""
        before = old_state.name if old_state is not None else "none"
        after = new_state.name
        RISK_SERVICE_BREAKER_STATE.set(STATE_VALUES[after])
        RISK_SERVICE_BREAKER_TRANSITIONS.labels(before, after).inc()
        level = logging.WARNING if after == pybreaker.STATE_OPEN else logging.INFO
        log.log(
            level,
            f"risk analysis service circuit breaker {after}",
            extra={
                "breaker": cb.name,
                "from_state": before,
                "to_state": after,
                "failures": cb.fail_counter,
                "reset_seconds": cb.reset_timeout,
                "url": self.config.assessments_url,
            },
        )


# --------------------------------------------------------------------------- the client


class RiskServiceClient:
    """Asks the service about a batch; thread-safe enough for the stage (one batch at a time per process)."""

    def __init__(
        self,
        config: RiskServiceConfig,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.session = session or requests.Session()
        # Proxies, .netrc and CA bundles come from the configuration, not from whatever the environment holds.
        self.session.trust_env = False
        if config.ca_file is not None:
            self.session.verify = str(config.ca_file)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if config.token is not None:
            headers["Authorization"] = f"Bearer {config.token}"
        self._headers = headers
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=config.breaker_failures,
            reset_timeout=config.breaker_reset_seconds,
            name=BREAKER_NAME,
            listeners=[BreakerObserver(config)],
            # The call that trips the breaker keeps its own error (refused, timed out...) as its reason.
            throw_new_error_on_trip=False,
        )
        self._retrying = Retrying(
            stop=stop_after_attempt(config.retries + 1),
            wait=wait_exponential_jitter(multiplier=config.backoff_initial, max=config.backoff_max, jitter=0.05),
            retry=retry_if_exception_type(TransientError),
            reraise=True,
            sleep=sleep,
            before_sleep=self._log_retry,
        )
        RISK_SERVICE_BREAKER_STATE.set(STATE_VALUES[pybreaker.STATE_CLOSED])

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open``."""
        return str(self.breaker.current_state)

    def close(self) -> None:
        """Release the pooled connections."""
        self.session.close()

    def assess(self, items: Sequence[AssessmentItem]) -> Assessments:
        """The service's verdicts on ``items`` in one call; never raises (fails closed, with the reason)."""
        if not items:
            return Assessments()
        batch_id = str(uuid.uuid4())
        body = jsonutil.dumps_bytes({"batchId": batch_id, "orders": [item.as_json() for item in items]})
        keys = [item.key for item in items]
        started = time.perf_counter()
        try:
            verdicts: dict[Key, Verdict] = self.breaker.call(self._call_with_retries, body, keys)
        except pybreaker.CircuitBreakerError:
            RISK_SERVICE_CALLS.labels("short_circuited").inc()
            return Assessments(unavailable=CIRCUIT_OPEN)
        except Exception as exc:  # RiskServiceError, or a bug: either way nothing is approved
            RISK_SERVICE_CALLS.labels("failed").inc()
            RISK_SERVICE_SECONDS.observe(time.perf_counter() - started)
            why = str(exc) if isinstance(exc, RiskServiceError) else f"client error {type(exc).__name__}"
            log.warning(
                "risk analysis service call failed; the batch's orders are rejected",
                extra={"batch_id": batch_id, "orders": len(items), "error": why, "breaker": self.state},
            )
            return Assessments(unavailable=unavailable_reason(why))
        RISK_SERVICE_CALLS.labels("ok").inc()
        RISK_SERVICE_SECONDS.observe(time.perf_counter() - started)
        return Assessments(verdicts)

    def _call_with_retries(self, body: bytes, keys: list[Key]) -> dict[Key, Verdict]:
        attempts = 0

        def attempt() -> dict[Key, Verdict]:
            nonlocal attempts
            attempts += 1
            return self._post(body, keys)

        try:
            return self._retrying(attempt)
        except TransientError as exc:
            if attempts > 1:
                raise TransientError(f"{exc} ({attempts} attempts)") from exc
            raise

    def _post(self, body: bytes, keys: list[Key]) -> dict[Key, Verdict]:
        """One attempt."""
        timeout = self.config.timeout_seconds
        try:
            response = self.session.post(
                self.config.assessments_url, data=body, headers=self._headers, timeout=(timeout, timeout)
            )
        except requests.Timeout:
            raise TransientError(f"no answer within {timeout:g}s") from None
        except requests.ConnectionError:
            raise TransientError("cannot connect") from None
        except requests.RequestException as exc:
            raise RiskServiceError(f"request failed: {type(exc).__name__}") from None
        if response.status_code in TRANSIENT_STATUSES:
            raise TransientError(f"HTTP {response.status_code}")
        if response.status_code != 200:
            raise RiskServiceError(f"HTTP {response.status_code}")
        return _answer_of(response, keys)

    def _log_retry(self, state: Any) -> None:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        log.info(
            "risk analysis service call failed; retrying",
            extra={"attempt": state.attempt_number, "error": str(error), "url": self.config.assessments_url},
        )
