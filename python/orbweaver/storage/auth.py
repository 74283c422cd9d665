"""Who is calling: the principal behind a client call, and credential checks that stay cheap.

Roles (docs/security.md):

* **services** (scheduler, execution managers) carry the cluster token; the transport checks it
  (`orbweaver._rpc.make_server`) and the client-facing calls refuse it;
* **a resource group**: its id and password, in the call metadata (or, for a submission, in the
  request body); it sees, waits for, cancels and lists only its own jobs;
* **the operator**: the operator token, when one is configured; every group, and the only caller
  allowed to create resource groups.

Passwords are salted scrypt hashes (about 20 ms and 16 MiB per check, by design), and every
client call authenticates, so verified credentials are remembered for `cache_ttl` seconds (as a
keyed digest, never the password), wrong ones for a few seconds, and at most `max_concurrent`
slow checks run at once: a flood of wrong passwords costs bounded CPU and memory.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from orbweaver import errors
from orbweaver._rpc import (
    GROUP_METADATA_KEY,
    PASSWORD_METADATA_KEY,
    TOKEN_METADATA_KEY,
    constant_time_eq,
)
from orbweaver.storage.db import Database
from orbweaver.storage.db import errors as db_errors

__all__ = ["OPERATOR", "Authenticator", "Principal"]

_REFUSED_TTL_S = 5.0
_SLOW_PATH_WAIT_S = 10.0


@dataclass(frozen=True, slots=True)
class Principal:
    """A client: the operator (`group_id` None) or one resource group."""

    group_id: int | None

    @property
    def is_operator(self) -> bool:
        return self.group_id is None

    def may_see(self, resource_group_id: int) -> bool:
        return self.group_id is None or self.group_id == resource_group_id

    def __str__(self) -> str:
        return "the operator" if self.group_id is None else f"resource group {self.group_id}"


OPERATOR = Principal(None)

Metadata = Iterable[tuple[str, str | bytes]]


class _Ttl:
    """A bounded LRU of keys with an expiry time each (thread-safe)."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._lock = threading.Lock()
        self._items: OrderedDict[bytes, tuple[float, tuple[int, str]]] = OrderedDict()

    def get(self, key: bytes, now: float) -> tuple[int, str] | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if item[0] <= now:
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return item[1]

    def put(self, key: bytes, value: tuple[int, str], expires: float) -> None:
        with self._lock:
            self._items[key] = (expires, value)
            self._items.move_to_end(key)
            while len(self._items) > self._max:
                self._items.popitem(last=False)


