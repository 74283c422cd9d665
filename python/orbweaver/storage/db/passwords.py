"""Salted password hashing for resource groups (stdlib scrypt), with constant-time verification.

Stored format (ASCII bytes, fits the ``VARBINARY(2048)`` column)::

    scrypt-sha256$<n>$<r>$<p>$<salt hex>$<hash hex>

scrypt is applied to SHA-256 of the password, not to the password itself: scrypt's inner HMAC
zero-pads short keys, so ``b"pw"`` and ``b"pw\\x00"`` would otherwise hash alike; a fixed-length
input rules that out. Passwords are never stored.

Because scrypt is deliberately slow (tens of ms) and every job submission verifies its group's
password, :class:`PasswordVerifier` remembers recent successful verifications as a keyed BLAKE2b
digest of the password bound to the exact stored record; a changed record or a different password
misses the cache and takes the slow path.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections import OrderedDict

__all__ = ["PasswordVerifier", "hash_password", "verify_password"]

_SCHEME = "scrypt-sha256"
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
_MAXMEM = 64 * 1024 * 1024


def _prehash(password: bytes) -> bytes:
    return hashlib.sha256(bytes(password)).digest()


def hash_password(
    password: bytes, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P
) -> bytes:
    """A fresh salted scrypt record for ``password``."""
    if not isinstance(password, (bytes, bytearray, memoryview)):
        raise TypeError("password must be bytes")
    salt = os.urandom(SALT_BYTES)
    digest = hashlib.scrypt(
        _prehash(password), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=HASH_BYTES
    )
    return f"{_SCHEME}${n}${r}${p}${salt.hex()}${digest.hex()}".encode("ascii")


def verify_password(password: bytes, record: bytes) -> bool:
    """Whether ``password`` matches the stored ``record`` (constant-time comparison).

    Raises ``ValueError`` for a record that is not in the format :func:`hash_password` writes.
    """
    try:
        scheme, n_s, r_s, p_s, salt_hex, digest_hex = bytes(record).decode("ascii").split("$")
        if scheme != _SCHEME:
            raise ValueError(scheme)
        n, r, p = int(n_s), int(r_s), int(p_s)
        salt, expected = bytes.fromhex(salt_hex), bytes.fromhex(digest_hex)
    except (UnicodeDecodeError, ValueError):
        raise ValueError("stored password record is not a recognised scrypt hash") from None
    actual = hashlib.scrypt(
        _prehash(password), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=len(expected)
    )
    return hmac.compare_digest(actual, expected)


class PasswordVerifier:
    """:func:`verify_password` with a bounded cache of recent successes (thread-safe)."""

    def __init__(self, max_entries: int = 1024) -> None:
        self._max_entries = max_entries
        self._key = os.urandom(32)
        self._lock = threading.Lock()
        self._ok: OrderedDict[bytes, bytes] = OrderedDict()

    def _fingerprint(self, password: bytes, record: bytes) -> tuple[bytes, bytes]:
        record_key = hashlib.blake2b(bytes(record), key=self._key, digest_size=32).digest()
        pw = hashlib.blake2b(bytes(password), key=self._key, person=b"orbweaver-rg", digest_size=32)
        pw.update(record_key)
        return record_key, pw.digest()

    def verify(self, password: bytes, record: bytes) -> bool:
        record_key, fingerprint = self._fingerprint(password, record)
        with self._lock:
            cached = self._ok.get(record_key)
            if cached is not None:
                self._ok.move_to_end(record_key)
        if cached is not None and hmac.compare_digest(cached, fingerprint):
            return True
        if not verify_password(password, record):
            return False
        with self._lock:
            self._ok[record_key] = fingerprint
            self._ok.move_to_end(record_key)
            while len(self._ok) > self._max_entries:
                self._ok.popitem(last=False)
        return True
