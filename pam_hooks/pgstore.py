"""The fleet's shared guard store on PostgreSQL (schema ``guard``), for ``[guard] store = "postgresql://…"``.

Imported only when a postgresql store is configured: psycopg is needed then and only then.

- :class:`PgConn` - a psycopg connection that takes the policy's portable SQL (``?``
  placeholders, rows readable by name and by index) and serializes decisions **per counter**
  with transaction-scoped advisory locks taken in one order, so hosts deciding on one pair
  wait for each other and hosts deciding on other pairs do not.
- :func:`connect` - the connection: the password read from the root-only
  ``store_password_file`` (never a URL, a command line or a log), short timeouts so a lost
  store costs one request at most, ``search_path=guard`` and this host's name for its rows.
- :func:`migrate_pg` - the numbered migrations of :mod:`pam_hooks.store` (``PG_MIGRATIONS``),
  under an advisory lock so hosts starting together migrate once; a newer schema is refused.
- :class:`PgLink` - the connection's life: one try at start, then reconnects in a thread, so
  the guard's loop never waits on a store that is down.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import psycopg

from pam_hooks.config import GuardConfig
from pam_hooks.policy import KNOWN_MAX, Decision, LockoutPolicy
from pam_hooks.store import PG_MIGRATIONS, PG_VERSION, StoreTooNew

log = logging.getLogger("slotwarden.guard")

# Advisory lock ids (bigint space): decisions hold the fleet lock shared and their counters'
# locks exclusively; operator-wide changes (lift, forget) hold the fleet lock exclusively.
_FLEET_LOCK = 0x534C_4F54_0000_0001
_MIGRATE_LOCK = 0x534C_4F54_0000_0002
_KEY_SPACE = 0x534C_4F54 << 32

Error = psycopg.Error


class SharedStoreError(RuntimeError):
    """The shared store cannot be used as configured (a password file anyone else can read ...)."""


def read_password(path: Path) -> str:
    """The first line of the root-only password file; refused unless owned by root and mode 0600/0400."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise SharedStoreError(f"guard.store_password_file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "r", encoding="utf-8", errors="strict") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o077:
            raise SharedStoreError(f"guard.store_password_file {path} must be a regular file owned by root, "
                                   f"mode 0600 (it is {stat.S_IMODE(st.st_mode):04o}, uid {st.st_uid})")
        try:
            password = f.readline().rstrip("\r\n")
        except UnicodeDecodeError:
            raise SharedStoreError(f"guard.store_password_file {path} is not UTF-8") from None
    if not password:
        raise SharedStoreError(f"guard.store_password_file {path} is empty")
    return password


class PgRow(tuple[Any, ...]):
    """A row readable as ``row[0]`` and ``row["name"]`` (like sqlite3.Row)."""

    _names: tuple[str, ...] = ()

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, str):
            return tuple.__getitem__(self, self._names.index(i))
        return tuple.__getitem__(self, i)

    def keys(self) -> list[str]:
        return list(self._names)


def _row_factory(cursor: Any) -> Any:
    names = tuple(c.name for c in cursor.description or ())

    def make(values: Any) -> PgRow:
        row = PgRow(values)
        row._names = names
        return row

    return make


def key_lock_id(kind: str, key: str) -> int:
    """The advisory lock id of one counter (stable across hosts and Python runs)."""
    return _KEY_SPACE | zlib.crc32(f"{kind}\t{key}".encode())


