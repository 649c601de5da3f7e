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
from typing import Any

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

# -- the schema: numbered migrations, owned here --------------------------------------------
#
# SQLite (each host's own store) keeps its version in ``PRAGMA user_version``; PostgreSQL (the
# fleet's shared store, schema ``guard``) in ``guard.schema_version``. A store newer than this
# code is refused (:class:`StoreTooNew`), never written. Migration 1 is the schema the guard had
# before versions: stores made then are taken up as they are (every statement is IF NOT EXISTS).

SQLITE_MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, """
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
"""),
    # The shared store's local side: which rows the fleet has (remote_id), what to replay there
    # when it is back (outbox), and the sync marks (sync_meta).
    (2, """
ALTER TABLE attempts ADD COLUMN remote_id INTEGER;
CREATE INDEX IF NOT EXISTS attempts_unsent ON attempts (state) WHERE remote_id IS NULL;
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    op TEXT NOT NULL CHECK (op IN ('lift', 'forget', 'succeed', 'fail')),
    username TEXT,
    ip TEXT,
    remote_id INTEGER
);
CREATE TABLE IF NOT EXISTS sync_meta (
    key TEXT PRIMARY KEY,
    value REAL NOT NULL
);
"""),
)

PG_MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, """
CREATE TABLE guard.attempts (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts DOUBLE PRECISION NOT NULL,
    username TEXT NOT NULL,
    ip TEXT NOT NULL,
    ipkey TEXT NOT NULL,
    service TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'failed', 'cleared', 'succeeded', 'refused')),
    counted INTEGER NOT NULL DEFAULT 1,
    host TEXT NOT NULL DEFAULT COALESCE(current_setting('slotwarden.host', true), '')
);
CREATE INDEX attempts_pair ON guard.attempts (username, ip, ts);
CREATE INDEX attempts_ip ON guard.attempts (ipkey, ts);
CREATE INDEX attempts_user ON guard.attempts (username, ts);
CREATE INDEX attempts_ts ON guard.attempts (ts);
CREATE INDEX attempts_pending ON guard.attempts (state) WHERE state = 'pending';
CREATE TABLE guard.locks (
    kind TEXT NOT NULL CHECK (kind IN ('pair', 'ip', 'user')),
    key TEXT NOT NULL,
    reset_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    locked_until DOUBLE PRECISION NOT NULL DEFAULT 0,
    locked_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    level INTEGER NOT NULL DEFAULT 0,
    prev_until DOUBLE PRECISION NOT NULL DEFAULT 0,
    prev_level INTEGER NOT NULL DEFAULT 0,
    changed DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, key)
);
CREATE INDEX locks_changed ON guard.locks (changed);
-- Every write stamps the row with the server's clock: hosts pull what changed since they looked.
CREATE FUNCTION guard.locks_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.changed := extract(epoch FROM clock_timestamp());
    RETURN NEW;
END $$;
CREATE TRIGGER locks_touch BEFORE INSERT OR UPDATE ON guard.locks
    FOR EACH ROW EXECUTE FUNCTION guard.locks_touch();
CREATE TABLE guard.known_origins (
    username TEXT NOT NULL,
    ipkey TEXT NOT NULL,
    last DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (username, ipkey)
);
-- Data-subject requests every host must apply to its own copy (forget).
CREATE TABLE guard.events (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts DOUBLE PRECISION NOT NULL DEFAULT extract(epoch FROM clock_timestamp()),
    op TEXT NOT NULL CHECK (op IN ('forget')),
    username TEXT,
    ip TEXT,
    host TEXT NOT NULL DEFAULT COALESCE(current_setting('slotwarden.host', true), '')
);
CREATE INDEX events_ts ON guard.events (ts);
-- The hot path in one round trip each (pam_hooks.pgstore.SharedStorePolicy): the same decisions as
-- LockoutPolicy.reserve/succeed, under the counters' advisory locks (ids ascending).
CREATE FUNCTION guard.count_for(p_kind text, p_user text, p_ip text, p_ipkey text, p_since float8)
RETURNS integer LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF p_kind = 'pair' THEN
        RETURN (SELECT count(*) FROM guard.attempts WHERE username = p_user AND ip = p_ip AND counted = 1
                AND state IN ('pending', 'failed') AND ts > p_since);
    ELSIF p_kind = 'ip' THEN
        RETURN (SELECT count(*) FROM guard.attempts WHERE ipkey = p_ipkey AND counted = 1
                AND state IN ('pending', 'failed') AND ts > p_since);
    END IF;
    RETURN (SELECT count(*) FROM guard.attempts WHERE username = p_user AND counted = 1
            AND state IN ('pending', 'failed') AND ts > p_since);
END $$;
CREATE FUNCTION guard.set_lock(p_kind text, p_key text, p_now float8, p_retention float8, p_lock_for float8,
                               p_lock_max float8) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
    lk guard.locks%ROWTYPE;
    lvl integer := 0;
    u float8;
BEGIN
    SELECT * INTO lk FROM guard.locks WHERE kind = p_kind AND key = p_key;
    IF FOUND AND lk.locked_at <> 0 AND p_now - lk.locked_at < p_retention THEN
        lvl := lk.level + 1;
    END IF;
    u := p_now + least(p_lock_for * power(2::float8, least(lvl, 40)), p_lock_max);
    INSERT INTO guard.locks (kind, key, locked_until, locked_at, level, prev_until, prev_level)
    VALUES (p_kind, p_key, u, p_now, lvl, 0, 0)
    ON CONFLICT (kind, key) DO UPDATE SET prev_until = locks.locked_until, prev_level = locks.level,
        locked_until = excluded.locked_until, locked_at = excluded.locked_at, level = excluded.level;
    RETURN u;
END $$;
CREATE FUNCTION guard.take_locks(p_lock_ids bigint[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    x bigint;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(6002259625573875713);  -- pgstore._FLEET_LOCK
    FOREACH x IN ARRAY coalesce(p_lock_ids, '{}') LOOP
        PERFORM pg_advisory_xact_lock(x);
    END LOOP;
END $$;
CREATE FUNCTION guard.reserve(
    p_now float8, p_user text, p_ip text, p_ipkey text, p_service text, p_counted integer, p_prev bigint,
    p_kinds text[], p_keys text[], p_limits integer[], p_lock_ids bigint[],
    p_window float8, p_known_for float8, p_retention float8, p_lock_for float8, p_lock_max float8,
    OUT allowed boolean, OUT rule text, OUT until float8, OUT record bigint, OUT ip_until float8)
LANGUAGE plpgsql AS $$
DECLARE
    n integer := coalesce(array_length(p_kinds, 1), 0);
    lk guard.locks%ROWTYPE;
    since float8;
    cnt integer[] := '{}';
    spared boolean;
    u float8;
BEGIN
    PERFORM guard.take_locks(p_lock_ids);
    IF p_prev IS NOT NULL THEN
        UPDATE guard.attempts SET state = 'failed' WHERE id = p_prev AND state = 'pending';
    END IF;
    spared := p_ipkey <> '' AND EXISTS (SELECT 1 FROM guard.known_origins WHERE username = p_user
                                        AND ipkey = p_ipkey AND last > p_now - p_known_for);
    FOR i IN 1..n LOOP
        SELECT * INTO lk FROM guard.locks WHERE kind = p_kinds[i] AND key = p_keys[i];
        IF FOUND AND lk.locked_until > p_now AND NOT (p_kinds[i] = 'user' AND spared) THEN
            allowed := false; rule := p_kinds[i]; until := lk.locked_until;
            EXIT;
        END IF;
    END LOOP;
    IF allowed IS NULL THEN
        FOR i IN 1..n LOOP
            since := p_now - p_window;
            SELECT * INTO lk FROM guard.locks WHERE kind = p_kinds[i] AND key = p_keys[i];
            IF FOUND THEN
                since := greatest(since, lk.reset_at, CASE WHEN lk.locked_until <= p_now THEN lk.locked_until
                                                           ELSE 0 END);
            END IF;
            cnt[i] := guard.count_for(p_kinds[i], p_user, p_ip, p_ipkey, since);
            IF cnt[i] >= p_limits[i] AND NOT (p_kinds[i] = 'user' AND spared) THEN
                -- possible after the limit was lowered, or after records came back from a host: lock now
                allowed := false; rule := p_kinds[i];
                until := guard.set_lock(p_kinds[i], p_keys[i], p_now, p_retention, p_lock_for, p_lock_max);
                IF p_kinds[i] = 'ip' THEN ip_until := until; END IF;
                EXIT;
            END IF;
        END LOOP;
    END IF;
    IF allowed IS NOT NULL THEN
        INSERT INTO guard.attempts (ts, username, ip, ipkey, service, state, counted)
        VALUES (p_now, p_user, p_ip, p_ipkey, p_service, 'refused', p_counted) RETURNING id INTO record;
        RETURN;
    END IF;
    INSERT INTO guard.attempts (ts, username, ip, ipkey, service, state, counted)
    VALUES (p_now, p_user, p_ip, p_ipkey, p_service, 'pending', p_counted) RETURNING id INTO record;
    allowed := true;
    FOR i IN 1..n LOOP
        IF cnt[i] + 1 >= p_limits[i] THEN
            u := guard.set_lock(p_kinds[i], p_keys[i], p_now, p_retention, p_lock_for, p_lock_max);
            IF p_kinds[i] = 'ip' THEN ip_until := u; END IF;
        END IF;
    END LOOP;
END $$;
CREATE FUNCTION guard.succeed(
    p_id bigint, p_now float8, p_ipkey text, p_kinds text[], p_keys text[], p_limits integer[],
    p_lock_ids bigint[], p_fails bigint[], p_window float8, p_known_max integer, OUT unblocked text[])
LANGUAGE plpgsql AS $$
DECLARE
    n integer := coalesce(array_length(p_kinds, 1), 0);
    a guard.attempts%ROWTYPE;
    lk guard.locks%ROWTYPE;
    since float8;
BEGIN
    unblocked := '{}';
    PERFORM guard.take_locks(p_lock_ids);
    -- failures reported since the last round trip (deferred by the caller) land first
    UPDATE guard.attempts SET state = 'failed' WHERE id = ANY(coalesce(p_fails, '{}')) AND state = 'pending';
    SELECT * INTO a FROM guard.attempts WHERE id = p_id;
    IF NOT FOUND OR a.state NOT IN ('pending', 'failed') THEN
        RETURN;
    END IF;
    UPDATE guard.attempts SET state = 'succeeded' WHERE id = p_id;
    UPDATE guard.attempts SET state = 'cleared' WHERE username = a.username AND ip = a.ip AND state = 'failed';
    FOR i IN 1..n LOOP
        SELECT * INTO lk FROM guard.locks WHERE kind = p_kinds[i] AND key = p_keys[i];
        IF NOT FOUND OR lk.locked_until <= p_now OR lk.locked_at < a.ts THEN
            CONTINUE;
        END IF;
        since := greatest(p_now - p_window, lk.reset_at, CASE WHEN lk.prev_until <= p_now THEN lk.prev_until
                                                              ELSE 0 END);
        IF guard.count_for(p_kinds[i], a.username, a.ip, a.ipkey, since) >= p_limits[i] THEN
            CONTINUE;
        END IF;
        UPDATE guard.locks SET locked_until = prev_until, level = prev_level
        WHERE kind = p_kinds[i] AND key = p_keys[i];
        IF p_kinds[i] = 'ip' THEN unblocked := unblocked || p_keys[i]; END IF;
    END LOOP;
    IF p_ipkey <> '' THEN
        INSERT INTO guard.known_origins (username, ipkey, last) VALUES (a.username, p_ipkey, p_now)
        ON CONFLICT (username, ipkey) DO UPDATE SET last = excluded.last;
        DELETE FROM guard.known_origins WHERE username = a.username AND ipkey NOT IN
            (SELECT ipkey FROM guard.known_origins WHERE username = a.username ORDER BY last DESC LIMIT p_known_max);
    END IF;
END $$;
"""),
)

