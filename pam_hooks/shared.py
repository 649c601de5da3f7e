"""SharedPolicy: the guard deciding against the fleet's shared store, and alone when it is down.

With ``[guard] store = "postgresql://…"`` every host counts and locks in one PostgreSQL
(:mod:`pam_hooks.pgstore`); the same :class:`~pam_hooks.policy.LockoutPolicy` runs there, its
reservation taken in one transaction under the counter's advisory lock, so N concurrent tries
for a pair spread over K hosts get at most ``pair_deny`` password checks fleet-wide, and a lock
set by one host refuses on every other at their next request.

Each host keeps its own SQLite store as a copy and a fallback:

- **Shared store up**: the shared store decides; each attempt is copied into the local store
  (``remote_id`` names the shared row), and every tick (0.5 s) pulls the locks that changed
  there (lifts too) and the forgets other hosts took. The account phase (key logins, the check
  after a password) answers from that copy: a lock set elsewhere holds here within a tick.
  Outcomes (FAIL, SUCC) go to the shared store with the next round trip: one per attempt.
- **Shared store down** (refused, timed out, broken): the local policy decides on the local
  store, exact as a single host is (``fail_mode`` never comes into it). What happens meanwhile
  is kept: new attempts (no ``remote_id`` yet), outcomes and operator lifts/forgets of shared
  rows (``outbox``), locks set and origins learnt (since ``offline_since``).
- **Back**: before the shared store decides again, that is replayed into it (outbox, attempts,
  locks with the longer of both, known origins), then it decides as before: nothing is lost.

A request the shared store fails in the middle of is decided locally; a reservation the store
committed but whose answer was lost stays there pending and counts as a failure (never fewer
checks than the limit allows, possibly one fewer).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from pam_hooks import pgstore
from pam_hooks.config import GuardConfig
from pam_hooks.policy import Blocker, Decision, LockoutPolicy

log = logging.getLogger("slotwarden.guard")

# Pulls look this far behind the last one (server clock): rows stamped just before a pull but
# committed just after it are seen by the next.
PULL_OVERLAP = 5.0
_LOCK_COLS = ("kind", "key", "reset_at", "locked_until", "locked_at", "level", "prev_until", "prev_level")


class SharedPolicy:
    """LockoutPolicy's interface over the shared store, with this host's SQLite store behind it."""

    def __init__(self, cfg: GuardConfig, conn: sqlite3.Connection, blocker: Blocker | None = None,
                 clock: Callable[[], float] = time.time, link: pgstore.PgLink | None = None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.local = LockoutPolicy(cfg, conn, blocker, clock)
        self.link = link if link is not None else pgstore.PgLink(cfg)
        self.remote: pgstore.SharedStorePolicy | None = None
        self._fails: list[int] = []  # shared rows reported failed, written with the next round trip
        self._succs: list[tuple[int, float, str, str]] = []  # successes likewise: (row, when, user, ip)
        self._applied: dict[int, float] = {}  # event seq -> when seen (pull overlap)
        self.synced = 0  # records replayed into the shared store (for status)

    # -- plumbing ------------------------------------------------------------

    @property
    def conn(self) -> sqlite3.Connection:
        """The local store (the service replaces it when it is damaged)."""
        conn: sqlite3.Connection = self.local.conn
        return conn

    @conn.setter
    def conn(self, value: sqlite3.Connection) -> None:
        self.local.conn = value
        if self.remote is not None:
            self.remote._host_conn = value

    @property
    def blocker(self) -> Blocker | None:
        return self.local.blocker

    def start(self) -> None:
        """Connect (one bounded try; reconnects go on in the background)."""
        self.link.start()
        self._shared()

    def close(self) -> None:
        """Write the outcomes held back (or keep them in the outbox), then disconnect."""
        if self.remote is not None:
            try:
                self._flush(self.remote)
            except pgstore.Error as exc:
                self._down(exc)
        self.link.close()

    def _meta(self, key: str) -> float | None:
        row = self.conn.execute("SELECT value FROM sync_meta WHERE key = ?", (key,)).fetchone()
        return float(row[0]) if row else None

    def _set_meta(self, key: str, value: float | None) -> None:
        if value is None:
            self.conn.execute("DELETE FROM sync_meta WHERE key = ?", (key,))
        else:
            self.conn.execute("INSERT INTO sync_meta (key, value) VALUES (?, ?)"
                              " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def _offline(self, now: float) -> None:
        """From now on the local store decides alone: remember since when (locks, origins to replay)."""
        if self._meta("offline_since") is None:
            self._set_meta("offline_since", now)

    def _down(self, exc: BaseException) -> None:
        if self.link.up:
            log.warning("shared guard store unreachable (%s): deciding locally, replaying when it is back",
                        type(exc).__name__)
        self.remote = None
        self.link.failed(exc)
        now = self.clock()
        self._offline(now)
        for rid in self._fails:
            self._outbox("fail", now, remote_id=rid)
        for rid, ts, user, ip in self._succs:
            self._outbox("succeed", ts, user, ip, remote_id=rid)
        self._fails, self._succs = [], []

    def _shared(self) -> pgstore.SharedStorePolicy | None:
        """The policy on the shared store, reconciled first if the connection is new; None when down."""
        conn, fresh = self.link.get()
        if conn is None:
            self._offline(self.clock())
            return None
        if fresh or self.remote is None:
            self.remote = pgstore.SharedStorePolicy(self.cfg, conn, self.local.blocker, self.clock,  # type: ignore[arg-type]
                                                    host_conn=self.local.conn)
        if fresh:
            try:
                self.reconcile()
            except pgstore.Error as exc:
                self._down(exc)
                return None
            log.info("shared guard store %s reachable: deciding there", self.cfg.store)
        return self.remote

    def _remote_id(self, token: int) -> int | None:
        row = self.conn.execute("SELECT remote_id FROM attempts WHERE id = ?", (token,)).fetchone()
        return int(row[0]) if row is not None and row[0] is not None else None

    def _outbox(self, op: str, now: float, user: str | None = None, ip: str | None = None,
                remote_id: int | None = None) -> None:
        self.conn.execute("INSERT INTO outbox (ts, op, username, ip, remote_id) VALUES (?, ?, ?, ?, ?)",
                          (now, op, user, ip, remote_id))

    # -- the hook's requests ---------------------------------------------

    def reserve(self, service: str, user: str, rhost: str, prev: int | None = None,
                now: float | None = None) -> Decision:
        """Preauth against the shared store (copied locally), or the local store while it is down."""
        now = self.clock() if now is None else now
        remote = self._shared()
        rprev = self._remote_id(prev) if prev is not None else None
        if remote is not None:
            org = self.local.origin(rhost)
            keys = self.local._keys(user, org, now)
            # A pair or address the fleet locked (the local copy of its locks, pulled every tick, set
            # at once by a refusal from the shared store) is refused here: an attacker hammering a
            # lock costs the shared store one row, sent with the next tick. Not the per-username
            # rule: an origin another host learnt may be spared there.
            held = self.local._active([k for k in keys if k[0] != "user"], now, user, org)
            if held is not None:
                if prev is not None:
                    self._outcome("fail", prev, now)
                return replace(held, record=self._copy(now, user, org, service, "refused", None))
            try:
                if any(u == user and i == org.ip for _, _, u, i in self._succs):
                    self._flush(remote)  # this pair's success lands before its next reservation
                d = remote.reserve(service, user, rhost, rprev, now)
            except pgstore.Error as exc:
                self._down(exc)
            else:
                if prev is not None:
                    self.local.fail(prev)
                if not d.allowed and d.rule != "user" and d.until is not None:
                    key = dict(keys).get(str(d.rule))
                    if key is not None:
                        self.conn.execute(
                            "INSERT INTO locks (kind, key, locked_until, locked_at) VALUES (?, ?, ?, ?)"
                            " ON CONFLICT (kind, key) DO UPDATE SET locked_until = MAX(locked_until,"
                            " excluded.locked_until)", (d.rule, key, d.until, now))
                local_id = self._copy(now, user, org, service, "pending" if d.allowed else "refused", d.record)
                return replace(d, token=local_id if d.allowed else None, record=local_id)
        if rprev is not None:
            self._outbox("fail", now, remote_id=rprev)
        return self.local.reserve(service, user, rhost, prev, now)

    def _copy(self, now: float, user: str, org: Any, service: str, state: str, remote_id: int | None) -> int:
        """The local copy of an attempt (remote_id: its shared row; None: sent later)."""
        row = self.conn.execute(
            "INSERT INTO attempts (ts, username, ip, ipkey, service, state, counted, remote_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (now, user, org.ip, org.ipkey, service, state, 0 if org.allowed else 1, remote_id)).fetchone()
        return int(row[0])

    def _outcome(self, op: str, token: int, now: float) -> None:
        remote = self._shared()
        row = self.conn.execute("SELECT remote_id, username, ip FROM attempts WHERE id = ?", (token,)).fetchone()
        rid = int(row[0]) if row is not None and row[0] is not None else None
        if rid is not None:
            if remote is None:
                self._outbox(op, now, row[1], row[2], remote_id=rid)
            elif op == "fail":
                # pending -> failed changes no count: written with the next round trip (success, tick)
                self._fails.append(rid)
            else:
                # Written with the next round trip too (before this pair's next reservation here,
                # at the latest with the next tick): until then the fleet only errs towards refusing
                # (the pair's failures not yet cleared, a lock this try set not yet undone); this
                # host's copy is cleared at once, and its account phase answers from it.
                self._succs.append((rid, now, row[1], row[2]))
        if op == "succeed":
            self.local.succeed(token, now)
        else:
            self.local.fail(token)

    def _flush(self, remote: pgstore.SharedStorePolicy) -> None:
        """Write the outcomes held back (successes, each with the failures before it)."""
        while self._succs:
            rid, ts, user, ip = self._succs[0]
            remote.succeed(rid, ts, user, ip, fails=self._fails)
            self._fails = []
            self._succs.pop(0)
        if self._fails:
            remote.fail_many(self._fails)
            self._fails = []

    def fail(self, token: int) -> None:
        """Authfail, in both stores (the shared one later if it is down)."""
        self._outcome("fail", token, self.clock())

    def succeed(self, token: int, now: float | None = None) -> None:
        """Authsucc, in both stores (the shared one later if it is down)."""
        self._outcome("succeed", token, self.clock() if now is None else now)

    def account(self, service: str, user: str, rhost: str, now: float | None = None) -> Decision:
        """Account phase (key logins, and the check after a password): the local copy of the fleet's
        locks, pulled every half second - no round trip on the success path or for a key login."""
        return self.local.account(service, user, rhost, now)

    def _read(self, fn: Callable[[LockoutPolicy], Any], flush: bool = False) -> Any:
        remote = self._shared()
        if remote is not None:
            try:
                if flush:
                    self._flush(remote)
                return fn(remote)
            except pgstore.Error as exc:
                self._down(exc)
        return fn(self.local)

    # -- upkeep -------------------------------------------------------------

    def tick(self, now: float | None = None) -> None:
        """Expiry in both stores; pull what changed in the shared one (locks, lifts, forgets)."""
        now = self.clock() if now is None else now
        self.local.tick(now)
        remote = self._shared()
        if remote is None:
            return
        try:
            self._flush(remote)
            self._push_refused(remote)
            remote.tick(now)
            self.pull(now)
        except pgstore.Error as exc:
            self._down(exc)

    def purge(self, now: float | None = None) -> int:
        """Retention in both stores; forget events older than the retention go too (every host
        has pulled them long before)."""
        now = self.clock() if now is None else now
        n = int(self.local.purge(now))
        remote = self._shared()
        if remote is not None:
            try:
                self._flush(remote)
                n = int(remote.purge(now))
                remote.conn.execute("DELETE FROM events WHERE ts < ?", (now - self.cfg.retention,))
            except pgstore.Error as exc:
                self._down(exc)
        return n

    def restore_blocks(self, now: float | None = None) -> None:
        self.local.restore_blocks(now)

    # -- operator requests ------------------------------------------------

    def records(self, user: str | None = None, ip: str | None = None, locked: bool = False,
                now: float | None = None) -> list[dict[str, Any]]:
        """The fleet's records (this host's while the store is down)."""
        return list(self._read(lambda p: p.records(user, ip, locked, now), flush=True))

    def explain(self, user: str, ip: str, now: float | None = None) -> dict[str, Any]:
        return dict(self._read(lambda p: p.explain(user, ip, now), flush=True))

    def active_lock_count(self, now: float | None = None) -> int:
        return int(self._read(lambda p: p.active_lock_count(now)))

    def lift(self, user: str | None = None, ip: str | None = None, now: float | None = None) -> int:
        """Lift in both stores; while the shared store is down the lift waits in the outbox."""
        now = self.clock() if now is None else now
        lifted = self.local.lift(user, ip, now)
        remote = self._shared()
        if remote is not None:
            try:
                self._flush(remote)
                return remote.lift(user, ip, now)
            except pgstore.Error as exc:
                self._down(exc)
        self._outbox("lift", now, user, ip)
        return lifted

    def forget(self, user: str | None = None, ip: str | None = None) -> int:
        """Forget everywhere: here, in the shared store and (through its events) on every other host."""
        now = self.clock()
        n = self.local.forget(user, ip)
        remote = self._shared()
        if remote is not None:
            try:
                self._flush(remote)
                return self._forget_shared(remote, user, ip)  # the fleet's rows (this host's among them)
            except pgstore.Error as exc:
                self._down(exc)
        self._outbox("forget", now, user, ip)
        return n

    def _forget_shared(self, remote: LockoutPolicy, user: str | None, ip: str | None) -> int:
        n = remote.forget(user, ip)
        row = remote.conn.execute("INSERT INTO events (op, username, ip) VALUES ('forget', ?, ?) RETURNING seq",
                                  (user, ip)).fetchone()
        self._applied[int(row[0])] = self.clock()  # our own: already done here
        return int(n)

    def status(self, now: float | None = None) -> dict[str, Any]:
        """The fleet's status (this host's while the store is down) and the shared store's state."""
        st = dict(self._read(lambda p: p.status(now), flush=True))
        unsynced = self.conn.execute("SELECT COUNT(*) FROM attempts WHERE remote_id IS NULL").fetchone()[0]
        outbox = self.conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        st["store"] = {"shared": str(self.cfg.store), "host": self.cfg.store_host, "reachable": self.link.up,
                       "error": None if self.link.up else self.link.last_error,
                       "offline_since": self._meta("offline_since"), "unsynced": int(unsynced) + int(outbox),
                       "replayed": self.synced}
        return st

    # -- reconciling ---------------------------------------------------------

    def reconcile(self) -> None:
        """Replay into the shared store what this host decided alone (called on every new connection)."""
        remote = self.remote
        assert remote is not None
        pg: Any = remote.conn
        for row in self.conn.execute("SELECT * FROM outbox ORDER BY id").fetchall():
            op = row["op"]
            if op == "lift":
                remote.lift(row["username"], row["ip"], row["ts"])
            elif op == "forget":
                self._forget_shared(remote, row["username"], row["ip"])
            elif op == "succeed":
                remote.succeed(int(row["remote_id"]), row["ts"], row["username"], row["ip"])
            else:
                remote.fail(int(row["remote_id"]))
            self.conn.execute("DELETE FROM outbox WHERE id = ?", (row["id"],))
            self.synced += 1
        self._push_refused(remote)
        rows = self.conn.execute("SELECT * FROM attempts WHERE remote_id IS NULL ORDER BY id").fetchall()
        for r in rows:
            # A success is replayed as one: it clears the pair's failures and teaches the origin there too.
            state = "pending" if r["state"] == "succeeded" else r["state"]
            rid = int(pg.execute("INSERT INTO attempts (ts, username, ip, ipkey, service, state, counted)"
                                 " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                                 (r["ts"], r["username"], r["ip"], r["ipkey"], r["service"], state,
                                  r["counted"])).fetchone()[0])
            if r["state"] == "succeeded":
                remote.succeed(rid, r["ts"], r["username"], r["ip"])
            self.conn.execute("UPDATE attempts SET remote_id = ? WHERE id = ?", (rid, r["id"]))
            self.synced += 1
        since = self._meta("offline_since")
        if since is not None:
            for lk in self.conn.execute("SELECT * FROM locks WHERE locked_at >= ? OR reset_at >= ?",
                                        (since, since)).fetchall():
                pg.execute(
                    "INSERT INTO locks (kind, key, reset_at, locked_until, locked_at, level, prev_until, prev_level)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind, key) DO UPDATE SET"
                    # The longer lock wins, unless it was set before a lift there (the lift wins).
                    " reset_at = GREATEST(locks.reset_at, excluded.reset_at),"
                    " locked_until = CASE WHEN excluded.locked_at > locks.reset_at"
                    " THEN GREATEST(locks.locked_until, excluded.locked_until) ELSE locks.locked_until END,"
                    " locked_at = GREATEST(locks.locked_at, excluded.locked_at),"
                    " level = CASE WHEN excluded.locked_at > locks.reset_at"
                    " THEN GREATEST(locks.level, excluded.level) ELSE locks.level END",
                    tuple(lk[c] for c in _LOCK_COLS))
                self.synced += 1
            for ko in self.conn.execute("SELECT username, ipkey, last FROM known_origins WHERE last >= ?",
                                        (since,)).fetchall():
                pg.execute("INSERT INTO known_origins (username, ipkey, last) VALUES (?, ?, ?)"
                           " ON CONFLICT (username, ipkey) DO UPDATE SET last = GREATEST(known_origins.last,"
                           " excluded.last)", (ko[0], ko[1], ko[2]))
            self._set_meta("offline_since", None)
            log.info("shared guard store: replayed what this host decided alone since %.0f", since)

    def _push_refused(self, remote: pgstore.SharedStorePolicy) -> None:
        """Refusals decided here go to the shared store in one statement (their ids are not needed:
        a refusal has no outcome); locally they are marked sent (remote_id 0)."""
        rows = self.conn.execute("SELECT id, ts, username, ip, ipkey, service, counted FROM attempts"
                                 " WHERE remote_id IS NULL AND state = 'refused' ORDER BY id").fetchall()
        if not rows:
            return
        cols = list(zip(*[tuple(r) for r in rows], strict=True))
        remote.conn.execute(
            "INSERT INTO attempts (ts, username, ip, ipkey, service, state, counted)"
            " SELECT t, u, i, k, s, 'refused', c FROM unnest(?::float8[], ?::text[], ?::text[], ?::text[],"
            " ?::text[], ?::integer[]) AS x(t, u, i, k, s, c)",
            [list(c) for c in cols[1:]])
        self.conn.executemany("UPDATE attempts SET remote_id = 0 WHERE id = ?", [(r[0],) for r in rows])
        self.synced += len(rows)

    def pull(self, now: float) -> None:
        """Copy the shared store's changed locks (lifts included) and other hosts' forgets here."""
        pg: Any = self.remote.conn if self.remote is not None else None
        if pg is None:
            return
        server_now = pg.server_time()
        mark = self._meta("locks_mark") or 0.0
        for lk in pg.execute("SELECT kind, key, reset_at, locked_until, locked_at, level, prev_until, prev_level"
                             " FROM locks WHERE changed > ?", (mark - PULL_OVERLAP,)).fetchall():
            self.conn.execute(
                "INSERT INTO locks (kind, key, reset_at, locked_until, locked_at, level, prev_until, prev_level)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind, key) DO UPDATE SET reset_at = excluded.reset_at,"
                " locked_until = excluded.locked_until, locked_at = excluded.locked_at, level = excluded.level,"
                " prev_until = excluded.prev_until, prev_level = excluded.prev_level",
                tuple(lk[c] for c in _LOCK_COLS))
            if lk["kind"] == "ip" and lk["locked_until"] > now and self.local.blocker is not None \
                    and self.local.origin(lk["key"]).is_ip:
                self.local._block(lk["key"], float(lk["locked_until"]))
        self._set_meta("locks_mark", server_now)
        ev_mark = self._meta("events_mark")
        if ev_mark is None:
            ev_mark = server_now  # a host joining the fleet does not replay its history
        for ev in pg.execute("SELECT seq, ts, username, ip, host FROM events WHERE ts > ? ORDER BY seq",
                             (ev_mark - PULL_OVERLAP,)).fetchall():
            seq = int(ev["seq"])
            if seq in self._applied:
                continue
            self._applied[seq] = now
            if ev["host"] != self.cfg.store_host:
                self.local.forget(ev["username"], ev["ip"])
        self._set_meta("events_mark", server_now)
        for seq in [s for s, t in self._applied.items() if t < now - 10 * PULL_OVERLAP]:
            del self._applied[seq]
