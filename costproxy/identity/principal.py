"""Who is calling: the principal a request is charged to, and client API keys.

Client keys look like ``cp-`` + 43 URL-safe characters (256 bits).  Only their SHA-256 is stored;
a key is shown once at creation.  Looking a key up by its hash and comparing digests with
``hmac.compare_digest`` keeps the check constant-time in the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import field

from costproxy.records import frozen

KEY_PREFIX = "cp-"
SCOPE_TYPES = ("org", "team", "user", "project", "key")


@frozen
class Principal:
    key_id: str | None = None
    user: str | None = None
    team: str | None = None
    org: str | None = None
    project: str | None = None
    via: str = "key"  # key | trusted-proxy

    def scopes(self) -> list[tuple[str, str]]:
        """``(scope_type, scope_id)`` pairs from the widest to the narrowest."""
        pairs = [("org", self.org), ("team", self.team), ("project", self.project),
                 ("user", self.user), ("key", self.key_id)]
        return [(kind, value) for kind, value in pairs if value]


@frozen
class KeyRecord:
    id: str
    key_hash: str = field(repr=False)
    prefix: str  # first characters, safe to show ("cp-AbCd…")
    name: str = ""
    user: str | None = None
    team: str | None = None
    org: str | None = None
    project: str | None = None
    created_at: float = 0.0
    revoked_at: float | None = None
    expires_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def principal(self) -> Principal:
        return Principal(key_id=self.id, user=self.user, team=self.team, org=self.org, project=self.project)

    def public(self) -> dict[str, object]:
        return {
            "id": self.id, "prefix": self.prefix, "name": self.name, "user": self.user,
            "team": self.team, "org": self.org, "project": self.project,
            "createdAt": self.created_at, "revokedAt": self.revoked_at, "expiresAt": self.expires_at,
            "active": self.active,
        }


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("ascii"), b.encode("ascii"))


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


class KeyRing:
    """In-memory index of client keys by hash, refreshed from the store on every change."""

    def __init__(self, records: list[KeyRecord] | None = None, *, loaded: bool = True) -> None:
        self._by_hash: dict[str, KeyRecord] = {}
        self._by_id: dict[str, KeyRecord] = {}
        self._principals: dict[str, tuple[KeyRecord, Principal]] = {}  # key id -> (record, its principal)
        self.replace(records or [])
        # False until the keys were read from the store once (a replica started while its store was
        # unreachable): an unknown key then says nothing about the key, only about the store
        self.loaded = loaded

    def replace(self, records: list[KeyRecord]) -> None:
        self.loaded = True
        self._by_hash = {r.key_hash: r for r in records}
        self._by_id = {r.id: r for r in records}

    def add(self, record: KeyRecord) -> None:
        self._by_hash[record.key_hash] = record
        self._by_id[record.id] = record

    def lookup(self, key: str, now: float) -> KeyRecord | None:
        """The active record for a presented key, or ``None`` (unknown, revoked or expired)."""
        digest = hash_key(key)
        record = self._by_hash.get(digest)
        if record is None or not same_hash(record.key_hash, digest):
            return None
        if not record.active or (record.expires_at is not None and record.expires_at <= now):
            return None
        return record

    def principal_of(self, record: KeyRecord) -> Principal:
        """``record.principal()``, one instance per record: built once, not per request, and the
        budget chain cache (keyed by principal) then finds it by identity."""
        known = self._principals.get(record.id)
        if known is not None and known[0] is record:
            return known[1]
        if len(self._principals) > 4 * len(self._by_id) + 64:  # records replaced many times over
            self._principals.clear()
        principal = record.principal()
        self._principals[record.id] = (record, principal)
        return principal

    def get(self, key_id: str) -> KeyRecord | None:
        return self._by_id.get(key_id)

    def all(self) -> list[KeyRecord]:
        return sorted(self._by_id.values(), key=lambda r: r.created_at)