SQLITE_VERSION = SQLITE_MIGRATIONS[-1][0]
PG_VERSION = PG_MIGRATIONS[-1][0]

# A fresh store's whole schema at once (in-memory stores, tests); files go through migrate().
SCHEMA = "\n".join(sql for _, sql in SQLITE_MIGRATIONS) + f"PRAGMA user_version = {SQLITE_VERSION};\n"


class StoreTooNew(RuntimeError):
    """The store was written by a newer slotwarden (its schema version is above ours)."""


def _statements(script: str) -> list[str]:
    # The SQLite migrations hold no ';' inside literals or bodies.
    lines = [ln for ln in script.splitlines() if not ln.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def migrate(conn: sqlite3.Connection) -> int:
    """Bring a SQLite store to :data:`SQLITE_VERSION`, each migration in its own transaction.

    Returns the version found. Raises :class:`StoreTooNew` (nothing written) for a newer store.
    Safe against a concurrent migrator: the version is read again under the write lock.
    """
    found = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if found > SQLITE_VERSION:
        raise StoreTooNew(f"guard store schema version {found} is newer than this slotwarden's "
                          f"({SQLITE_VERSION}); upgrade slotwarden")
    for version, script in SQLITE_MIGRATIONS:
        if version <= found:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            now = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if now < version:
                for stmt in _statements(script):
                    conn.execute(stmt)
                conn.execute(f"PRAGMA user_version = {version}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return found


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
            migrate(conn)
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


def attempts_since(conn: Any, username: str, since: float) -> list[dict[str, object]]:
    """Records of ``username`` (the recorded form) from ``since`` on, one per address: ip, count, first, last."""
    rows = conn.execute(
        "SELECT ip, COUNT(*) AS count, MIN(ts) AS first, MAX(ts) AS last FROM attempts "
        "WHERE username = ? AND ts >= ? GROUP BY ip ORDER BY last DESC", (username, since)).fetchall()
    return [{"ip": r[0], "count": r[1], "first": r[2], "last": r[3]} for r in rows]


def expired_groups(conn: Any, before: float) -> list[dict[str, object]]:
    """What :func:`purge_attempts` would remove, one per (username, ip): username, ip, n."""
    rows = conn.execute("SELECT username, ip, COUNT(*) AS n FROM attempts WHERE ts < ? GROUP BY username, ip "
                        "ORDER BY username, ip", (before,)).fetchall()
    return [{"username": r[0], "ip": r[1], "n": r[2]} for r in rows]


def forget_attempts(conn: Any, username: str) -> int:
    """Delete every record of ``username`` (as typed or as ``guard list`` shows it): its attempts,
    its per-user lock and every pair lock naming it, its known origins. Returns attempt rows removed.

    ``conn`` is the SQLite store or the shared store's connection (:mod:`pam_hooks.pgstore`).
    """
    from pam_hooks.protocol import name_key

    u = name_key(username)
    n = conn.execute("DELETE FROM attempts WHERE username = ?", (u,)).rowcount
    conn.execute("DELETE FROM locks WHERE (kind = 'user' AND key = ?)"
                 " OR (kind = 'pair' AND substr(key, 1, CAST(? AS INTEGER)) = ?)", (u, len(u) + 1, u + "\t"))
    conn.execute("DELETE FROM known_origins WHERE username = ?", (u,))
    return int(n)


def list_known_origins(conn: sqlite3.Connection, username: str) -> list[dict[str, object]]:
    """Where ``username`` logged in with a password (origin, last success as UNIX time), newest first."""
    from pam_hooks.protocol import name_key

    rows = conn.execute("SELECT ipkey, last FROM known_origins WHERE username = ? ORDER BY last DESC",
                        (name_key(username),)).fetchall()
    return [{"origin": r[0], "last": r[1]} for r in rows]


def purge_attempts(conn: Any, before: float, known_before: float | None = None) -> int:
    """Delete records older than ``before`` (and counters idle since); returns attempt rows removed.

    Known origins last seen before ``known_before`` go too (none when it is None). ``conn`` is
    the SQLite store or the shared store's connection.
    """
    n = conn.execute("DELETE FROM attempts WHERE ts < ?", (before,)).rowcount
    conn.execute("DELETE FROM locks WHERE reset_at < ? AND locked_until < ? AND locked_at < ?",
                 (before, before, before))
    if known_before is not None:
        conn.execute("DELETE FROM known_origins WHERE last < ?", (known_before,))
    return int(n)
