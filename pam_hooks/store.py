"""AttemptStore: the guard's SQLite (WAL) file at ``<state_dir>/guard.db``.

Only the guard service writes it during normal operation (one thread, so the
counts it reads and the rows it writes can never interleave with another
decision). Operator commands open it directly only when the service is down.

Tables:

- ``attempts``: one row per password try that reached the stack —
  ``state`` is ``pending`` (reserved at preauth; counts as a failure until an
  outcome says otherwise), ``failed``, ``cleared`` (a failure forgiven by a
  later success of the same pair), ``succeeded`` or ``refused`` (turned away
  by a lock; no password was checked).
- ``locks``: one row per counted key (``pair``, ``ip``, ``user``) with the
  lock window, the repeat-offender level and the point from which the count
  starts again (after a success or a lift).
- ``blocks``: blackhole routes the service has installed, so they are removed
  after a restart too.
- ``known_origins``: where each user last logged in with a password (address,
  IPv6 /64 or local caller; at most ``KNOWN_MAX`` per user, dropped after
  ``guard.known_for``), so the per-username rule never refuses her there.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

# SQLite's own words for a damaged file (anything else, e.g. a locked or full disk, is not corruption).
SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26


class StoreCorrupt(sqlite3.DatabaseError):
    """The store file is damaged (not a database, or malformed)."""


def is_corruption(exc: BaseException) -> bool:
    """True for SQLite's "database disk image is malformed" / "file is not a database"."""
    if isinstance(exc, StoreCorrupt):
        return True
    # Subclasses (OperationalError: locked, I/O, full disk; ProgrammingError: a closed
    # connection; IntegrityError ...) are never a reason to set a store aside.
    if type(exc) is not sqlite3.DatabaseError:
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    return code is None or code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)

SCHEMA = """
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    username TEXT NOT NULL,
    ip TEXT NOT NULL,
    ipkey TEXT NOT NULL,
    service TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'failed', 'cleared', 'succeeded', 'refused')),
    counted INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS attempts_pair ON attempts (username, ip, ts);
CREATE INDEX IF NOT EXISTS attempts_ip ON attempts (ipkey, ts);
CREATE INDEX IF NOT EXISTS attempts_user ON attempts (username, ts);
CREATE INDEX IF NOT EXISTS attempts_ts ON attempts (ts);
CREATE INDEX IF NOT EXISTS attempts_pending ON attempts (state) WHERE state = 'pending';
CREATE TABLE IF NOT EXISTS locks (
    kind TEXT NOT NULL CHECK (kind IN ('pair', 'ip', 'user')),
    key TEXT NOT NULL,
    reset_at REAL NOT NULL DEFAULT 0,
    locked_until REAL NOT NULL DEFAULT 0,
    locked_at REAL NOT NULL DEFAULT 0,
    level INTEGER NOT NULL DEFAULT 0,
    prev_until REAL NOT NULL DEFAULT 0,
    prev_level INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS blocks (
    net TEXT PRIMARY KEY,
    until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS known_origins (
    username TEXT NOT NULL,
    ipkey TEXT NOT NULL,
    last REAL NOT NULL,
    PRIMARY KEY (username, ipkey)
);
"""


