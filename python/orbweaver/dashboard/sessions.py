"""Server-side login sessions: the browser holds a random session id (an HTTP-only cookie), the
credentials stay in this process's memory, and each session has its own CSRF token."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from orbweaver._rpc import constant_time_eq
from orbweaver.dashboard.storage import Credentials

__all__ = ["Session", "SessionStore"]


@dataclass(slots=True)
class Session:
    id: str = field(repr=False)
    credentials: Credentials
    csrf_token: str = field(repr=False)
    expires_at: float

    def csrf_ok(self, token: str | None) -> bool:
        return bool(token) and constant_time_eq(token or "", self.csrf_token)


class SessionStore:
    """Sessions expire after `idle_s` without a request; at most `max_sessions` are kept (the
    least recently used goes first). Thread-safe."""

    def __init__(self, idle_s: float = 8 * 3600, max_sessions: int = 10_000) -> None:
        self._idle = idle_s
        self._max = max_sessions
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def create(self, credentials: Credentials) -> Session:
        session = Session(
            secrets.token_urlsafe(32),
            credentials,
            secrets.token_urlsafe(32),
            time.monotonic() + self._idle,
        )
        with self._lock:
            self._sessions[session.id] = session
            while len(self._sessions) > self._max:
                self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        now = time.monotonic()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if session.expires_at <= now:
                del self._sessions[session_id]
                return None
            session.expires_at = now + self._idle
            self._sessions.move_to_end(session_id)
            return session

    def drop(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._sessions.pop(session_id, None)
