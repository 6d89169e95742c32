"""Console sign-in sessions, kept server-side in the serving process.

The browser holds only a random session id (256 bits) in an HttpOnly, SameSite=Strict cookie; the
token the user signed in with never leaves the sign-in request.  Here only the id's SHA-256 is
kept, with the role it grants (``admin`` or ``read-only:<token id>``), a CSRF token for writes, and
two expiries: idle (``idle_s`` since the last request) and absolute (``max_age_s`` since sign-in).
Signing out, a revoked read-only token and a restart end a session.  Sessions are per process:
with several replicas the console needs session affinity (or a sign-in per replica).

``LoginThrottle`` slows down token guessing: after ``limit`` failed sign-ins from one address
within ``window_s`` further attempts are refused until the window has passed.

Pure: the caller passes the clock; nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict, deque
from dataclasses import replace

from costproxy.records import frozen

IDLE_SECONDS = 30 * 60
MAX_AGE_SECONDS = 12 * 3600
MAX_SESSIONS = 10_000


@frozen
class Session:
    role: str  # "admin" or "read-only:<token id>"
    label: str  # shown in the console: "admin" or the token's name and prefix
    csrf: str
    created_at: float
    last_seen: float
    token_id: str | None = None  # the read-only token signed in with

    @property
    def read_only(self) -> bool:
        return self.role != "admin"


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


class SessionStore:
    def __init__(self, *, idle_s: float = IDLE_SECONDS, max_age_s: float = MAX_AGE_SECONDS,
                 capacity: int = MAX_SESSIONS) -> None:
        self.idle_s = idle_s
        self.max_age_s = max_age_s
        self.capacity = capacity
        self._by_digest: OrderedDict[str, Session] = OrderedDict()

    def create(self, role: str, label: str, now: float, token_id: str | None = None) -> tuple[str, Session]:
        """A new session; returns the id for the cookie (only its digest is kept)."""
        session_id = secrets.token_urlsafe(32)
        session = Session(role=role, label=label, csrf=secrets.token_urlsafe(32), created_at=now, last_seen=now,
                          token_id=token_id)
        self._by_digest[_digest(session_id)] = session
        while len(self._by_digest) > self.capacity:  # the oldest sign-ins go first
            self._by_digest.popitem(last=False)
        return session_id, session

    def lookup(self, session_id: str, now: float) -> Session | None:
        """The live session for a cookie value, its idle clock restarted; None if unknown or expired."""
        digest = _digest(session_id)
        session = self._by_digest.get(digest)
        if session is None:
            return None
        if now - session.last_seen > self.idle_s or now - session.created_at > self.max_age_s:
            del self._by_digest[digest]
            return None
        fresh = replace(session, last_seen=now)
        self._by_digest[digest] = fresh
        return fresh

    def expires_at(self, session: Session) -> float:
        return min(session.last_seen + self.idle_s, session.created_at + self.max_age_s)

    def end(self, session_id: str) -> bool:
        return self._by_digest.pop(_digest(session_id), None) is not None

    def end_for_token(self, token_id: str) -> int:
        doomed = [d for d, s in self._by_digest.items() if s.token_id == token_id]
        for digest in doomed:
            del self._by_digest[digest]
        return len(doomed)

    def __len__(self) -> int:
        return len(self._by_digest)


def csrf_matches(session: Session, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(session.csrf.encode(), presented.encode())


class LoginThrottle:
    def __init__(self, *, limit: int = 10, window_s: float = 300.0, capacity: int = 10_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.capacity = capacity
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._failures.get(address)
        if times is None:
            return deque()
        while times and now - times[0] > self.window_s:
            times.popleft()
        return times

    def allowed(self, address: str, now: float) -> bool:
        return len(self._recent(address, now)) < self.limit

    def failed(self, address: str, now: float) -> None:
        times = self._recent(address, now)
        times.append(now)
        self._failures[address] = times
        self._failures.move_to_end(address)
        while len(self._failures) > self.capacity:
            self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)
