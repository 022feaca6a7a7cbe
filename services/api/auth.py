"""Bearer tokens (JWT): who the caller is, which accounts it may use, and what it may do.

Claims: ``sub`` (the user), ``accounts`` (account ids, or ``"*"`` for every account), ``scopes``
(``orders:read``, ``orders:write``, ``operations``), ``exp``, ``iat`` and ``iss``.

Keys. The service's own tokens are HS256, and their header's ``kid`` names the key that signed them:

- the **key set** (``OMS_JWT_KEYS_FILE``, JSON ``{"keys": [{"kid", "secret", "created"}]}``, mode 600, kept
  by ``./oms token keys rotate | list | remove``): every key in it verifies, the newest signs. Rotating adds a
  key, so tokens signed with an older one keep working until that key is removed;
- the **legacy secret** (``OMS_JWT_SECRET``, else the file ``OMS_JWT_SECRET_FILE``, generated at first use with
  mode 600 under ``.data``): the key ``default``. It verifies tokens whose ``kid`` is ``default`` or that have
  no ``kid`` (those minted before the key set existed) while ``OMS_JWT_ACCEPT_LEGACY`` is true, and signs only
  while the key set is empty.

Tokens issued by the platform's identity provider (RS256 or ES256) verify against the public keys of a JWKS
file (``OMS_JWT_JWKS_FILE``), found by ``kid``, with their own issuer and audience. Both files are re-read
when they change (checked at most once a second), so a rotation or a removal reaches running servers
without a restart. A token whose ``kid`` no key has is refused with that reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Generic, TypeVar

import jwt

from common.settings import ApiSettings

SCOPE_READ = "orders:read"
SCOPE_WRITE = "orders:write"
SCOPE_OPERATIONS = "operations"
SCOPES = (SCOPE_READ, SCOPE_WRITE, SCOPE_OPERATIONS)
ALL_ACCOUNTS = "*"
ALGORITHM = "HS256"
# The identity provider's algorithms. Only asymmetric ones: a JWKS "oct" key would let anyone who can read
# the public JWKS file sign tokens, so such keys are never used.
ASYMMETRIC_ALGORITHMS = ("RS256", "ES256")
LEGACY_KID = "default"
# Clock skew tolerated between the token's issuer and this service.
LEEWAY_SECONDS = 5
# How often a verifier looks whether a key file changed: one stat() a second at most, not one per request.
RELOAD_INTERVAL_SECONDS = 1.0
# A kid quoted back in an error is cut to this length (it comes from the caller).
_KID_QUOTE_LIMIT = 64

log = logging.getLogger(__name__)
T = TypeVar("T")


class AuthenticationError(Exception):
    """No token, or one that is malformed, forged, expired, from another issuer or signed by an unknown key."""


class KeySetError(Exception):
    """The key set file is unreadable or malformed, or a key set command cannot be done."""


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


# ---- the legacy single secret ---------------------------------------------------------------------------------


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


def load_secret(api: ApiSettings) -> str:
    """The legacy secret: ``OMS_JWT_SECRET``, else the secret file (created with mode 600 when missing)."""
    given = api.jwt_secret.get_secret_value().strip() if api.jwt_secret is not None else ""
    if given:
        return given
    secret = _read_or_create_secret(api.jwt_secret_file)
    if not secret:
        raise RuntimeError(f"JWT secret file {api.jwt_secret_file} is empty")
    return secret


# ---- the key set ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    """One HS256 key of the key set. ``secret`` is left out of ``repr`` so that it never reaches a log."""

    kid: str
    secret: str = field(repr=False)
    created: datetime


@dataclass(frozen=True)
class KeySet:
    """The keys that verify the service's tokens; the newest (latest ``created``, then latest listed) signs."""

    keys: tuple[SigningKey, ...] = ()

    def get(self, kid: str) -> SigningKey | None:
        """The key named ``kid``, or None."""
        return next((key for key in self.keys if key.kid == kid), None)

    @property
    def newest(self) -> SigningKey | None:
        """The signing key, or None when the set is empty."""
        if not self.keys:
            return None
        # max() keeps the first of equal maxima; reversed() makes a later-listed key win a tie.
        return max(reversed(self.keys), key=lambda key: key.created)

    def to_json(self) -> str:
        """The file's text."""
        body = {"keys": [{"kid": k.kid, "secret": k.secret, "created": k.created.isoformat()} for k in self.keys]}
        return json.dumps(body, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "key set") -> KeySet:
        """Parse the file's text; raises KeySetError naming what is wrong (never quoting a secret)."""
        try:
            body = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KeySetError(f"{source}: not JSON ({exc.msg} at line {exc.lineno})") from exc
        entries = body.get("keys") if isinstance(body, dict) else None
        if not isinstance(entries, list):
            raise KeySetError(f'{source}: expected {{"keys": [...]}}')
        keys: list[SigningKey] = []
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise KeySetError(f"{source}: key #{index} is not an object")
            kid, secret, created = entry.get("kid"), entry.get("secret"), entry.get("created")
            if not isinstance(kid, str) or not kid or kid == LEGACY_KID:
                raise KeySetError(f"{source}: key #{index} needs a kid other than {LEGACY_KID!r}")
            if not isinstance(secret, str) or len(secret) < 32:
                raise KeySetError(f"{source}: key {kid!r} needs a secret of at least 32 characters")
            try:
                when = datetime.fromisoformat(str(created))
            except ValueError as exc:
                raise KeySetError(f"{source}: key {kid!r} has no ISO 8601 'created'") from exc
            if any(key.kid == kid for key in keys):
                raise KeySetError(f"{source}: kid {kid!r} appears twice")
            keys.append(SigningKey(kid, secret, when if when.tzinfo else when.replace(tzinfo=UTC)))
        return cls(tuple(keys))


