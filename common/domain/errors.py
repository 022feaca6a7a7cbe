"""The domain's shallow error hierarchy."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error the domain raises on purpose."""


class InvalidTransition(DomainError):
    """A command is not allowed in the order's current state; the order is left unchanged."""

    def __init__(self, command: str, state: str, detail: str | None = None) -> None:
        self.command = command
        self.state = state
        self.detail = detail
        message = f"{command} is not allowed in state {state}"
        super().__init__(f"{message}: {detail}" if detail else message)


class InvalidCommand(DomainError):
    """A command's arguments break a rule (e.g. a non-positive quantity); the order is left unchanged."""


class ReportMismatch(DomainError):
    """An execution report was applied to an order it does not name (a caller bug)."""
