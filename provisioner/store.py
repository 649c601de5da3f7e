"""The state store: SQLite in WAL mode under the state dir, root-only.

Tables: ``slots`` (one row per slot, from the operator's data table), ``audit`` (append-only:
who, what, when, on which slot — never a secret), ``host_settings`` (what ``host init`` set
up) and ``slot_ids`` (every UID/GID ever handed to a slot, and when it was retired: kept
forever, so an id never passes to a second tenant). The tables are made by the migrations in
:mod:`provisioner.db.migrations`; other areas keep their own repository classes over the same
connection (:attr:`Store.db`). By default the store is SQLite under the state dir; ``[store] url``
points it at PostgreSQL (see :func:`open_store`).

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
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner.config import Config
from provisioner.db import Database, IntegrityError, check, connect, upgrade
from provisioner.errors import SlotError


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

    def __init__(self, path: Path, db: Database | None = None) -> None:
        """Open the SQLite store at PATH, or DB when given (PATH then only names the local
        high-water file beside it); refuses a store whose schema is not this code's."""
        self.path = path
        self.db = db if db is not None else connect(str(path))
        try:
            check(self.db)
        except BaseException:
            self.db.close()
            raise

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """A write transaction holding the store's writer lock (BEGIN IMMEDIATE on SQLite)."""
        with self.db.transaction() as db:
            yield db

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
        except IntegrityError:
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

    def recent_audit(self, limit: int) -> list[dict[str, Any]]:
        """The LIMIT newest entries, newest first, DETAIL as stored (JSON text)."""
        rows = self.db.execute("SELECT at, actor, action, username, detail FROM audit ORDER BY id DESC LIMIT ?",
                               (limit,)).fetchall()
        return [dict(r) for r in rows]

    def audit_after(self, last_id: int, prefixes: tuple[str, ...]) -> list[dict[str, Any]]:
        """Entries after id LAST_ID whose action starts with one of PREFIXES (id, action, detail as text)."""
        like = " OR ".join("action LIKE ?" for _ in prefixes) or "1 = 0"
        rows = self.db.execute(f"SELECT id, action, detail FROM audit WHERE id > ? AND ({like}) ORDER BY id",  # noqa: S608
                               (last_id, *(p.replace("%", "") + "%" for p in prefixes))).fetchall()
        return [dict(r) for r in rows]

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
        self.db.execute("INSERT INTO slot_ids (id, username, allocated_at, retired_at) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (id) DO NOTHING", (uid, username, now, now))
        self.db.execute("UPDATE slot_ids SET retired_at = ? WHERE id = ? AND username = ? AND retired_at IS NULL",
                        (now, uid, username))

    def slot_ids(self) -> list[dict[str, Any]]:
        """Every id ever handed to a slot: id, username, allocated_at, retired_at (None: live)."""
        return [dict(r) for r in self.db.execute("SELECT * FROM slot_ids ORDER BY id")]

    # --- homes kept with --keep-data -------------------------------------------------------

    def add_kept_home(self, path: str, username: str) -> None:
        self.db.execute("INSERT INTO kept_homes VALUES (?, ?, ?) ON CONFLICT (path) DO UPDATE SET "
                        "username = excluded.username, kept_at = excluded.kept_at", (path, username, time.time()))

    def kept_homes(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute("SELECT * FROM kept_homes ORDER BY kept_at")]

    def delete_kept_home(self, path: str) -> None:
        self.db.execute("DELETE FROM kept_homes WHERE path = ?", (path,))


def store_target(config: Config) -> tuple[str, Path | None]:
    """Where ``[store]`` puts the store: (url, password file). Default: SQLite in the state dir.

    ``url = "postgresql://user@host:port/db"`` with ``password_file`` (root-only, mode 0600)
    holding its password; a URL with a password in it is refused when opened.
    """
    return config.store.url or f"sqlite://{config.db_path}", config.store.password_file


def open_database(config: Config, timeout: float = 30) -> Database:
    """A connection to the configured store, its schema not checked (``db upgrade`` uses it)."""
    url, password_file = store_target(config)
    return connect(url, password_file, timeout)


def upgrade_store(config: Config) -> tuple[str, int | None, int]:
    """Bring the configured store to this code's schema: (store, version before, after)."""
    db = open_database(config)
    try:
        before, after = upgrade(db)
        return db.where, before, after
    finally:
        db.close()


def open_store(config: Config) -> Store:
    """The configured store, its schema checked (see :func:`provisioner.db.check`)."""
    url, password_file = store_target(config)
    if url == f"sqlite://{config.db_path}":
        return Store(config.db_path)
    return Store(config.db_path, connect(url, password_file))