class KeySetFile:
    """The key set file: read it, and change it (rotate, remove) atomically under a lock, mode 600."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> KeySet:
        """The key set; empty when the file does not exist."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return KeySet()
        return KeySet.from_json(text, str(self.path))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Two operators rotating at once must not lose a key: changes are read-modify-write under flock.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, keys: KeySet) -> None:
        # Write a private temporary file and rename it over the old one: a reader sees the old set or the new.
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(keys.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)

    def rotate(self, now: datetime | None = None) -> SigningKey:
        """Add a new key, which signs from now on; the older ones keep verifying."""
        created = now or datetime.now(UTC)
        with self._locked():
            current = self.read()
            newest = current.newest
            if newest is not None and created <= newest.created:
                # A clock set back must not leave an older key signing.
                created = newest.created + timedelta(microseconds=1)
            key = SigningKey(f"k{created:%Y%m%d%H%M%S}-{secrets.token_hex(3)}", secrets.token_urlsafe(48), created)
            self._write(KeySet((*current.keys, key)))
        return key

    def remove(self, kid: str) -> None:
        """Retire key ``kid``: tokens it signed are refused from then on."""
        with self._locked():
            current = self.read()
            if current.get(kid) is None:
                raise KeySetError(f"no key {kid!r} in {self.path}")
            self._write(KeySet(tuple(key for key in current.keys if key.kid != kid)))


class _Watched(Generic[T]):
    """A file's parsed content, parsed again when the file changes (looked at once per interval at most).

    A file that becomes unreadable or malformed keeps the last good content and logs why, so a bad edit does
    not log everyone out; a file that disappears gives ``empty``.
    """

    def __init__(self, path: Path, parse: Callable[[str], T], empty: T, interval: float) -> None:
        self._path, self._parse, self._empty, self._interval = path, parse, empty, interval
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._next_look = 0.0
        self._value = empty
        self._refresh(strict=True)

    def _refresh(self, strict: bool) -> None:
        try:
            info = self._path.stat()
        except FileNotFoundError:
            self._stamp, self._value = None, self._empty
            return
        # A rename gives a new inode, so a change within one mtime tick is still seen.
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        if stamp == self._stamp:
            return
        try:
            value = self._parse(self._path.read_text())
        except (OSError, ValueError, KeySetError, jwt.PyJWTError) as exc:
            if strict:
                raise
            log.error(
                "key file unusable, keeping the keys read before", extra={"path": str(self._path), "error": str(exc)}
            )
            self._stamp = stamp
            return
        self._stamp, self._value = stamp, value
        log.info("key file loaded", extra={"path": str(self._path)})

    def get(self) -> T:
        """The current content."""
        now = time.monotonic()
        if now >= self._next_look:
            with self._lock:
                if now >= self._next_look:
                    self._refresh(strict=False)
                    self._next_look = now + self._interval
        return self._value


# ---- the identity provider's keys -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Jwks:
    """Public keys of the identity provider and the ``iss`` and ``aud`` its tokens must carry."""

    path: Path
    issuer: str
    audience: str | None


def _parse_jwks(text: str) -> jwt.PyJWKSet:
    return jwt.PyJWKSet.from_json(text)


# ---- the service --------------------------------------------------------------------------------------------------


def _quote_kid(kid: str) -> str:
    return repr(kid if len(kid) <= _KID_QUOTE_LIMIT else kid[:_KID_QUOTE_LIMIT] + "...")


