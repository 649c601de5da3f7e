"""LockoutPolicy: every guard decision, made against the AttemptStore.

The policy is exact because it is only ever driven from one thread (the guard
service's loop): a reservation reads the counts and writes its own pending row
in one transaction, so N concurrent tries for a pair can never all see
"N-1 failures so far".

A reservation counts as a failure from the moment it is granted (a password is
about to be checked) until a success says otherwise; that is why no failure can
be lost when a PAM client dies, forks or never calls ``pam_end``.

>>> import sqlite3, pam_hooks.store as st
>>> from pam_hooks.config import GuardConfig
>>> conn = sqlite3.connect(":memory:", isolation_level=None); conn.row_factory = sqlite3.Row
>>> _ = conn.executescript(st.SCHEMA)
>>> pol = LockoutPolicy(GuardConfig(pair_deny=2), conn)
>>> [pol.reserve("sshd", "bob", "198.51.100.7", now=100.0).allowed for _ in range(3)]
[True, True, False]

Local tries (no PAM_RHOST) arrive with the caller as the origin, ``local:<caller>``
(see :func:`local_origin`): a tenant's ``su root`` locks (root, local:tenant) only.

The per-username rule (``user_deny``) is the one a distributed attacker can turn
on a victim, so it never refuses at an origin where the user logged in with a
password before (``known_origins``, bounded and expiring) nor in the account
phase (key logins), and root and the admin group keep the console way in
(``local:root``) that no tenant can reach.
"""

from __future__ import annotations

import grp
import ipaddress
import pwd
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from pam_hooks.config import GuardConfig
from pam_hooks.protocol import escape_text, name_key, unescape
from pam_hooks.store import purge_attempts

KINDS = ("pair", "ip", "user")
LOCAL = "local:"
# The console way in: a local try by root itself on a terminal (login on a tty); the module sends
# "root:notty" / "root:ruser" for root services without a terminal or passing PAM_RUSER=root.
CONSOLE = LOCAL + "root"
# Known origins kept per user (newest first); older ones are dropped.
KNOWN_MAX = 16


class Blocker(Protocol):
    """Something that can add and remove a network block (see netblock.py)."""

    def block(self, net: str) -> None: ...

    def unblock(self, net: str) -> None: ...


@dataclass(frozen=True)
class Decision:
    """The answer to a reservation or an account check."""

    allowed: bool
    rule: str | None = None
    until: float | None = None
    token: int | None = None
    record: int | None = None  # the attempt row written for this decision (pending or refused)


@dataclass(frozen=True)
class Origin:
    """Where a try comes from, as the policy counts it."""

    ip: str  # the escaped PAM_RHOST as recorded, or local:<caller> for a local try
    ipkey: str  # address (v4) or /prefix network (v6); the raw value if not an IP; "" if none
    is_ip: bool
    allowed: bool
    local: bool = False


