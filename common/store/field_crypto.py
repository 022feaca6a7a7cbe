"""Encryption at rest of free text that may carry client data (an order's ``notes``).

A value is stored as ``enc:v1:<kid>:<base64(nonce | ciphertext | tag)>``: AES-256-GCM with a random 96-bit
nonce, the key named by ``kid`` from a key ring, and the row's id as associated data, so a value copied onto
another row does not decrypt. A stored value without the ``enc:v1:`` prefix is plaintext written before
encryption existed, and reads as it is.

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
KEY_BYTES = 32
NONCE_BYTES = 12
KID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
RELOAD_SECONDS = 2.0
EXECUTION_OPTION = "oms_data_keys"
# Associated data: binds a value to its field and row (a notes value moved to another order does not open).
_AAD_PREFIX = b"oms.notes\x00"
# Bounded: the store reads and writes an order's row again at every message about it; reusing the value it
# read (or last wrote) saves a decryption per read and, under the current key, an encryption per write.
# Plaintext in this process's memory only.
_CACHE_SIZE = 4096


class DataKeyError(ValueError):
    """A key ring that does not parse, a value that does not decrypt (wrong key, tampered, another row), or an
    unknown kid."""


def kid_of(stored: str | None) -> str | None:
    """The kid an encrypted value names; None for plaintext or no value."""
    if not stored or not stored.startswith(PREFIX):
        return None
    kid, sep, _ = stored[len(PREFIX) :].partition(":")
    return kid if sep else None


def _aad(row_id: str) -> bytes:
    return _AAD_PREFIX + row_id.encode()


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

    def seal(self, plaintext: str, row_id: str) -> str:
        """``plaintext`` encrypted with the current key, bound to ``row_id``."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[self.current].encrypt(nonce, plaintext.encode(), _aad(row_id))
        return f"{PREFIX}{self.current}:{base64.b64encode(nonce + sealed).decode()}"

    def open(self, stored: str, row_id: str) -> str:
        """The plaintext of a stored value (a value without the prefix is legacy plaintext, returned as is).

        Raises ``DataKeyError`` for an unknown kid, another row's value, a wrong key or a changed byte.
        """
        if not stored.startswith(PREFIX):
            return stored
        kid, sep, body = stored[len(PREFIX) :].partition(":")
        cipher = self._ciphers.get(kid)
        if not sep or cipher is None:
            raise DataKeyError(f"value of row {row_id} names data key {kid!r}, which is not in the key ring")
        try:
            raw = base64.b64decode(body, validate=True)
            plaintext = cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(row_id))
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
        self._cache: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._opened: OrderedDict[tuple[str, str], str] = OrderedDict()
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

    def _remember(self, row_id: str, plaintext: str, stored: str) -> None:
        for cache in (self._cache, self._opened):
            if len(cache) >= _CACHE_SIZE:
                cache.popitem(last=False)
        self._cache[(row_id, plaintext)] = stored
        self._opened[(row_id, stored)] = plaintext

    def seal(self, plaintext: str | None, row_id: str) -> str | None:
        """The value to store for ``plaintext`` (None and "" stay as they are: nothing to protect)."""
        if not plaintext:
            return plaintext
        ring = self.ring()
        cached = self._cache.get((row_id, plaintext))
        if cached is not None and kid_of(cached) == ring.current:
            return cached
        stored = ring.seal(plaintext, row_id)
        self._remember(row_id, plaintext, stored)
        return stored

    def open(self, stored: str | None, row_id: str) -> str | None:
        """The plaintext of a stored value; raises ``DataKeyError`` if it does not decrypt."""
        if not stored or not stored.startswith(PREFIX):
            return stored
        known = self._opened.get((row_id, stored))
        if known is not None:  # read (or written) before by this process: a verified value
            return known
        ring = self.ring()
        if kid_of(stored) not in ring.keys:  # rotated since the last look: read the file now
            ring = self.ring(force=True)
        plaintext = ring.open(stored, row_id)
        self._remember(row_id, plaintext, stored)
        return plaintext


def with_data_keys(engine: Engine, keys: DataKeys) -> Engine:
    """``engine`` (sharing its pool) whose connections carry ``keys`` for the store to seal and open with."""
    return engine.execution_options(**{EXECUTION_OPTION: keys})


def data_keys_of(connection: Connection) -> DataKeys | None:
    """The keys the connection's engine carries; None: this engine neither encrypts nor decrypts."""
    keys = connection.get_execution_options().get(EXECUTION_OPTION)
    return keys if isinstance(keys, DataKeys) else None


def seal_for(connection: Connection, plaintext: str | None, row_id: str) -> str | None:
    """What to store for ``plaintext`` on this connection: encrypted when its engine carries keys."""
    keys = data_keys_of(connection)
    return plaintext if keys is None else keys.seal(plaintext, row_id)


def open_for(connection: Connection, stored: str | None, row_id: str) -> str | None:
    """The plaintext of a stored value on this connection (as stored when its engine carries no keys)."""
    keys = data_keys_of(connection)
    return stored if keys is None else keys.open(stored, row_id)


def open_payload(connection: Connection, payload: Mapping[str, Any], order_id: str) -> dict[str, Any]:
    """An ``order_events`` payload as written by the domain: its ``notes`` (ORDER_CREATED) decrypted."""
    opened = dict(payload)
    if opened.get("notes"):
        opened["notes"] = open_for(connection, opened["notes"], order_id)
    return opened
