"""Encryption at rest of free text that may carry client data: an order's ``notes`` and its cancel reasons.

Two forms, both AES-256-GCM with random 96-bit nonces, the key named by ``kid`` from a key ring, and the field
and the row's id as associated data (a value copied onto another row, or into another field, does not decrypt):

- ``enc:v1:<kid>:<base64(nonce | ciphertext | tag)>``: the value under the ring's key. For columns that a
  re-encryption may rewrite (``orders.notes``, ``orders.pending_request``'s reason, ``order_requests.reason``)
  and for the notes in ORDER_CREATED events (one encryption per order with notes, on the hot path).
- ``enc:v2:<kid>:<base64(nonce | wrapped key | tag)>:<base64(nonce | ciphertext | tag)>`` (an envelope): the
  value under a random key of its own, and that key wrapped by the ring's key. For the cancel reasons in
  ``order_events`` payloads, which are hash-chained (``common.store.event_chain``): the chain covers the value's
  ciphertext but not its wrapping (``chain_form``), so ``./oms data-keys reencrypt`` re-wraps the value's key
  under the current ring key without changing a hash. Two encryptions per value instead of one: cancels are
  rare, and the hot path (notes) keeps v1.

A stored value without either prefix is plaintext written before encryption existed, and reads as it is.

The key ring is a JSON file (``OMS_DATA_KEYS_FILE``, mode 600): ``{"keys": [{"kid": .., "key": base64(32
bytes)}], "current": kid}``; every key decrypts, the current one encrypts. For local development it is made at
first use; in a deployment it is a mounted secret. ``./oms data-keys rotate | reencrypt | remove | status``
keeps it. A running process re-reads it when it changes (checked at most every ``RELOAD_SECONDS``, and at once
when a value names a kid it does not know), so a rotation reaches every process without a restart.

How the store finds the keys: the entry point's engine carries them (``with_data_keys``, an execution option),
and a repository takes them from its connection (``data_keys_of``). An engine without keys (tests, tools on the
owner's URL) reads legacy plaintext and leaves encrypted values as stored; it writes plaintext.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, Engine

PREFIX = "enc:v1:"
ENVELOPE_PREFIX = "enc:v2:"
_PREFIXES = (PREFIX, ENVELOPE_PREFIX)
KEY_BYTES = 32
NONCE_BYTES = 12
KID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
RELOAD_SECONDS = 2.0
EXECUTION_OPTION = "oms_data_keys"
# Associated data: binds a value to its field and row (a notes value moved to another order, or into a reason,
# does not open). ``oms.<field>\x00<row id>``: notes keep the form they had before other fields were encrypted.
NOTES, REASON = "notes", "reason"
# The wrapped key of an envelope (v2) has associated data of its own: a wrapped key is never taken for a value.
_WRAP_LABEL = b"oms.wrap\x00"
# Bounded: the store reads and writes an order's row again at every message about it; reusing the value it
# read (or last wrote) saves a decryption per read and, under the current key, an encryption per write.
# Plaintext in this process's memory only.
_CACHE_SIZE = 4096


class DataKeyError(ValueError):
    """A key ring that does not parse, a value that does not decrypt (wrong key, tampered, another row), or an
    unknown kid."""


def is_encrypted(stored: str | None) -> bool:
    """Whether a stored value is in one of the encrypted forms (else plaintext, or nothing)."""
    return stored is not None and stored.startswith(_PREFIXES)


def kid_of(stored: str | None) -> str | None:
    """The kid an encrypted value names (the key that encrypts it, or wraps its key); None for plaintext."""
    if stored is None or not stored.startswith(_PREFIXES):
        return None
    kid, sep, _ = stored[len(PREFIX) :].partition(":")  # both prefixes are 7 characters
    return kid if sep else None


def chain_form(stored: str) -> str:
    """What the audit hash chain covers of a stored value: an envelope (v2) without its kid and wrapped key
    (so re-wrapping under a new key changes no hash), anything else as it is. Only the ciphertext is covered,
    never the plaintext: a hash over a short plaintext would let anyone who reads the table test guesses."""
    if not stored.startswith(ENVELOPE_PREFIX):
        return stored
    parts = stored[len(ENVELOPE_PREFIX) :].split(":")
    # Not a well-formed envelope (plaintext that looks like one): covered whole, as any other text.
    return ENVELOPE_PREFIX + parts[2] if len(parts) == 3 else stored


def _aad(row_id: str, field: str = NOTES) -> bytes:
    return b"oms." + field.encode() + b"\x00" + row_id.encode()


def new_kid() -> str:
    """A key id: the UTC date and a random suffix, so ids sort by age and never collide."""
    return time.strftime("%Y%m%d", time.gmtime()) + "-" + secrets.token_hex(3)


@dataclass(frozen=True)
class KeyRing:
    """Keys by kid; ``current`` encrypts, every key decrypts."""

    keys: dict[str, bytes]
    current: str
    _ciphers: dict[str, AESGCM] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for kid, key in self.keys.items():
            if not KID_PATTERN.match(kid):
                raise DataKeyError(f"data key id {kid!r} must match {KID_PATTERN.pattern}")
            if len(key) != KEY_BYTES:
                raise DataKeyError(f"data key {kid!r} must be {KEY_BYTES} bytes, not {len(key)}")
            self._ciphers[kid] = AESGCM(key)
        if self.current not in self.keys:
            raise DataKeyError(f"the current data key {self.current!r} is not in the key ring")

    @classmethod
    def generate(cls) -> KeyRing:
        """A ring of one new random key."""
        kid = new_kid()
        return cls({kid: AESGCM.generate_key(bit_length=8 * KEY_BYTES)}, kid)

    @classmethod
    def from_json(cls, text: str, source: str = "key ring") -> KeyRing:
        """Parse the file form; raises ``DataKeyError`` naming ``source``."""
        try:
            data = json.loads(text)
            keys = {str(k["kid"]): base64.b64decode(k["key"], validate=True) for k in data["keys"]}
            return cls(keys, str(data["current"]))
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise DataKeyError(f"{source}: not a data key ring ({exc})") from None

    def to_json(self) -> str:
        """The file form."""
        keys = [{"kid": kid, "key": base64.b64encode(key).decode()} for kid, key in self.keys.items()]
        return json.dumps({"keys": keys, "current": self.current}, indent=2) + "\n"

    def rotated(self) -> KeyRing:
        """This ring with a new key, which becomes current."""
        kid = new_kid()
        while kid in self.keys:
            kid = new_kid()
        return KeyRing({**self.keys, kid: AESGCM.generate_key(bit_length=8 * KEY_BYTES)}, kid)

    def without(self, kid: str) -> KeyRing:
        """This ring without ``kid``; the current key cannot be removed."""
        if kid == self.current:
            raise DataKeyError(f"{kid} is the current data key: rotate first")
        if kid not in self.keys:
            raise DataKeyError(f"no data key {kid!r}")
        return KeyRing({k: v for k, v in self.keys.items() if k != kid}, self.current)

    def seal(self, plaintext: str, row_id: str, field: str = NOTES) -> str:
        """``plaintext`` encrypted with the current key (v1), bound to ``field`` of ``row_id``."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[self.current].encrypt(nonce, plaintext.encode(), _aad(row_id, field))
        return f"{PREFIX}{self.current}:{base64.b64encode(nonce + sealed).decode()}"

    def seal_envelope(self, plaintext: str, row_id: str, field: str) -> str:
        """``plaintext`` under a fresh key of its own, that key wrapped with the current key (v2)."""
        value_key = AESGCM.generate_key(bit_length=8 * KEY_BYTES)
        aad = _aad(row_id, field)
        nonce = os.urandom(NONCE_BYTES)
        body = nonce + AESGCM(value_key).encrypt(nonce, plaintext.encode(), aad)
        return self._wrapped(value_key, aad) + ":" + base64.b64encode(body).decode()

    def _wrapped(self, value_key: bytes, aad: bytes) -> str:
        nonce = os.urandom(NONCE_BYTES)
        wrapped = nonce + self._ciphers[self.current].encrypt(nonce, value_key, _WRAP_LABEL + aad)
        return f"{ENVELOPE_PREFIX}{self.current}:{base64.b64encode(wrapped).decode()}"

    def _cipher(self, kid: str, row_id: str) -> AESGCM:
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise DataKeyError(f"value of row {row_id} names data key {kid!r}, which is not in the key ring")
        return cipher

    def _value_key(self, stored: str, row_id: str, field: str) -> tuple[bytes, str]:
        """An envelope's own key (unwrapped) and its body."""
        parts = stored[len(ENVELOPE_PREFIX) :].split(":")
        if len(parts) != 3:
            raise DataKeyError(f"value of row {row_id} is not an encrypted value (enc:v2)")
        kid, wrapped, body = parts
        cipher = self._cipher(kid, row_id)
        try:
            raw = base64.b64decode(wrapped, validate=True)
            value_key = cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _WRAP_LABEL + _aad(row_id, field))
        except (InvalidTag, ValueError, binascii.Error):
            raise DataKeyError(f"value of row {row_id} does not decrypt with data key {kid!r}") from None
        return value_key, body

    def rewrap(self, stored: str, row_id: str, field: str) -> str:
        """An envelope (v2) with its key wrapped by the current key instead: the same body, so the same
        ``chain_form``. Raises ``DataKeyError`` like ``open``."""
        value_key, body = self._value_key(stored, row_id, field)
        return self._wrapped(value_key, _aad(row_id, field)) + ":" + body

    def open(self, stored: str, row_id: str, field: str = NOTES) -> str:
        """The plaintext of a stored value, either form (a value without a prefix is legacy plaintext, returned
        as is).

        Raises ``DataKeyError`` for an unknown kid, another row's or field's value, a wrong key or a changed byte.
        """
        if stored.startswith(ENVELOPE_PREFIX):
            value_key, body = self._value_key(stored, row_id, field)
            kid, cipher = kid_of(stored), AESGCM(value_key)
        elif stored.startswith(PREFIX):
            kid, sep, body = stored[len(PREFIX) :].partition(":")
            if not sep:
                raise DataKeyError(f"value of row {row_id} is not an encrypted value (enc:v1)")
            cipher = self._cipher(kid, row_id)
        else:
            return stored
        try:
            raw = base64.b64decode(body, validate=True)
            plaintext = cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(row_id, field))
        except (InvalidTag, ValueError, binascii.Error):
            raise DataKeyError(f"value of row {row_id} does not decrypt with data key {kid!r}") from None
        return plaintext.decode()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise the writers of the key ring file (rotate, remove, first creation) across processes."""
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write(path: Path, ring: KeyRing) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(ring.to_json())
    os.replace(temporary, path)


def load_or_create(path: Path) -> KeyRing:
    """The key ring in ``path``; made (one random key, mode 600) when the file does not exist yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        with _locked(path):
            if not path.exists():
                _write(path, KeyRing.generate())
    return KeyRing.from_json(path.read_text(), str(path))