def iso(ts: float | None) -> str | None:
    """ISO 8601 UTC with a Z, or None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def local_origin(rhost: str, caller: str | None) -> str:
    """The recorded origin of a try: ``local:<caller>`` when there is no rhost.

    A network rhost can never pass for a local origin: one that starts with
    ``local:`` is recorded with its colon escaped.

    >>> local_origin("", "alice"), local_origin("local:root", None), local_origin("198.51.100.7", "x")
    ('local:alice', 'local%3Aroot', '198.51.100.7')
    """
    if not rhost:
        return LOCAL + caller if caller else ""
    if rhost.startswith(LOCAL):
        return "local%3A" + rhost[len(LOCAL):]
    return rhost


def pair_key(user: str, ip: str) -> str:
    """Both parts are escaped fields, which never contain a TAB."""
    return f"{user}\t{ip}"


class LockoutPolicy:
    """Counts, reservations, locks, lifts and expiry over one store connection."""

    def __init__(
        self,
        cfg: GuardConfig,
        conn: sqlite3.Connection,
        blocker: Blocker | None = None,
        clock: Callable[[], float] = time.time,
        host_conn: sqlite3.Connection | None = None,
    ) -> None:
        self.cfg = cfg
        # The store: this host's SQLite, or the fleet's shared store (pam_hooks.pgstore.PgConn,
        # which takes the same portable SQL). Blackhole routes are this host's alone: ``blocks``
        # lives in ``host_conn`` (the SQLite store), whichever store counts.
        self.conn: Any = conn
        self._host_conn = host_conn
        self.blocker = blocker if cfg.network_block else None
        self.clock = clock

    @property
    def host_conn(self) -> Any:
        """Where this host's own tables (``blocks``) are."""
        return self._host_conn if self._host_conn is not None else self.conn

    # -- helpers -----------------------------------------------------------

    @contextmanager
    def _tx(self, keys: list[tuple[str, str]] | None = None) -> Iterator[None]:
        """One write transaction. ``keys``: the counters it decides on (None: any).

        SQLite has one writer at a time; the shared store serializes per key (advisory locks), so
        hosts deciding on other pairs never wait for each other.
        """
        begin = getattr(self.conn, "begin_for", None)
        if begin is not None:
            begin(keys)
        else:
            self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def origin(self, rhost: str) -> Origin:
        """Classify an escaped PAM_RHOST: address, /64 key, allow list."""
        if not rhost:
            return Origin("", "", False, False)
        if rhost.startswith(LOCAL):
            return Origin(rhost, rhost, False, False, local=True)
        try:
            addr = ipaddress.ip_address(unescape(rhost).decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            return Origin(rhost, rhost, False, False)
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        allowed = any(addr in net for net in self.cfg.allow)
        if isinstance(addr, ipaddress.IPv6Address):
            key = str(ipaddress.ip_network(f"{addr}/{self.cfg.ipv6_prefix}", strict=False))
        else:
            key = str(addr)
        return Origin(rhost, key, True, allowed)

    def _keys(self, user: str, org: Origin, now: float, phase: str = "auth") -> list[tuple[str, str]]:
        """The (kind, key) pairs that can lock this try, most specific first.

        ``phase`` "account" (key logins, and the check after a password) leaves
        the per-username rule out. At an origin the user is known at, that rule
        still counts but never refuses (:meth:`_spared`, asked only when it would).
        """
        if org.allowed:
            return []
        if user == "root" and not self.cfg.deny_root:
            return []
        if org.ip == CONSOLE and self.is_admin(user):
            return []
        keys = [("pair", pair_key(user, org.ip))]
        if org.ipkey:
            keys.append(("ip", org.ipkey))
        # root is never locked globally per username
        if user != "root" and phase == "auth":
            keys.append(("user", user))
        return keys

    def _spared(self, kind: str, user: str, org: Origin, now: float) -> bool:
        """The per-username rule never refuses a user at an origin she logged in from."""
        return kind == "user" and self.known(user, org, now)

    def is_admin(self, user: str) -> bool:
        """root, or a member of the admin group (``[host] admin_group``)."""
        name = unescape(user).decode("utf-8", "surrogateescape")
        if name == "root":
            return True
        try:
            group = grp.getgrnam(self.cfg.admin_group)
        except KeyError:
            return False
        if name in group.gr_mem:
            return True
        try:
            return pwd.getpwnam(name).pw_gid == group.gr_gid
        except KeyError:
            return False

    def known(self, user: str, org: Origin, now: float) -> bool:
        """Did ``user`` log in with a password from this origin (address, /64) within ``known_for``."""
        if not org.ipkey:
            return False
        row = self.conn.execute(
            "SELECT 1 FROM known_origins WHERE username = ? AND ipkey = ? AND last > ?",
            (user, org.ipkey, now - self.cfg.known_for),
        ).fetchone()
        return row is not None

    def _remember(self, user: str, org: Origin, now: float) -> None:
        if not org.ipkey:
            return
        self.conn.execute(
            "INSERT INTO known_origins (username, ipkey, last) VALUES (?, ?, ?)"
            " ON CONFLICT (username, ipkey) DO UPDATE SET last = excluded.last",
            (user, org.ipkey, now),
        )
        self.conn.execute(
            "DELETE FROM known_origins WHERE username = ? AND ipkey NOT IN"
            " (SELECT ipkey FROM known_origins WHERE username = ? ORDER BY last DESC LIMIT ?)",
            (user, user, KNOWN_MAX),
        )

    def _threshold(self, kind: str) -> int:
        return {"pair": self.cfg.pair_deny, "ip": self.cfg.ip_deny, "user": self.cfg.user_deny}[kind]

    def _lock(self, kind: str, key: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(
            "SELECT * FROM locks WHERE kind = ? AND key = ?", (kind, key)
        ).fetchone()
        return row

    def _since(self, row: sqlite3.Row | None, now: float, until: float | None = None) -> float:
        since = now - self.cfg.window
        if row is not None:
            ended = row["locked_until"] if until is None else until
            since = max(since, row["reset_at"], ended if ended <= now else 0.0)
        return float(since)

    def _count(self, kind: str, key: str, since: float) -> int:
        where = {
            "pair": "username = ? AND ip = ?",
            "ip": "ipkey = ?",
            "user": "username = ?",
        }[kind]
        args: tuple[Any, ...] = tuple(key.split("\t", 1)) if kind == "pair" else (key,)
        # {where} is one of three fixed clauses; every value is bound.
        row = self.conn.execute(
            f"SELECT COUNT(*) FROM attempts WHERE {where} AND counted = 1"  # noqa: S608
            " AND state IN ('pending', 'failed') AND ts > ?",
            (*args, since),
        ).fetchone()
        return int(row[0])

    def _set_lock(self, kind: str, key: str, now: float, org: Origin | None) -> float:
        row = self._lock(kind, key)
        level = 0
        if row is not None and row["locked_at"] and now - row["locked_at"] < self.cfg.retention:
            level = row["level"] + 1
        duration = min(self.cfg.lock_for * (2 ** min(level, 40)), self.cfg.lock_max)
        until = float(now + duration)
        self.conn.execute(
            "INSERT INTO locks (kind, key, locked_until, locked_at, level, prev_until, prev_level)"
            " VALUES (?, ?, ?, ?, ?, 0, 0)"
            " ON CONFLICT (kind, key) DO UPDATE SET prev_until = locks.locked_until, prev_level = locks.level,"
            " locked_until = excluded.locked_until, locked_at = excluded.locked_at, level = excluded.level",
            (kind, key, until, now, level),
        )
        if kind == "ip" and org is not None and org.is_ip:
            self._block(key, until)
        return until

    def _block(self, net: str, until: float) -> None:
        if self.blocker is None:
            return
        self.host_conn.execute(
            "INSERT INTO blocks (net, until) VALUES (?, ?) ON CONFLICT (net) DO UPDATE SET until = excluded.until",
            (net, until),
        )
        self.blocker.block(net)

    def _unblock(self, net: str) -> None:
        if self.blocker is None:
            return
        if self.host_conn.execute("DELETE FROM blocks WHERE net = ?", (net,)).rowcount:
            self.blocker.unblock(net)

    def _active(self, keys: list[tuple[str, str]], now: float, user: str, org: Origin) -> Decision | None:
        for kind, key in keys:
            row = self._lock(kind, key)
            if row is not None and row["locked_until"] > now and not self._spared(kind, user, org, now):
                return Decision(False, kind, float(row["locked_until"]))
        return None

    # -- the hook's requests ---------------------------------------------

    def reserve(self, service: str, user: str, rhost: str, prev: int | None = None,
                now: float | None = None) -> Decision:
        """Preauth: grant a password check (a pending failure) or refuse.

        ``prev`` is the unresolved token of an earlier try on the same PAM
        handle; a new try on that handle means the earlier one failed.
        """
        now = self.clock() if now is None else now
        org = self.origin(rhost)
        keys = self._keys(user, org, now)
        with self._tx(keys):
            if prev is not None:
                self._resolve(prev, "failed")
            locks = {kind: self._lock(kind, key) for kind, key in keys}
            denied = next((Decision(False, kind, float(row["locked_until"])) for kind, row in locks.items()
                           if row is not None and row["locked_until"] > now
                           and not self._spared(kind, user, org, now)), None)
            counts: dict[str, int] = {}
            if denied is None:
                for kind, key in keys:
                    counts[kind] = self._count(kind, key, self._since(locks[kind], now))
                    if counts[kind] >= self._threshold(kind) and not self._spared(kind, user, org, now):
                        # Possible after the limit was lowered: lock now.
                        denied = Decision(False, kind, self._set_lock(kind, key, now, org))
                        break
            if denied is not None:
                return replace(denied, record=self._insert(now, user, org, service, "refused"))
            token = self._insert(now, user, org, service, "pending")
            for kind, key in keys:
                if counts[kind] + 1 >= self._threshold(kind):
                    self._set_lock(kind, key, now, org)
            return Decision(True, token=token, record=token)

    def _insert(self, now: float, user: str, org: Origin, service: str, state: str) -> int:
        row = self.conn.execute(
            "INSERT INTO attempts (ts, username, ip, ipkey, service, state, counted)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (now, user, org.ip, org.ipkey, service, state, 0 if org.allowed else 1),
        ).fetchone()
        return int(row[0])

    def _resolve(self, token: int, state: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(
            "SELECT * FROM attempts WHERE id = ?", (token,)
        ).fetchone()
        if row is None or row["state"] not in ("pending", "failed"):
            return None
        if row["state"] != state:
            self.conn.execute("UPDATE attempts SET state = ? WHERE id = ?", (state, token))
        return row

    def fail(self, token: int) -> None:
        """Authfail: the try on ``token`` failed (it was already counted)."""
        with self._tx([]):
            self._resolve(token, "failed")

    def succeed(self, token: int, now: float | None = None) -> None:
        """Authsucc: the password was right; the pair's failures so far are cleared.

        Tries still in flight keep counting (they may be an attacker's), so a
        success never opens more than N checks. Locks set while this try was
        in flight are undone when the count without them is below the limit.
        """
        now = self.clock() if now is None else now
        first = self.conn.execute("SELECT username, ip FROM attempts WHERE id = ?", (token,)).fetchone()
        if first is None:
            return
        with self._tx(self._keys(first["username"], self.origin(first["ip"]), now)):
            row = self._resolve(token, "succeeded")
            if row is None:
                return
            user, org = row["username"], self.origin(row["ip"])
            self.conn.execute(
                "UPDATE attempts SET state = 'cleared' WHERE username = ? AND ip = ? AND state = 'failed'",
                (user, org.ip),
            )
            for kind, key in self._keys(user, org, now):
                lock = self._lock(kind, key)
                if lock is None or lock["locked_until"] <= now or lock["locked_at"] < row["ts"]:
                    continue
                since = self._since(lock, now, until=float(lock["prev_until"]))
                if self._count(kind, key, since) >= self._threshold(kind):
                    continue
                self.conn.execute(
                    "UPDATE locks SET locked_until = prev_until, level = prev_level WHERE kind = ? AND key = ?",
                    (kind, key),
                )
                if kind == "ip":
                    self._unblock(key)
            self._remember(user, org, now)

    def account(self, service: str, user: str, rhost: str, now: float | None = None) -> Decision:
        """Account phase: refuse any login (also by key) while a lock holds."""
        now = self.clock() if now is None else now
        org = self.origin(rhost)
        denied = self._active(self._keys(user, org, now, phase="account"), now, user, org)
        return denied or Decision(True)

    # -- upkeep -------------------------------------------------------------

    def tick(self, now: float | None = None) -> None:
        """Mark stale reservations failed and drop blocks whose lock ended."""
        now = self.clock() if now is None else now
        with self._tx([]):
            self.conn.execute(
                "UPDATE attempts SET state = 'failed' WHERE state = 'pending' AND ts < ?",
                (now - self.cfg.reservation_ttl,),
            )
            if self.blocker is not None:
                for row in self.host_conn.execute("SELECT net FROM blocks WHERE until <= ?", (now,)).fetchall():
                    self._unblock(row["net"])

    def purge(self, now: float | None = None) -> int:
        """Delete records older than ``retention``; returns attempt rows removed."""
        now = self.clock() if now is None else now
        cutoff = now - self.cfg.retention
        with self._tx([]):
            return purge_attempts(self.conn, cutoff, now - self.cfg.known_for)

    def restore_blocks(self, now: float | None = None) -> None:
        """After a restart: re-add live blocks, drop ended ones."""
        if self.blocker is None:
            return
        now = self.clock() if now is None else now
        with self._tx([]):
            for row in self.host_conn.execute("SELECT net, until FROM blocks").fetchall():
                if row["until"] > now:
                    self.blocker.block(row["net"])
                else:
                    self._unblock(row["net"])

    # -- operator requests ------------------------------------------------

    def _match(self, user: str | None, ip: str | None) -> tuple[str, list[Any]]:
        clauses, args = [], []
        if user is not None:
            clauses.append("a.username = ?")
            args.append(name_key(user))
        if ip is not None:
            clauses.append("(a.ip = ? OR a.ipkey = ?)")
            args += [escape_text(ip), self.origin(escape_text(ip)).ipkey]
        return (" AND ".join(clauses) or "TRUE"), args

    def records(self, user: str | None = None, ip: str | None = None, locked: bool = False,
                now: float | None = None) -> list[dict[str, Any]]:
        """One record per (username, ip, service) with counts, times and lock state."""
        now = self.clock() if now is None else now
        where, args = self._match(user, ip)
        # {where} joins fixed clauses; every value is bound.
        rows = self.conn.execute(
            "SELECT a.username, a.ip, a.service,"  # noqa: S608
            " COUNT(*) FILTER (WHERE a.state IN ('pending', 'failed') AND a.ts > COALESCE(l.reset_at, 0)) AS count,"
            " COUNT(*) FILTER (WHERE a.state = 'cleared') AS cleared,"
            " COUNT(*) FILTER (WHERE a.state = 'refused') AS refused,"
            " COUNT(*) FILTER (WHERE a.state = 'succeeded') AS succeeded,"
            " COUNT(*) FILTER (WHERE a.state = 'pending') AS pending,"
            " MIN(a.ts) AS first_ts, MAX(a.ts) AS last_ts"
            " FROM attempts a LEFT JOIN locks l ON l.kind = 'pair' AND l.key = a.username || '\t' || a.ip"
            f" WHERE {where} GROUP BY a.username, a.ip, a.service ORDER BY last_ts DESC",
            args,
        ).fetchall()
        out = []
        for r in rows:
            org = self.origin(r["ip"])
            lock = self._active(self._keys(r["username"], org, now), now, r["username"], org)
            if locked and lock is None:
                continue
            out.append({
                "username": r["username"],
                "ip": r["ip"],
                "service": r["service"],
                "count": int(r["count"]),
                "refused": int(r["refused"]),
                "succeeded": int(r["succeeded"]),
                "cleared": int(r["cleared"]),
                "pending": int(r["pending"]),
                "first_attempt": iso(r["first_ts"]),
                "last_attempt": iso(r["last_ts"]),
                "locked_until": iso(lock.until) if lock else None,
                "rule": lock.rule if lock else None,
            })
        return out

    def explain(self, user: str, ip: str, now: float | None = None) -> dict[str, Any]:
        """Would a try by ``user`` from ``ip`` be allowed now, and why not."""
        now = self.clock() if now is None else now
        u, org = name_key(user), self.origin(escape_text(ip))
        keys = self._keys(u, org, now)
        counts: dict[str, dict[str, Any]] = {}
        d = self._active(keys, now, u, org)
        for kind, key in keys:
            n = self._count(kind, key, self._since(self._lock(kind, key), now))
            counts[kind] = {"count": n, "limit": self._threshold(kind), "key": key.replace("\t", " ")}
            if d is None and n >= self._threshold(kind) and not self._spared(kind, u, org, now):
                d = Decision(False, kind, None)
        reason = None
        if org.allowed:
            reason = "address is in guard.allow"
        elif org.ip == CONSOLE and not keys:
            reason = "the console way in: root and the admin group are never locked at local:root"
        elif not keys:
            reason = "root is not locked (guard.deny_root = false)"
        elif "user" in counts and self.known(u, org, now):
            reason = "known origin: the per-username rule never refuses here"
        return {
            "username": u, "ip": org.ip, "allowed": d is None, "rule": d.rule if d else None,
            "until": iso(d.until) if d else None, "counts": counts, "note": reason,
        }

    def _lift_keys(self, user: str | None, ip: str | None) -> list[tuple[str, str]]:
        u = name_key(user) if user is not None else None
        org = self.origin(escape_text(ip)) if ip is not None else None
        if u is not None and org is not None:
            return [("pair", pair_key(u, org.ip))]
        keys: list[tuple[str, str]] = []
        if u is not None:
            keys.append(("user", u))
            keys += [("pair", r["key"]) for r in self.conn.execute(
                "SELECT key FROM locks WHERE kind = 'pair' AND substr(key, 1, CAST(? AS INTEGER)) = ?",
                (len(u) + 1, u + "\t"))]
        if org is not None:
            keys.append(("ip", org.ipkey))
            keys += [("pair", r["key"]) for r in self.conn.execute(
                "SELECT key FROM locks WHERE kind = 'pair' AND substr(key, length(key) - CAST(? AS INTEGER)) = ?",
                (len(org.ip), "\t" + org.ip))]
        return keys

    def lift(self, user: str | None = None, ip: str | None = None, now: float | None = None) -> int:
        """End locks (pair, user or address) and restart their counts; returns locks ended."""
        now = self.clock() if now is None else now
        lifted = 0
        with self._tx(None):
            for kind, key in self._lift_keys(user, ip):
                row = self._lock(kind, key)
                if row is not None and row["locked_until"] > now:
                    lifted += 1
                self.conn.execute(
                    "INSERT INTO locks (kind, key, reset_at) VALUES (?, ?, ?) ON CONFLICT (kind, key)"
                    " DO UPDATE SET reset_at = excluded.reset_at, level = 0,"
                    " locked_until = CASE WHEN locks.locked_until < excluded.reset_at THEN locks.locked_until"
                    " ELSE excluded.reset_at END",
                    (kind, key, now),
                )
                if kind == "ip":
                    self._unblock(key)
        return lifted

    def forget(self, user: str | None = None, ip: str | None = None) -> int:
        """Delete every record of a user or an address (data-subject request)."""
        if user is None and ip is None:
            raise ValueError("forget needs a user or an ip")
        with self._tx(None):
            keys = self._lift_keys(user, None) if user is not None else []
            keys += self._lift_keys(None, ip) if ip is not None else []
            for kind, key in keys:
                self.conn.execute("DELETE FROM locks WHERE kind = ? AND key = ?", (kind, key))
                if kind == "ip":
                    self._unblock(key)
            n = 0
            if user is not None:
                n += self.conn.execute("DELETE FROM attempts WHERE username = ?", (name_key(user),)).rowcount
                self.conn.execute("DELETE FROM known_origins WHERE username = ?", (name_key(user),))
            if ip is not None:
                e = escape_text(ip)
                n += self.conn.execute("DELETE FROM attempts WHERE ip = ? OR ipkey = ?",
                                       (e, self.origin(e).ipkey)).rowcount
        return int(n)

    def active_lock_count(self, now: float | None = None) -> int:
        """How many locks hold now (for ``stats``)."""
        now = self.clock() if now is None else now
        return int(self.conn.execute("SELECT COUNT(*) FROM locks WHERE locked_until > ?", (now,)).fetchone()[0])

    def status(self, now: float | None = None) -> dict[str, Any]:
        """Counts and the active locks."""
        now = self.clock() if now is None else now
        c = self.conn.execute(
            "SELECT COUNT(*) AS n, COUNT(*) FILTER (WHERE state = 'pending') AS p,"
            " COUNT(DISTINCT username || '\t' || ip) AS r FROM attempts"
        ).fetchone()
        locks = [
            {"kind": r["kind"], "key": r["key"].replace("\t", " "), "locked_until": iso(r["locked_until"]),
             "level": r["level"]}
            for r in self.conn.execute("SELECT * FROM locks WHERE locked_until > ? ORDER BY locked_until", (now,))
        ]
        blocks = [r["net"] for r in self.host_conn.execute("SELECT net FROM blocks")]
        return {"attempts": int(c["n"]), "pending": int(c["p"] or 0), "pairs": int(c["r"]),
                "active_locks": locks, "blocks": blocks, "policy": _policy(self.cfg)}


def _policy(cfg: GuardConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d.pop("extra", None)
    d["allow"] = [str(n) for n in cfg.allow]
    d["socket"] = str(cfg.socket)
    d["state_dir"] = str(cfg.state_dir)
    d["syslog_socket"] = str(cfg.syslog_socket)
    d["store"] = str(cfg.store) if cfg.store is not None else None
    d["store_password_file"] = str(cfg.store_password_file)
    return d
