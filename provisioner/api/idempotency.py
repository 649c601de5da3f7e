"""``Idempotency-Key``: a retried request returns the first result instead of doing it again.

The first request with a key records it as *pending* (in one write transaction, so exactly one
of two concurrent requests with the same key runs), does the work and stores the response. A
retry gets that response back, marked as replayed; a slot password in it is never stored (the
policy keeps only the shadow hash), so a replay carries ``password: null`` — it was delivered
with the first response, and ``POST /v1/slots/{username}/password`` makes a new one.

Keys are scoped to the token that sent them, must come with the same request (method, path,
body) and are kept for :data:`KEEP_SECONDS`. A request that failed leaves no record, so a retry
runs again. A pending record older than :data:`STALE_SECONDS` (the server died mid-request) is
taken over: the provisioner's operations resume an interrupted run. :class:`IdempotencyKeys` is
the only code that reads or writes the records (``api_idempotency``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from provisioner.store import Store

KEEP_SECONDS = 24 * 3600
STALE_SECONDS = 600
MAX_KEY = 200
SECRET_FIELDS = ("password",)


class KeyConflict(Exception):
    """The key was used for another request, or its first request is still running."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Replay:
    status: int
    body: dict[str, Any]


def fingerprint(method: str, path: str, body: object) -> str:
    canonical = json.dumps([method, path, body], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def valid_key(key: str) -> bool:
    return 0 < len(key) <= MAX_KEY and key.isascii() and key.isprintable()


class IdempotencyKeys:
    """The only code that reads or writes ``api_idempotency``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def begin(self, token_name: str, key: str, request_hash: str, now: float | None = None) -> Replay | None:
        """Claim KEY for this request (None: go ahead) or return the stored first result."""
        now = time.time() if now is None else now
        with self.store.transaction() as db:
            db.execute("DELETE FROM api_idempotency WHERE created_at < ?", (now - KEEP_SECONDS,))
            row = db.execute("SELECT * FROM api_idempotency WHERE token_name = ? AND key = ?",
                             (token_name, key)).fetchone()
            if row is not None:
                if row["request_hash"] != request_hash:
                    raise KeyConflict("Idempotency-Key was already used with a different request", 422)
                if row["state"] == "done":
                    return Replay(int(row["status"]), json.loads(row["response"]))
                if row["created_at"] > now - STALE_SECONDS:
                    raise KeyConflict("a request with this Idempotency-Key is still in progress; retry later", 409)
            db.execute("INSERT INTO api_idempotency (token_name, key, request_hash, state, created_at) "
                       "VALUES (?, ?, ?, 'pending', ?) ON CONFLICT (token_name, key) DO UPDATE SET "
                       "request_hash = excluded.request_hash, state = 'pending', status = NULL, response = NULL, "
                       "created_at = excluded.created_at", (token_name, key, request_hash, now))
        return None

    def finish(self, token_name: str, key: str, status: int, body: dict[str, Any]) -> None:
        """Store the result of the claimed request, without its secrets."""
        kept = {k: (None if k in SECRET_FIELDS and v is not None else v) for k, v in body.items()}
        self.store.db.execute("UPDATE api_idempotency SET state = 'done', status = ?, response = ? "
                              "WHERE token_name = ? AND key = ?", (status, json.dumps(kept), token_name, key))

    def abandon(self, token_name: str, key: str) -> None:
        """Forget the claim of a request that failed, so a retry runs again."""
        self.store.db.execute("DELETE FROM api_idempotency WHERE token_name = ? AND key = ? AND state = 'pending'",
                              (token_name, key))
