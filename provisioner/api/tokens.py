"""API bearer tokens: created once and shown once, stored as a SHA-256 hash, revocable.

A token is 256 random bits, so a plain SHA-256 is the right hash (no salt or slow hash needed:
there is nothing to guess); a stolen store gives no usable token.

>>> import tempfile, pathlib
>>> from provisioner.store import Store
>>> tokens = ApiTokens(Store(pathlib.Path(tempfile.mkdtemp()) / "t.db"))
>>> tok = tokens.create("billing")
>>> tokens.verify(tok)
'billing'
>>> tokens.revoke("billing"); tokens.verify(tok) is None
True
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from provisioner.errors import BadInput, SlotError
from provisioner.names import shown
from provisioner.store import Store, current_actor

TOKEN_PREFIX = "swt_"  # noqa: S105 - a marker, not a secret
NAME_RE = re.compile(r"[a-z][a-z0-9_.-]{0,63}")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def validate_token_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise BadInput(f"token name {shown(name)} is invalid: use 1-64 of a-z 0-9 _ . -, starting with a letter")
    return name


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed: never the token itself."""

    name: str
    created_at: float
    revoked_at: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "created_at": self.created_at, "revoked_at": self.revoked_at,
                "active": self.revoked_at is None}


class ApiTokens:
    """The only code that reads or writes ``api_tokens``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, name: str) -> str:
        """A new token named NAME (a revoked name may be reused); returns it, the only time it exists."""
        name = validate_token_name(name)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.store.transaction() as db:
            row = db.execute("SELECT revoked_at FROM api_tokens WHERE name = ?", (name,)).fetchone()
            if row is not None and row["revoked_at"] is None:
                raise SlotError(f"an active token named {name!r} exists; revoke it first")
            db.execute("INSERT INTO api_tokens (name, token_hash, created_at, revoked_at) VALUES (?, ?, ?, NULL) "
                       "ON CONFLICT (name) DO UPDATE SET token_hash = excluded.token_hash, "
                       "created_at = excluded.created_at, revoked_at = NULL", (name, hash_token(token), time.time()))
            self.store.audit(current_actor(), "api.token.create", None, {"name": name})
        return token

    def revoke(self, name: str) -> None:
        """Revoke NAME at once (the next request with it gets 401)."""
        name = validate_token_name(name)
        with self.store.transaction() as db:
            cur = db.execute("UPDATE api_tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                             (time.time(), name))
            if cur.rowcount == 0:
                raise SlotError(f"no active token named {name!r}")
            self.store.audit(current_actor(), "api.token.revoke", None, {"name": name})

    def list(self) -> list[TokenInfo]:
        rows = self.store.db.execute("SELECT name, created_at, revoked_at FROM api_tokens ORDER BY name").fetchall()
        return [TokenInfo(r["name"], r["created_at"], r["revoked_at"]) for r in rows]

    def verify(self, token: str) -> str | None:
        """The name of the active token TOKEN, or None."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        row = self.store.db.execute("SELECT name FROM api_tokens WHERE token_hash = ? AND revoked_at IS NULL",
                                    (hash_token(token),)).fetchone()
        return str(row["name"]) if row else None
