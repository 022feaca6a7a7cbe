"""Wait for a condition by polling with a deadline, instead of sleeping a fixed time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")

Message = str | Callable[[], str]


def _describe(predicate: Callable[..., object], message: Message) -> str:
    if callable(message):
        return message()
    return message or getattr(predicate, "__qualname__", repr(predicate))


def _timeout_error(
    predicate: Callable[..., object],
    message: Message,
    timeout: float,
    last: object,
    error: AssertionError | None,
) -> AssertionError:
    detail = f"; last assertion: {error}" if error is not None else f"; last value: {last!r}"
    return AssertionError(f"timed out after {timeout:g}s waiting for {_describe(predicate, message)}{detail}")


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: Message = "",
) -> T:
    """Call ``predicate`` until it returns a truthy value and return that value.

    A predicate may also ``assert``: an AssertionError counts as "not yet" and is reported at the deadline.
    Any other exception propagates at once (a bug should not look like a slow system).
    """
    deadline = time.monotonic() + timeout
    while True:
        error: AssertionError | None = None
        last: object = None
        try:
            last = predicate()
        except AssertionError as exc:
            error = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise _timeout_error(predicate, message, timeout, last, error) from error
        time.sleep(interval)


@overload
async def async_wait_until(
    predicate: Callable[[], Awaitable[T | None]], timeout: float = ..., interval: float = ..., message: Message = ...
) -> T: ...


@overload
async def async_wait_until(
    predicate: Callable[[], T | None], timeout: float = ..., interval: float = ..., message: Message = ...
) -> T: ...


async def async_wait_until(
    predicate: Callable[[], object],
    # Same signature as wait_until on purpose; asyncio.timeout() cannot report the last value seen.
    timeout: float = 10.0,
    interval: float = 0.05,
    message: Message = "",
) -> object:
    """Like :func:`wait_until`, for a plain or async predicate, without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while True:
        error: AssertionError | None = None
        last: object = None
        try:
            value = predicate()
            result = await value if inspect.isawaitable(value) else value
            last = result
        except AssertionError as exc:
            error = exc
        else:
            if result:
                return result
        if time.monotonic() >= deadline:
            raise _timeout_error(predicate, message, timeout, last, error) from error
        await asyncio.sleep(interval)
