"""The state store: SQLite in WAL mode under the state dir, root-only.

Tables: ``slots`` (one row per slot, from the operator's data table), ``audit`` (append-only:
who, what, when, on which slot — never a secret) and ``host_settings`` (what ``host init`` set
up). Other modules add their own tables with :meth:`Store.ensure_schema`.

>>> import tempfile, pathlib
>>> s = Store(pathlib.Path(tempfile.mkdtemp()) / "t.db")
>>> s.audit("test", "noop", None, {})
>>> len(s.audit_entries())
1
"""

from __future__ import annotations

import json
import os
import pwd
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner.errors import SlotError

SCHEMA = """
CREATE TABLE IF NOT EXISTS slots (
    username     TEXT PRIMARY KEY,
    uid          INTEGER,
    email        TEXT NOT NULL,
    country      TEXT NOT NULL,
    payment_ref  TEXT,
    quota_bytes  INTEGER,
    home         TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('creating', 'active', 'removing', 'suspended')),
    created_at   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        REAL NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    username  TEXT,
    detail    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_username ON audit(username);
CREATE TABLE IF NOT EXISTS host_settings (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS kept_homes (
    path      TEXT PRIMARY KEY,
    username  TEXT NOT NULL,
    kept_at   REAL NOT NULL
);
"""


@dataclass(frozen=True)
class SlotRecord:
    """A slot as the store knows it."""

    username: str
    uid: int | None
    email: str
    country: str
    payment_ref: str | None
    quota_bytes: int | None
    home: str
    state: str
    created_at: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def current_actor() -> str:
    """Who is acting, for the audit log: the login behind sudo if any, else the effective user."""
    sudo_user = os.environ.get("SUDO_USER")
    try:
        me = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        me = str(os.geteuid())
    return f"{sudo_user} (via sudo)" if sudo_user else me


class Store:
    """A connection to the state database; cheap to open, one per command or request."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fresh = not path.exists()
            self.db = sqlite3.connect(str(path), timeout=30, isolation_level=None)
            if fresh:
                os.chmod(path, 0o600)
        except (OSError, sqlite3.Error) as exc:
            raise SlotError(f"cannot open the store {path}: {exc}") from None
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: durable across a process kill (what the kill -9 tests need); a power loss
        # may lose the last commit, which `doctor` then reports as drift.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.ensure_schema(SCHEMA)

    def ensure_schema(self, sql: str) -> None:
        """Create tables and indexes that are not there yet (idempotent)."""
        self.db.executescript(sql)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """An immediate (write-locking) transaction."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- slots -----------------------------------------------------------------------------

    def get_slot(self, username: str) -> SlotRecord | None:
        row = self.db.execute("SELECT * FROM slots WHERE username = ?", (username,)).fetchone()
        return SlotRecord(**dict(row)) if row else None

    def list_slots(self) -> list[SlotRecord]:
        rows = self.db.execute("SELECT * FROM slots ORDER BY username").fetchall()
        return [SlotRecord(**dict(r)) for r in rows]

    def insert_slot(self, rec: SlotRecord) -> None:
        try:
            self.db.execute(
                "INSERT INTO slots VALUES (:username, :uid, :email, :country, :payment_ref, "
                ":quota_bytes, :home, :state, :created_at)",
                rec.as_dict(),
            )
        except sqlite3.IntegrityError:
            raise SlotError(f"slot {rec.username!r} already exists") from None

    _UPDATABLE = frozenset({"uid", "email", "country", "payment_ref", "quota_bytes", "state"})

    def update_slot(self, username: str, **values: Any) -> None:
        bad = set(values) - self._UPDATABLE
        if bad:
            raise ValueError(f"not an updatable slot column: {sorted(bad)}")
        cols = ", ".join(f"{k} = :{k}" for k in values)  # names checked against _UPDATABLE
        self.db.execute(f"UPDATE slots SET {cols} WHERE username = :username",  # noqa: S608
                        {**values, "username": username})

    def delete_slot(self, username: str) -> None:
        self.db.execute("DELETE FROM slots WHERE username = ?", (username,))

    # --- audit -----------------------------------------------------------------------------

    def audit(self, actor: str, action: str, username: str | None, detail: dict[str, Any]) -> None:
        """Append an audit entry. DETAIL must never hold a secret."""
        self.db.execute(
            "INSERT INTO audit (at, actor, action, username, detail) VALUES (?, ?, ?, ?, ?)",
            (time.time(), actor, action, username, json.dumps(detail, sort_keys=True)),
        )

    def audit_entries(self, username: str | None = None) -> list[dict[str, Any]]:
        if username is None:
            rows = self.db.execute("SELECT * FROM audit ORDER BY id").fetchall()
        else:
            rows = self.db.execute("SELECT * FROM audit WHERE username = ? ORDER BY id", (username,)).fetchall()
        return [{**dict(r), "detail": json.loads(r["detail"])} for r in rows]

    # --- host settings ---------------------------------------------------------------------

    def host_settings(self) -> dict[str, str]:
        return {r["key"]: r["value"] for r in self.db.execute("SELECT key, value FROM host_settings")}

    def set_host_settings(self, values: dict[str, str]) -> None:
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO host_settings (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                list(values.items()),
            )

    # --- homes kept with --keep-data -------------------------------------------------------

    def add_kept_home(self, path: str, username: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO kept_homes VALUES (?, ?, ?)", (path, username, time.time()))

    def kept_homes(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute("SELECT * FROM kept_homes ORDER BY kept_at")]

    def delete_kept_home(self, path: str) -> None:
        self.db.execute("DELETE FROM kept_homes WHERE path = ?", (path,))