class PgConn:
    """A psycopg connection (autocommit) that takes the policy's portable SQL."""

    dialect = "postgresql"

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw
        self._sql: dict[str, str] = {}

    def execute(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> Any:
        """Run one statement written with ``?`` placeholders; returns the cursor."""
        q = self._sql.get(sql)
        if q is None:
            q = self._sql[sql] = sql.replace("%", "%%").replace("?", "%s")
        return self.raw.execute(q, tuple(args)) if args else self.raw.execute(sql)

    def begin_for(self, keys: list[tuple[str, str]] | None) -> None:
        """BEGIN and the advisory locks (ascending ids: no two hosts wait on each other in a cycle)."""
        if keys is None:
            stmts = [f"SELECT pg_advisory_xact_lock({_FLEET_LOCK})"]
        else:
            stmts = [f"SELECT pg_advisory_xact_lock_shared({_FLEET_LOCK})"]
            stmts += [f"SELECT pg_advisory_xact_lock({i})" for i in sorted({key_lock_id(k, v) for k, v in keys})]
        # One round trip: the simple query protocol runs them in order (ids are our integers).
        self.raw.execute("BEGIN; " + "; ".join(stmts))

    def server_time(self) -> float:
        row = self.raw.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
        assert row is not None
        return float(row[0])

    def close(self) -> None:
        self.raw.close()


class SharedStorePolicy(LockoutPolicy):
    """LockoutPolicy on the shared store, its hot path (reserve, succeed, fail, account) one round trip
    each: the functions ``guard.reserve``/``guard.succeed`` make the same decisions in the server,
    under the counters' advisory locks. Everything else is LockoutPolicy's portable SQL."""

    def _args(self, keys: list[tuple[str, str]]) -> tuple[list[str], list[str], list[int], list[int]]:
        kinds = [k for k, _ in keys]
        return (kinds, [v for _, v in keys], [self._threshold(k) for k in kinds],
                sorted({key_lock_id(k, v) for k, v in keys}))

    def reserve(self, service: str, user: str, rhost: str, prev: int | None = None,
                now: float | None = None) -> Decision:
        now = self.clock() if now is None else now
        org = self.origin(rhost)
        kinds, keys, limits, ids = self._args(self._keys(user, org, now))
        c = self.cfg
        row = self.conn.execute(
            "SELECT allowed, rule, until, record, ip_until FROM guard.reserve(?::float8, ?, ?, ?, ?, ?::integer,"
            " ?::bigint, ?::text[], ?::text[], ?::integer[], ?::bigint[], ?::float8, ?::float8, ?::float8,"
            " ?::float8, ?::float8)",
            (now, user, org.ip, org.ipkey, service, 0 if org.allowed else 1, prev, kinds, keys, limits, ids,
             c.window, c.known_for, c.retention, c.lock_for, c.lock_max)).fetchone()
        allowed, rule, until, record, ip_until = row[0], row[1], row[2], int(row[3]), row[4]
        if ip_until is not None and org.is_ip:
            self._block(org.ipkey, float(ip_until))
        if allowed:
            return Decision(True, token=record, record=record)
        return Decision(False, rule, float(until), record=record)

    def succeed(self, token: int, now: float | None = None, user: str | None = None, ip: str | None = None,
                fails: list[int] | None = None) -> None:
        """Authsucc; ``user``/``ip`` of the try when the caller knows them (saves a round trip),
        ``fails`` the failures it deferred (they land first, in the same round trip)."""
        now = self.clock() if now is None else now
        if user is None or ip is None:
            first = self.conn.execute("SELECT username, ip FROM attempts WHERE id = ?", (token,)).fetchone()
            if first is None:
                return
            user, ip = first["username"], first["ip"]
        org = self.origin(ip)
        kinds, keys, limits, ids = self._args(self._keys(user, org, now))
        row = self.conn.execute(
            "SELECT unblocked FROM guard.succeed(?::bigint, ?::float8, ?, ?::text[], ?::text[], ?::integer[],"
            " ?::bigint[], ?::bigint[], ?::float8, ?::integer)",
            (token, now, org.ipkey, kinds, keys, limits, ids, list(fails or []), self.cfg.window,
             KNOWN_MAX)).fetchone()
        for net in row[0] or []:
            self._unblock(net)

    def fail(self, token: int) -> None:
        self.fail_many([token])

    def fail_many(self, tokens: list[int]) -> None:
        """Authfail for several tries at once (pending -> failed; they counted already)."""
        if tokens:
            self.conn.execute("UPDATE attempts SET state = 'failed' WHERE id = ANY(?::bigint[]) AND state = 'pending'",
                              (tokens,))

    def account(self, service: str, user: str, rhost: str, now: float | None = None) -> Decision:
        now = self.clock() if now is None else now
        org = self.origin(rhost)
        keys = self._keys(user, org, now, phase="account")
        if not keys:
            return Decision(True)
        rows = self.conn.execute("SELECT kind, key, locked_until FROM locks WHERE kind = ANY(?::text[])"
                                 " AND key = ANY(?::text[]) AND locked_until > ?::float8",
                                 ([k for k, _ in keys], [v for _, v in keys], now)).fetchall()
        held = {(r[0], r[1]): float(r[2]) for r in rows}
        for kind, key in keys:
            if (kind, key) in held and not self._spared(kind, user, org, now):
                return Decision(False, kind, held[(kind, key)])
        return Decision(True)


def connect(cfg: GuardConfig) -> PgConn:
    """Open the shared store (schema migrated). Raises psycopg.Error, SharedStoreError, StoreTooNew."""
    assert cfg.store is not None
    ms = max(50, cfg.timeout_ms // 2)
    raw = psycopg.connect(
        host=cfg.store.host, port=cfg.store.port, user=cfg.store.user, dbname=cfg.store.dbname,
        password=read_password(cfg.store_password_file), connect_timeout=2, autocommit=True,
        application_name="slotwarden-guard", tcp_user_timeout=max(200, cfg.timeout_ms),
        keepalives=1, keepalives_idle=5, keepalives_interval=1, keepalives_count=3,
        options=(f"-c search_path=guard -c slotwarden.host={cfg.store_host} -c statement_timeout={ms}"
                 f" -c lock_timeout={ms} -c idle_in_transaction_session_timeout=10000"),
        row_factory=_row_factory,
    )
    try:
        migrate_pg(raw)
    except BaseException:
        raw.close()
        raise
    return PgConn(raw)


def migrate_pg(raw: psycopg.Connection[Any]) -> int:
    """Bring schema ``guard`` to :data:`PG_VERSION`; returns the version found. Newer: StoreTooNew."""
    with raw.transaction():
        raw.execute(f"SET LOCAL statement_timeout = 0; SELECT pg_advisory_xact_lock({_MIGRATE_LOCK})")
        raw.execute("CREATE SCHEMA IF NOT EXISTS guard")
        raw.execute("CREATE TABLE IF NOT EXISTS guard.schema_version (version INTEGER NOT NULL)")
        row = raw.execute("SELECT max(version) FROM guard.schema_version").fetchone()
        found = int(row[0] or 0) if row else 0
        if found > PG_VERSION:
            raise StoreTooNew(f"shared guard store schema version {found} is newer than this slotwarden's "
                              f"({PG_VERSION}); upgrade slotwarden")
        for version, script in PG_MIGRATIONS:
            if version > found:
                raw.execute(script)
        if found < PG_VERSION:
            raw.execute("DELETE FROM guard.schema_version")
            raw.execute("INSERT INTO guard.schema_version (version) VALUES (%s)", (PG_VERSION,))
    return found


def _describe(exc: BaseException) -> str:
    """One line for status and logs: the error's type and its first line (never a password: none is in them)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class PgLink:
    """The shared store's connection: ``get()`` returns it (or None while it is down), never waits."""

    def __init__(self, cfg: GuardConfig) -> None:
        self.cfg = cfg
        self._conn: PgConn | None = None
        self._ready: PgConn | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.last_error: str | None = None
        self.since: float | None = None  # down since (monotonic), None while up

    def start(self) -> None:
        """One try now (bounded by the connect timeout); reconnecting in the background if it fails."""
        try:
            self._ready = connect(self.cfg)
        except (Error, SharedStoreError, StoreTooNew, OSError) as exc:
            self._failed(exc)

    def get(self) -> tuple[PgConn | None, bool]:
        """The connection and whether it is new (the caller reconciles before using a new one)."""
        if self._conn is not None:
            return self._conn, False
        with self._lock:
            ready, self._ready = self._ready, None
        if ready is None:
            return None, False
        self._conn = ready
        self.since = None
        return ready, True

    def failed(self, exc: BaseException) -> None:
        """The connection broke: drop it and reconnect in the background."""
        if self._conn is not None:
            try:
                self._conn.close()
            except Error:
                pass
            self._conn = None
        self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        self.last_error = _describe(exc)
        if self.since is None:
            self.since = time.monotonic()
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._reconnect, name="guard-store-reconnect", daemon=True)
            self._thread.start()

    def _reconnect(self) -> None:
        delay = 0.2
        while not self._stop.is_set():
            try:
                conn = connect(self.cfg)
            except (Error, SharedStoreError, StoreTooNew, OSError) as exc:
                self.last_error = _describe(exc)
                self._stop.wait(delay)
                delay = min(delay * 2, 2.0)
                continue
            with self._lock:
                self._ready = conn
            return

    @property
    def up(self) -> bool:
        return self._conn is not None

    def close(self) -> None:
        self._stop.set()
        for c in (self._conn, self._ready):
            if c is not None:
                try:
                    c.close()
                except Error:
                    pass
        self._conn = self._ready = None
