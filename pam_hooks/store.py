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
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

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
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a crash of the service (the
        # supervisor restarts it); only a power cut may drop the last commits,
        # and FULL would put an fsync on every login attempt.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
        for suffix in ("-wal", "-shm"):
            side = Path(str(path) + suffix)
            if side.exists():
                os.chmod(side, 0o600)
    finally:
        os.umask(old)
    return conn


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


def forget_attempts(conn: sqlite3.Connection, username: str) -> int:
    """Delete every record (and counter) of ``username`` as typed; returns attempt rows removed."""
    from pam_hooks.protocol import name_key

    u = name_key(username)
    n = conn.execute("DELETE FROM attempts WHERE username = ?", (u,)).rowcount
    conn.execute("DELETE FROM locks WHERE (kind = 'user' AND key = ?) OR (kind = 'pair' AND substr(key, 1, ?) = ?)",
                 (u, len(u) + 1, u + "\t"))
    return int(n)


def purge_attempts(conn: sqlite3.Connection, before: float) -> int:
    """Delete records older than ``before`` (and counters idle since); returns attempt rows removed."""
    n = conn.execute("DELETE FROM attempts WHERE ts < ?", (before,)).rowcount
    conn.execute("DELETE FROM locks WHERE MAX(reset_at, locked_until, locked_at) < ?", (before,))
    return int(n)