def update(path: Path, change: str, kid: str | None = None) -> KeyRing:
    """Rotate (``change="rotate"``) or remove ``kid`` (``change="remove"``) in the file, under its lock."""
    load_or_create(path)
    with _locked(path):
        ring = KeyRing.from_json(path.read_text(), str(path))
        ring = ring.rotated() if change == "rotate" else ring.without(kid or "")
        _write(path, ring)
    return ring


class DataKeys:
    """A process's view of the key ring file: re-read when it changes; seals and opens values of rows."""

    def __init__(self, path: Path, reload_seconds: float = RELOAD_SECONDS) -> None:
        self.path = path
        self._reload_seconds = reload_seconds
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        # OrderedDict: evicting the oldest is O(1) (a plain dict's first key is found by a scan past the
        # slots of the keys already evicted).
        # Keyed by (field, row id, value).
        self._cache: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        self._opened: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        self._ring = self._read()

    def _read(self) -> KeyRing:
        ring = load_or_create(self.path)
        stat = self.path.stat()
        self._stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        return ring

    def ring(self, force: bool = False) -> KeyRing:
        """The current ring: the file is looked at (a stat) at most every ``reload_seconds`` unless ``force``."""
        now = time.monotonic()
        if force or now - self._checked >= self._reload_seconds:
            with self._lock:
                self._checked = now
                stat = self.path.stat()
                if (stat.st_ino, stat.st_mtime_ns, stat.st_size) != self._stamp:
                    self._ring = self._read()
        return self._ring

    def _remember(self, field: str, row_id: str, plaintext: str, stored: str) -> None:
        for cache in (self._cache, self._opened):
            if len(cache) >= _CACHE_SIZE:
                cache.popitem(last=False)
        self._cache[(field, row_id, plaintext)] = stored
        self._opened[(field, row_id, stored)] = plaintext

    def seal(self, plaintext: str | None, row_id: str, field: str = NOTES) -> str | None:
        """The value to store for ``plaintext`` (v1; None and "" stay as they are: nothing to protect)."""
        if not plaintext:
            return plaintext
        ring = self.ring()
        cached = self._cache.get((field, row_id, plaintext))
        if cached is not None and kid_of(cached) == ring.current:
            return cached
        stored = ring.seal(plaintext, row_id, field)
        self._remember(field, row_id, plaintext, stored)
        return stored

    def seal_envelope(self, plaintext: str | None, row_id: str, field: str) -> str | None:
        """The value to store for ``plaintext`` in a hash-chained row (v2, ``KeyRing.seal_envelope``); not
        cached: written once (an event), and rare (a cancel)."""
        if not plaintext:
            return plaintext
        return self.ring().seal_envelope(plaintext, row_id, field)

    def open(self, stored: str | None, row_id: str, field: str = NOTES) -> str | None:
        """The plaintext of a stored value; raises ``DataKeyError`` if it does not decrypt."""
        if stored is None or not stored.startswith(_PREFIXES):
            return stored
        known = self._opened.get((field, row_id, stored))
        if known is not None:  # read (or written) before by this process: a verified value
            return known
        ring = self.ring()
        if kid_of(stored) not in ring.keys:  # rotated since the last look: read the file now
            ring = self.ring(force=True)
        plaintext = ring.open(stored, row_id, field)
        self._remember(field, row_id, plaintext, stored)
        return plaintext


