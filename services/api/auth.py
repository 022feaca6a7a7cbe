"""Bearer tokens (JWT, HS256): who the caller is, which accounts it may use, and what it may do.

Claims: ``sub`` (the user), ``accounts`` (account ids, or ``"*"`` for every account), ``scopes``
(``orders:read``, ``orders:write``, ``operations``), ``exp``, ``iat`` and ``iss``. The signing secret is
``OMS_JWT_SECRET`` when set, else the file ``settings.jwt_secret_file``, generated at first use with mode 600
(it lives under ``.data``, never in the repository).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt

from common.config import Settings

SCOPE_READ = "orders:read"
SCOPE_WRITE = "orders:write"
SCOPE_OPERATIONS = "operations"
SCOPES = (SCOPE_READ, SCOPE_WRITE, SCOPE_OPERATIONS)
ALL_ACCOUNTS = "*"
ALGORITHM = "HS256"
SECRET_ENV = "OMS_JWT_SECRET"
# Clock skew tolerated between the token's issuer and this service.
LEEWAY_SECONDS = 5


class AuthenticationError(Exception):
    """No token, or one that is malformed, forged, expired or from another issuer."""


@dataclass(frozen=True)
class Principal:
    """The authenticated caller."""

    subject: str
    accounts: frozenset[str]
    scopes: frozenset[str]

    @property
    def all_accounts(self) -> bool:
        """True when the token grants every account (``"*"``)."""
        return ALL_ACCOUNTS in self.accounts

    def may_use(self, account_id: str) -> bool:
        """Whether the caller may see and act on orders of ``account_id``."""
        return self.all_accounts or account_id in self.accounts

    def has_scope(self, scope: str) -> bool:
        """Whether the token carries ``scope``."""
        return scope in self.scopes

    def account_filter(self) -> frozenset[str] | None:
        """The accounts a query must be limited to, or None when the caller may see every account."""
        return None if self.all_accounts else self.accounts


def _read_or_create_secret(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    try:
        # O_EXCL: of two processes starting together, one writes the secret and the other reads it.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return secret


def load_secret(settings: Settings) -> str:
    """The signing secret: ``OMS_JWT_SECRET``, else the secret file (created with mode 600 when missing)."""
    from_env = os.environ.get(SECRET_ENV, "").strip()
    if from_env:
        return from_env
    secret = _read_or_create_secret(settings.jwt_secret_file)
    if not secret:
        raise RuntimeError(f"JWT secret file {settings.jwt_secret_file} is empty")
    return secret


class TokenService:
    """Issues and verifies the service's bearer tokens."""

    def __init__(self, secret: str, issuer: str) -> None:
        self._secret = secret
        self._issuer = issuer

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenService:
        """A token service with the configured secret and issuer."""
        return cls(load_secret(settings), settings.jwt_issuer)

    def issue(
        self,
        subject: str,
        accounts: Iterable[str],
        scopes: Iterable[str],
        ttl: timedelta = timedelta(hours=1),
        now: datetime | None = None,
    ) -> str:
        """Sign a token for ``subject`` valid for ``ttl``."""
        issued = now or datetime.now(UTC)
        unknown = set(scopes) - set(SCOPES)
        if unknown:
            raise ValueError(f"unknown scopes: {', '.join(sorted(unknown))}")
        claims: dict[str, Any] = {
            "sub": subject,
            "accounts": sorted(set(accounts)),
            "scopes": sorted(set(scopes)),
            "iss": self._issuer,
            "iat": issued,
            "exp": issued + ttl,
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str) -> Principal:
        """The caller a token names; raises AuthenticationError for any token that is not ours and current."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                issuer=self._issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationError("token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthenticationError("invalid token") from exc
        accounts, scopes = claims.get("accounts", []), claims.get("scopes", [])
        if not (isinstance(accounts, list) and all(isinstance(a, str) for a in accounts)):
            raise AuthenticationError("invalid token: accounts must be a list of strings")
        if not (isinstance(scopes, list) and all(isinstance(s, str) for s in scopes)):
            raise AuthenticationError("invalid token: scopes must be a list of strings")
        return Principal(subject=str(claims["sub"]), accounts=frozenset(accounts), scopes=frozenset(scopes))

    def verify_header(self, value: str | None) -> Principal:
        """Verify an ``Authorization: Bearer <token>`` header value (HTTP header or gRPC metadata)."""
        if not value:
            raise AuthenticationError("Authentication required")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("Authentication required: use 'Authorization: Bearer <token>'")
        return self.verify(token.strip())