class Authenticator:
    """Resolves the principal of a client call and verifies resource-group passwords."""

    def __init__(
        self,
        db: Database,
        *,
        operator_token: str | None,
        cluster_token: str | None,
        cache_ttl: float = 60.0,
        max_concurrent: int = 2,
        max_entries: int = 4096,
    ) -> None:
        self._db = db
        self._operator = f"Bearer {operator_token}" if operator_token else None
        self._cluster = f"Bearer {cluster_token}" if cluster_token else None
        self._ttl = cache_ttl
        self._key = os.urandom(32)
        self._verified = _Ttl(max_entries)
        self._refused = _Ttl(max_entries)
        self._slow = threading.BoundedSemaphore(max_concurrent)

    @property
    def has_operator(self) -> bool:
        return self._operator is not None

    def _fingerprint(self, who: str, password: bytes) -> bytes:
        digest = hashlib.blake2b(key=self._key, person=b"orbweaver-auth", digest_size=32)
        digest.update(who.encode())
        digest.update(b"\0")
        digest.update(password)
        return digest.digest()

    # -- passwords ------------------------------------------------------------------------------

    def verify(
        self, password: bytes, *, resource_group_id: int = 0, external_id: str = ""
    ) -> tuple[int, str]:
        """`(id, name)` of the group named by exactly one of id and name, if `password` is its
        password; `Unauthenticated` otherwise (the same answer for an unknown group)."""
        if bool(resource_group_id) == bool(external_id):
            raise errors.InvalidArgument(
                "name the resource group by its id or by its name, not both"
                if resource_group_id
                else "give a resource group id or name"
            )
        who = f"id:{resource_group_id}" if resource_group_id else f"name:{external_id}"
        key = self._fingerprint(who, bytes(password))
        now = time.monotonic()
        found = self._verified.get(key, now)
        if found is not None:
            return found
        if self._refused.get(key, now) is not None:
            raise errors.Unauthenticated("invalid resource group or password")
        if not self._slow.acquire(timeout=_SLOW_PATH_WAIT_S):
            raise errors.Unavailable("too many credential checks at once; retry shortly")
        try:
            # Another caller may have verified the same credentials while this one waited.
            found = self._verified.get(key, time.monotonic())
            if found is not None:
                return found
            try:
                found = self._db.verify_resource_group(
                    bytes(password),
                    resource_group_id=resource_group_id or None,
                    external_id=external_id or None,
                )
            except (db_errors.ResourceGroupNotFound, db_errors.InvalidPassword):
                self._refused.put(key, (0, ""), time.monotonic() + _REFUSED_TTL_S)
                raise errors.Unauthenticated("invalid resource group or password") from None
            except db_errors.DbUnavailable as exc:
                raise errors.Unavailable(f"database unavailable: {exc}") from exc
            except db_errors.DbError as exc:
                raise errors.InternalError(f"verifying a resource group: {exc}") from exc
        finally:
            self._slow.release()
        self._verified.put(key, found, time.monotonic() + self._ttl)
        return found

    # -- principals -----------------------------------------------------------------------------

    def principal(self, metadata: Metadata | None) -> Principal | None:
        """The client behind a call's metadata; None when it carries no credentials at all."""
        token: str | None = None
        group: str | None = None
        password = b""
        for key, value in metadata or ():
            if key == TOKEN_METADATA_KEY and isinstance(value, str):
                token = value
            elif key == GROUP_METADATA_KEY and isinstance(value, str):
                group = value
            elif key == PASSWORD_METADATA_KEY:
                password = value if isinstance(value, bytes) else value.encode()
        if token is not None:
            if self._operator is not None and constant_time_eq(token, self._operator):
                return OPERATOR
            if self._cluster is not None and constant_time_eq(token, self._cluster):
                raise errors.PermissionDenied(
                    "the cluster token authenticates services; client calls need a resource "
                    "group's credentials or the operator token"
                )
            if group is None:
                raise errors.Unauthenticated("invalid token")
        if group is None:
            return None
        try:
            group_id = int(group)
        except ValueError:
            raise errors.Unauthenticated(
                f"{GROUP_METADATA_KEY} must be a resource group id, got {group[:64]!r}"
            ) from None
        if group_id <= 0:
            raise errors.Unauthenticated(f"{GROUP_METADATA_KEY} must be a positive id")
        self.verify(password, resource_group_id=group_id)
        return Principal(group_id)

    def require(self, metadata: Metadata | None) -> Principal:
        """`principal`, refusing a call without credentials."""
        principal = self.principal(metadata)
        if principal is None:
            raise errors.Unauthenticated(
                "this call needs a resource group's credentials (id and password) or the "
                "operator token"
            )
        return principal

    def for_submission(
        self, metadata: Metadata | None, resource_group_id: int, password: bytes
    ) -> Principal:
        """Who may submit into `resource_group_id`: the group itself (its password in the
        request or its credentials in the metadata) or the operator."""
        if not resource_group_id:
            raise errors.InvalidArgument("resource_group_id is required")
        if password:
            self.verify(password, resource_group_id=resource_group_id)
            return Principal(resource_group_id)
        principal = self.require(metadata)
        if not principal.may_see(resource_group_id):
            raise errors.PermissionDenied(
                f"{principal} cannot submit jobs into resource group {resource_group_id}"
            )
        return principal

    def require_operator(self, metadata: Metadata | None, what: str) -> None:
        """Operator-only calls; open to every caller when no operator token is configured."""
        if self._operator is None:
            return
        principal = self.principal(metadata)
        if principal is None or not principal.is_operator:
            raise errors.PermissionDenied(f"{what} needs the operator token")
