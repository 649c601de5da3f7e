"""Hub sessions and login events: the only code that writes the Hub's tables.

Sessions are held by the server (the privileged bridge): the browser holds a random token, the
store only its SHA-256. A session ends on logout, after ``idle_timeout`` without a request, or
``absolute_timeout`` after login, whichever comes first. Each session has its own CSRF token.

>>> token_hash("abc")[:12]
'ba7816bf8f01'
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

from provisioner.store import Store

MAX_AGENT = 200
# Login events kept for the tenant's activity page: failures as long as the guard's records
# (the policy's 24 h), successes 30 days.
FAILED_KEPT = 24 * 3600
SUCCEEDED_KEPT = 30 * 24 * 3600


def token_hash(token: str) -> str:
    """What the store keeps of a session token."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    """One live Hub session (never the token itself)."""

    id: str  # the first 12 hex digits of the token's hash: names a session in lists
    username: str
    role: str
    created: float
    last_seen: float
    address: str
    agent: str
    csrf: str

    def public(self, current: bool = False) -> dict[str, Any]:
        """The session as its owner's list shows it (no CSRF token)."""
        return {"id": self.id, "created": self.created, "last_seen": self.last_seen,
                "address": self.address, "agent": self.agent, "current": current}


class SessionStore:
    """Hub sessions and login events in the slotwarden store."""

    def __init__(self, store: Store, idle: int, absolute: int) -> None:
        self.store = store
        self.idle = idle
        self.absolute = absolute

    def create(self, username: str, address: str, agent: str, role: str = "tenant",
               now: float | None = None) -> tuple[str, Session]:
        """A fresh session for USERNAME; returns (token, session). Never reuses a token."""
        now = time.time() if now is None else now
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        h = token_hash(token)
        agent = "".join(c for c in agent[:MAX_AGENT] if c.isprintable())
        with self.store.transaction() as db:
            db.execute("INSERT INTO hub_sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (h, username, role, now, now, address, agent, csrf))
        return token, Session(h[:12], username, role, now, now, address, agent, csrf)

    def resolve(self, token: object, now: float | None = None, touch: bool = True) -> Session | None:
        """The live session of TOKEN (its last_seen bumped), or None; an expired one is deleted."""
        if not isinstance(token, str) or not 20 <= len(token) <= 100:
            return None
        now = time.time() if now is None else now
        h = token_hash(token)
        row = self.store.db.execute("SELECT * FROM hub_sessions WHERE token_hash = ?", (h,)).fetchone()
        if row is None:
            return None
        if now - row["last_seen"] > self.idle or now - row["created"] > self.absolute:
            with self.store.transaction() as db:
                db.execute("DELETE FROM hub_sessions WHERE token_hash = ?", (h,))
            return None
        if touch:
            with self.store.transaction() as db:
                db.execute("UPDATE hub_sessions SET last_seen = ? WHERE token_hash = ?", (now, h))
        return Session(h[:12], row["username"], row["role"], row["created"], now if touch else row["last_seen"],
                       row["address"], row["agent"], row["csrf"])

    def of_user(self, username: str, now: float | None = None) -> list[Session]:
        """USERNAME's live sessions, newest first."""
        self.expire(now)
        rows = self.store.db.execute("SELECT * FROM hub_sessions WHERE username = ? ORDER BY created DESC",
                                     (username,)).fetchall()
        return [Session(r["token_hash"][:12], r["username"], r["role"], r["created"], r["last_seen"],
                        r["address"], r["agent"], r["csrf"]) for r in rows]

    def end(self, token: str) -> None:
        """Log one session out."""
        with self.store.transaction() as db:
            db.execute("DELETE FROM hub_sessions WHERE token_hash = ?", (token_hash(token),))

    def end_all(self, username: str) -> int:
        """Log USERNAME out everywhere; returns how many sessions ended."""
        with self.store.transaction() as db:
            return db.execute("DELETE FROM hub_sessions WHERE username = ?", (username,)).rowcount

    def end_others(self, username: str, keep_token: str) -> int:
        """Log USERNAME out everywhere but the session of KEEP_TOKEN (after a password change)."""
        with self.store.transaction() as db:
            return db.execute("DELETE FROM hub_sessions WHERE username = ? AND token_hash != ?",
                              (username, token_hash(keep_token))).rowcount

    def expire(self, now: float | None = None) -> int:
        """Delete every session past its idle or absolute timeout."""
        now = time.time() if now is None else now
        with self.store.transaction() as db:
            return db.execute("DELETE FROM hub_sessions WHERE last_seen < ? OR created < ?",
                              (now - self.idle, now - self.absolute)).rowcount

    def record_login(self, username: str, address: str, ok: bool, detail: str, now: float | None = None) -> None:
        """Remember a login try of a slot (names that are no slot are the guard's business only)."""
        now = time.time() if now is None else now
        with self.store.transaction() as db:
            db.execute("INSERT INTO hub_logins (at, username, address, ok, detail) VALUES (?, ?, ?, ?, ?)",
                       (now, username, address, int(ok), detail))
            db.execute("DELETE FROM hub_logins WHERE (ok = 0 AND at < ?) OR at < ?",
                       (now - FAILED_KEPT, now - SUCCEEDED_KEPT))

    def logins(self, username: str, limit: int = 100) -> list[dict[str, Any]]:
        """USERNAME's recent Hub logins, newest first."""
        rows = self.store.db.execute("SELECT id, at, address, ok, detail FROM hub_logins WHERE username = ? "
                                     "ORDER BY at DESC LIMIT ?", (username, limit)).fetchall()
        return [{"id": r["id"], "at": r["at"], "address": r["address"], "ok": bool(r["ok"]), "detail": r["detail"]}
                for r in rows]

    def login_event(self, username: str, event_id: int) -> dict[str, Any] | None:
        """One of USERNAME's login events (None for another user's or an unknown id)."""
        return next((e for e in self.logins(username, 1000) if e["id"] == event_id), None)

    def forget_user(self, username: str) -> None:
        """Slot removal: no session or login event of USERNAME stays."""
        with self.store.transaction() as db:
            db.execute("DELETE FROM hub_sessions WHERE username = ?", (username,))
            db.execute("DELETE FROM hub_logins WHERE username = ?", (username,))