class TokenService:
    """Issues and verifies the service's bearer tokens, and verifies the identity provider's."""

    def __init__(
        self,
        secret: str | None,
        issuer: str,
        *,
        keys_file: Path | None = None,
        jwks: Jwks | None = None,
        reload_interval: float = RELOAD_INTERVAL_SECONDS,
    ) -> None:
        """``secret`` is the legacy key (None: not accepted); ``keys_file`` the key set; ``jwks`` the IdP's keys."""
        self._legacy = secret
        self._issuer = issuer
        self._keys: _Watched[KeySet] | None = None
        if keys_file is not None:
            source = str(keys_file)
            self._keys = _Watched(keys_file, lambda text: KeySet.from_json(text, source), KeySet(), reload_interval)
        self._jwks = jwks
        self._jwks_keys: _Watched[jwt.PyJWKSet | None] | None = None
        if jwks is not None:
            self._jwks_keys = _Watched(jwks.path, _parse_jwks, None, reload_interval)
            if self._jwks_keys.get() is None:
                raise KeySetError(f"JWKS file {jwks.path} does not exist")

    @classmethod
    def from_settings(cls, api: ApiSettings) -> TokenService:
        """A token service with the configured keys and issuers."""
        jwks = None
        if api.jwt_jwks_file is not None:
            jwks = Jwks(api.jwt_jwks_file, api.jwt_jwks_issuer or api.jwt_issuer, api.jwt_jwks_audience)
        legacy = load_secret(api) if api.jwt_accept_legacy else None
        return cls(legacy, api.jwt_issuer, keys_file=api.jwt_keys_file, jwks=jwks)

    def key_set(self) -> KeySet:
        """The key set as this service sees it now."""
        return self._keys.get() if self._keys is not None else KeySet()

    def signing_kid(self) -> str:
        """The kid new tokens carry: the key set's newest key, else ``default`` (the legacy secret)."""
        kid, _ = self._signing_key()
        return kid

    def _signing_key(self) -> tuple[str, str]:
        newest = self.key_set().newest
        if newest is not None:
            return newest.kid, newest.secret
        if self._legacy is not None:
            return LEGACY_KID, self._legacy
        raise KeySetError(
            "no signing key: the key set is empty and the legacy secret is off (run `./oms token keys rotate`)"
        )

    def issue(
        self,
        subject: str,
        accounts: Iterable[str],
        scopes: Iterable[str],
        ttl: timedelta = timedelta(hours=1),
        now: datetime | None = None,
    ) -> str:
        """Sign a token for ``subject`` valid for ``ttl``, with the newest key, naming it in ``kid``."""
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
        kid, secret = self._signing_key()
        return jwt.encode(claims, secret, algorithm=ALGORITHM, headers={"kid": kid})

    def _hmac_secret(self, kid: str | None) -> str:
        if kid is None or kid == LEGACY_KID:
            if self._legacy is None:
                raise AuthenticationError(
                    "invalid token: tokens without a key id (or kid 'default') are no longer accepted"
                )
            return self._legacy
        key = self.key_set().get(kid)
        if key is None:
            raise AuthenticationError(
                f"invalid token: unknown key id {_quote_kid(kid)} (the key was removed or never existed)"
            )
        return key.secret

    def _decode(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise AuthenticationError("invalid token") from exc
        algorithm, kid = header.get("alg"), header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthenticationError("invalid token: kid must be a string")
        required = ["exp", "iss", "sub"]
        if algorithm == ALGORITHM:
            key: Any = self._hmac_secret(kid)
            algorithms, issuer, audience = [ALGORITHM], self._issuer, None
        elif algorithm in ASYMMETRIC_ALGORITHMS and self._jwks is not None and self._jwks_keys is not None:
            key_set = self._jwks_keys.get()
            if kid is None:
                raise AuthenticationError("invalid token: an identity provider's token needs a kid")
            try:
                jwk = key_set[kid] if key_set is not None else None
            except KeyError:
                jwk = None
            if jwk is None or jwk.algorithm_name not in ASYMMETRIC_ALGORITHMS:
                raise AuthenticationError(
                    f"invalid token: unknown key id {_quote_kid(kid)} in the identity provider's keys"
                )
            key, algorithms = jwk.key, [jwk.algorithm_name]
            issuer, audience = self._jwks.issuer, self._jwks.audience
            if audience is not None:
                required.append("aud")
        else:
            raise AuthenticationError(f"invalid token: algorithm {str(algorithm)[:16]!r} is not accepted")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                issuer=issuer,
                audience=audience,
                leeway=LEEWAY_SECONDS,
                options={"require": required},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationError("token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthenticationError("invalid token") from exc
        return claims

    def verify(self, token: str) -> Principal:
        """The caller a token names; raises AuthenticationError for any token that is not ours and current."""
        claims = self._decode(token)
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