def with_data_keys(engine: Engine, keys: DataKeys) -> Engine:
    """``engine`` (sharing its pool) whose connections carry ``keys`` for the store to seal and open with."""
    return engine.execution_options(**{EXECUTION_OPTION: keys})


def data_keys_of(connection: Connection) -> DataKeys | None:
    """The keys the connection's engine carries; None: this engine neither encrypts nor decrypts."""
    keys = connection.get_execution_options().get(EXECUTION_OPTION)
    return keys if isinstance(keys, DataKeys) else None


def seal_for(connection: Connection, plaintext: str | None, row_id: str, field: str = NOTES) -> str | None:
    """What to store for ``plaintext`` on this connection: encrypted (v1) when its engine carries keys."""
    keys = data_keys_of(connection)
    return plaintext if keys is None else keys.seal(plaintext, row_id, field)


def envelope_for(connection: Connection, plaintext: str | None, row_id: str, field: str) -> str | None:
    """What to store for ``plaintext`` in a hash-chained row: an envelope (v2) when the engine carries keys."""
    keys = data_keys_of(connection)
    return plaintext if keys is None else keys.seal_envelope(plaintext, row_id, field)


def open_for(connection: Connection, stored: str | None, row_id: str, field: str = NOTES) -> str | None:
    """The plaintext of a stored value on this connection (as stored when its engine carries no keys)."""
    keys = data_keys_of(connection)
    return stored if keys is None else keys.open(stored, row_id, field)


# The fields of an ``order_events`` payload that may be stored encrypted: ORDER_CREATED's notes, and the
# reason of CANCEL_REQUESTED and of a client's ORDER_CANCELED (``OrderRepository._stored_payload``).
PAYLOAD_FIELDS = (NOTES, REASON)


def open_payload(connection: Connection, payload: Mapping[str, Any], order_id: str) -> dict[str, Any]:
    """An ``order_events`` payload as written by the domain: its encrypted fields decrypted."""
    opened = dict(payload)
    for name in PAYLOAD_FIELDS:
        value = opened.get(name)
        if isinstance(value, str) and is_encrypted(value):
            opened[name] = open_for(connection, value, order_id, name)
    return opened
