"""The state store: SQLite in WAL mode under the state dir, root-only.

Tables: ``slots`` (one row per slot, from the operator's data table), ``audit`` (append-only:
who, what, when, on which slot — never a secret), ``host_settings`` (what ``host init`` set
up) and ``slot_ids`` (every UID/GID ever handed to a slot, and when it was retired: kept
forever, so an id never passes to a second tenant). Other modules add their own tables with :meth:`Store.ensure_schema`.

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
from collections.abc import Callable, Iterator
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
CREATE TABLE IF NOT EXISTS slot_ids (
    id          INTEGER PRIMARY KEY,
    username    TEXT NOT NULL,
    allocated_at REAL NOT NULL,
    retired_at  REAL
);
CREATE INDEX IF NOT EXISTS slot_ids_username ON slot_ids(username);
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

    # --- slot ids ---------------------------------------------------------------------------

    @property
    def high_water_path(self) -> Path:
        """A file beside the database holding the highest id ever handed out.

        Kept outside the database so that restoring an older store cannot bring back ids
        handed out (and retired) after the backup was taken.
        """
        return self.path.with_name(self.path.name + ".ids-high-water")

    def _high_water(self) -> int:
        try:
            text = self.high_water_path.read_text().strip()
        except FileNotFoundError:
            return 0
        if not text.isdigit():
            raise SlotError(f"{self.high_water_path} is corrupt ({text[:20]!r}); refusing to hand out ids")
        return int(text)

    def _set_high_water(self, value: int) -> None:
        tmp = self.high_water_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, f"{value}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.high_water_path)

    def allocate_ids(self, usernames: list[str], lowest: int, highest: int,
                     taken: Callable[[int], bool]) -> dict[str, int]:
        """One id per name from LOWEST..HIGHEST, each above every id ever handed out.

        A name that still holds a live (unretired) id keeps it: that is a re-run of a half-made
        create. Ids for which TAKEN is true (in passwd, group or a subordinate range) are skipped
        and burnt. Raises SlotError when the range is used up.
        """
        out: dict[str, int] = {}
        with self.transaction() as db:
            top = db.execute("SELECT MAX(id) FROM slot_ids").fetchone()[0] or 0
            nxt = max(lowest, top + 1, self._high_water() + 1)
            for name in usernames:
                row = db.execute("SELECT id FROM slot_ids WHERE username = ? AND retired_at IS NULL",
                                 (name,)).fetchone()
                if row is not None:
                    out[name] = int(row["id"])
                    continue
                while nxt <= highest and taken(nxt):
                    nxt += 1
                if nxt > highest:
                    raise SlotError(f"the slot id range {lowest}-{highest} is used up "
                                    "(slots.uid_min/uid_max): ids are never handed out twice")
                db.execute("INSERT INTO slot_ids (id, username, allocated_at) VALUES (?, ?, ?)",
                           (nxt, name, time.time()))
                out[name] = nxt
                nxt += 1
            if out:
                self._set_high_water(max(self._high_water(), *out.values()))
        return out

    def retire_ids(self, usernames: list[str]) -> None:
        """Mark the live ids of USERNAMES retired (they are never handed out again)."""
        now = time.time()
        self.db.executemany("UPDATE slot_ids SET retired_at = ? WHERE username = ? AND retired_at IS NULL",
                            [(now, n) for n in usernames])

    def burn_id(self, uid: int) -> None:
        """Retire UID before use: something outside the store took it meanwhile."""
        self.db.execute("UPDATE slot_ids SET retired_at = ? WHERE id = ? AND retired_at IS NULL", (time.time(), uid))

    def retire_id(self, uid: int, username: str) -> None:
        """Record UID as USERNAME's and retired, also when it was never allocated here.

        A slot made before ids came from the range (its uid from useradd) is removed like any
        other; its uid goes into the record, so the record holds every slot uid ever retired.
        """
        now = time.time()
        self.db.execute("INSERT OR IGNORE INTO slot_ids (id, username, allocated_at, retired_at) VALUES (?, ?, ?, ?)",
                        (uid, username, now, now))
        self.db.execute("UPDATE slot_ids SET retired_at = ? WHERE id = ? AND username = ? AND retired_at IS NULL",
                        (now, uid, username))

    def slot_ids(self) -> list[dict[str, Any]]:
        """Every id ever handed to a slot: id, username, allocated_at, retired_at (None: live)."""
        return [dict(r) for r in self.db.execute("SELECT * FROM slot_ids ORDER BY id")]

    # --- homes kept with --keep-data -------------------------------------------------------

    def add_kept_home(self, path: str, username: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO kept_homes VALUES (?, ?, ?)", (path, username, time.time()))

    def kept_homes(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute("SELECT * FROM kept_homes ORDER BY kept_at")]

    def delete_kept_home(self, path: str) -> None:
        self.db.execute("DELETE FROM kept_homes WHERE path = ?", (path,))