def open_store(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the store, root-only, in WAL mode.

    The directory is created 0700 and the files 0600 before SQLite touches
    them, so a tenant can never read the records nor reset a count.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    old = os.umask(0o077)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(path, 0o600)
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=10.0)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives a crash of the service (the
            # supervisor restarts it); only a power cut may drop the last commits,
            # and FULL would put an fsync on every login attempt.
            conn.execute("PRAGMA synchronous=NORMAL")
            # Sorts and GROUP BY in memory: no temp file to open when descriptors run out.
            conn.execute("PRAGMA temp_store=MEMORY")
            conn.executescript(SCHEMA)
        except BaseException:
            conn.close()
            raise
        for suffix in ("-wal", "-shm"):
            side = Path(str(path) + suffix)
            if side.exists():
                os.chmod(side, 0o600)
    finally:
        os.umask(old)
    return conn


def set_aside(path: Path, now: float | None = None) -> Path:
    """Rename a damaged store (and its -wal/-shm) to ``guard.db.corrupt-<UTC time>``; returns the new name.

    Nothing is deleted: the operator (or a forensic look) can still read what is left.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    kept = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while kept.exists():
        n += 1
        kept = path.with_name(f"{path.name}.corrupt-{stamp}.{n}")
    for suffix in ("", "-wal", "-shm"):
        side = Path(str(path) + suffix)
        if side.exists():
            os.replace(side, Path(str(kept) + suffix))
    return kept


def open_checked(path: Path) -> tuple[sqlite3.Connection, str | None]:
    """Open the store for the service; a damaged one is set aside and a fresh one started.

    Returns the connection and, when the old file was set aside, a sentence
    saying so (for syslog and ``guard status``). Never raises for corruption.
    """
    try:
        conn = open_store(path)
        try:
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError:
            conn.close()
            raise
        if check != "ok":
            conn.close()
            raise StoreCorrupt(f"quick_check: {str(check)[:200]}")
        return conn, None
    except sqlite3.DatabaseError as exc:
        if not is_corruption(exc):
            raise
        kept = set_aside(path)
        return open_store(path), f"store {path} was damaged ({exc}); set aside as {kept}, started a fresh store"


# -- the functions provisioner.retention uses (data report, forget, 24 h expiry) ----------


def list_attempts(conn: sqlite3.Connection, username: str) -> list[dict[str, object]]:
    """Records for ``username`` as typed, one per address: ip, count, first, last (UNIX time)."""
    from pam_hooks.protocol import name_key

    rows = conn.execute(
        "SELECT ip, service, SUM(state IN ('pending', 'failed')) AS count, COUNT(*) AS attempts,"
        " MIN(ts) AS first, MAX(ts) AS last FROM attempts WHERE username = ? GROUP BY ip ORDER BY last DESC",
        (name_key(username),),
    ).fetchall()
    return [dict(r) if isinstance(r, sqlite3.Row) else dict(zip(("ip", "service", "count", "attempts", "first",
                                                                 "last"), r, strict=True)) for r in rows]


def attempts_since(conn: sqlite3.Connection, username: str, since: float) -> list[dict[str, object]]:
    """Records of ``username`` (the recorded form) from ``since`` on, one per address: ip, count, first, last."""
    rows = conn.execute(
        "SELECT ip, COUNT(*) AS count, MIN(ts) AS first, MAX(ts) AS last FROM attempts "
        "WHERE username = ? AND ts >= ? GROUP BY ip ORDER BY last DESC", (username, since)).fetchall()
    return [{"ip": r[0], "count": r[1], "first": r[2], "last": r[3]} for r in rows]


def expired_groups(conn: sqlite3.Connection, before: float) -> list[dict[str, object]]:
    """What :func:`purge_attempts` would remove, one per (username, ip): username, ip, n."""
    rows = conn.execute("SELECT username, ip, COUNT(*) AS n FROM attempts WHERE ts < ? GROUP BY username, ip "
                        "ORDER BY username, ip", (before,)).fetchall()
    return [{"username": r[0], "ip": r[1], "n": r[2]} for r in rows]


def forget_attempts(conn: sqlite3.Connection, username: str) -> int:
    """Delete every record (and counter) of ``username`` as typed; returns attempt rows removed."""
    from pam_hooks.protocol import name_key

    u = name_key(username)
    n = conn.execute("DELETE FROM attempts WHERE username = ?", (u,)).rowcount
    conn.execute("DELETE FROM locks WHERE (kind = 'user' AND key = ?) OR (kind = 'pair' AND substr(key, 1, ?) = ?)",
                 (u, len(u) + 1, u + "\t"))
    conn.execute("DELETE FROM known_origins WHERE username = ?", (u,))
    return int(n)


def list_known_origins(conn: sqlite3.Connection, username: str) -> list[dict[str, object]]:
    """Where ``username`` logged in with a password (origin, last success as UNIX time), newest first."""
    from pam_hooks.protocol import name_key

    rows = conn.execute("SELECT ipkey, last FROM known_origins WHERE username = ? ORDER BY last DESC",
                        (name_key(username),)).fetchall()
    return [{"origin": r[0], "last": r[1]} for r in rows]


def purge_attempts(conn: sqlite3.Connection, before: float, known_before: float | None = None) -> int:
    """Delete records older than ``before`` (and counters idle since); returns attempt rows removed.

    Known origins last seen before ``known_before`` go too (none when it is None).
    """
    n = conn.execute("DELETE FROM attempts WHERE ts < ?", (before,)).rowcount
    conn.execute("DELETE FROM locks WHERE MAX(reset_at, locked_until, locked_at) < ?", (before,))
    if known_before is not None:
        conn.execute("DELETE FROM known_origins WHERE last < ?", (known_before,))
    return int(n)
