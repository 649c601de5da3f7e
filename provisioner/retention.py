"""Retention: every rule of the data-handling policy, enforced by code.

:data:`RULES` holds one function per rule; ``slotctl retention run`` applies them all and says
what each removed. A rule only removes what is past its period, so running it from cron every
few minutes is safe and a second run removes nothing. The extensions' rules
(:meth:`provisioner.extensions.Extension.retention_rules`) run after the built-in ones.

Built-in rules: failed-attempt records older than ``retention.attempts`` [24 h] (the guard's
attempt store), credentials of apps no longer installed (the apps store), homes kept with
``--keep-data`` past ``retention.keep_data_for`` [30 days], app logs of apps no longer
installed. :mod:`provisioner.support` adds support grants past their expiry,
:mod:`provisioner.notices` the quarantine of files named by takedown notices past their deadline.

>>> [r.__name__ for r in RULES][:3]
['expire_attempts', 'drop_orphaned_credentials', 'remove_kept_homes']
"""

from __future__ import annotations

import importlib
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner.context import Context
from provisioner.errors import BadInput, SlotError
from provisioner.store import current_actor


@dataclass(frozen=True)
class RuleResult:
    """What one rule removed (or would remove, in a dry run)."""

    rule: str
    description: str
    removed: list[str] = field(default_factory=list)
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "description": self.description, "removed": self.removed,
                "count": len(self.removed), "note": self.note}


Rule = Callable[[Context, float, bool], RuleResult]


# --- the guard's attempt store ----------------------------------------------------------------


class AttemptRecords:
    """Failed-login records in the guard's attempt store (``<state_dir>/guard.db``, ``attempts``).

    With the guard installed (``pam_hooks.client``), forgetting and purging go through it — to
    the guard service when it runs, so they are serialized with logins and its locks and
    blackhole routes go too; to the store directly when it does not. Reading is a plain
    read-only query (WAL readers never block the service). An absent store means no records.
    """

    def __init__(self, ctx: Context) -> None:
        self.guard: Any = None
        self.guard_cfg: Any = None
        self.escape: Callable[[str], str] = lambda text: text
        try:
            client = importlib.import_module("pam_hooks.client")
            guard_config = importlib.import_module("pam_hooks.config")
            protocol = importlib.import_module("pam_hooks.protocol")
            self.guard_cfg = guard_config.load_guard_config(ctx.config.path)
            self.guard, self.escape = client, protocol.escape_text
        except (ImportError, AttributeError):
            pass
        self.path: Path = self.guard_cfg.db_path if self.guard_cfg is not None else ctx.config.state_dir / "guard.db"

    def _connect(self) -> sqlite3.Connection | None:
        if not self.path.exists():
            return None
        try:
            conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='attempts'").fetchone()
        except sqlite3.Error as exc:
            raise SlotError(f"cannot open the attempt store {self.path}: {exc}") from None
        if not exists:
            conn.close()
            return None
        return conn

    def list_for(self, username: str, since: float) -> list[dict[str, Any]]:
        """Records for USERNAME (exactly as typed) newer than SINCE, grouped by address."""
        conn = self._connect()
        if conn is None:
            return []
        try:
            rows = conn.execute(
                "SELECT ip, COUNT(*) AS count, MIN(ts) AS first, MAX(ts) AS last FROM attempts "
                "WHERE username = ? AND ts >= ? GROUP BY ip ORDER BY last DESC",
                (self.escape(username), since)).fetchall()
            return [dict(r) for r in rows]
        finally:
            conn.close()

    def known_origins(self, username: str) -> list[dict[str, Any]]:
        """Where USERNAME logged in with a password (the guard's per-username rule spares them)."""
        conn = self._connect()
        if conn is None:
            return []
        try:
            store = importlib.import_module("pam_hooks.store")
            return list(store.list_known_origins(conn, username))
        except (ImportError, AttributeError, sqlite3.Error):
            return []  # a guard from before known origins: none held
        finally:
            conn.close()

    def forget(self, username: str) -> int:
        """Remove every record of USERNAME; returns how many."""
        if self.guard is not None:
            return int(self.guard.admin(self.guard_cfg, "forget", user=username)["deleted"])
        conn = self._connect()
        if conn is None:
            return 0
        try:
            return int(conn.execute("DELETE FROM attempts WHERE username = ?", (username,)).rowcount)
        finally:
            conn.close()

    def purge(self, before: float, dry_run: bool = False) -> list[str]:
        """Remove records older than BEFORE; returns ``'username' from ip (n)`` per removed group."""
        conn = self._connect()
        if conn is None:
            return []
        try:
            groups = conn.execute(
                "SELECT username, ip, COUNT(*) AS n FROM attempts WHERE ts < ? GROUP BY username, ip "
                "ORDER BY username, ip", (before,)).fetchall()
            removed = [f"{g['username']!r} from {g['ip']} ({g['n']})" for g in groups]
            if not dry_run and groups:
                if self.guard is not None:
                    # The guard purges by its own [guard] retention (24 h by default, as here).
                    self.guard.admin(self.guard_cfg, "purge")
                else:
                    conn.execute("DELETE FROM attempts WHERE ts < ?", (before,))
            return removed
        finally:
            conn.close()


# --- the apps store ---------------------------------------------------------------------------

# The apps package's tables (provisioner/apps/registry.py): ``app_installs(username, app, state)``
# and ``app_credentials(username, app, nonce, ciphertext)``. Only username, app and state are
# ever read here, never a secret. Read directly so a host without the apps package still answers.
APPS_TABLE = "app_installs"
CREDENTIALS_TABLE = "app_credentials"


def table_exists(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def installed_apps(ctx: Context, username: str) -> dict[str, str] | None:
    """{app: install state} for USERNAME (None: this host has no apps store)."""
    db = ctx.store.db
    if not table_exists(db, APPS_TABLE):
        return None
    rows = db.execute(f"SELECT app, state FROM {APPS_TABLE} WHERE username = ? ORDER BY app",  # noqa: S608
                      (username,)).fetchall()
    return {r["app"]: r["state"] for r in rows}


def credential_apps(ctx: Context, username: str) -> list[str] | None:
    """Apps of USERNAME that have stored credentials (None: no credentials store)."""
    db = ctx.store.db
    if not table_exists(db, CREDENTIALS_TABLE):
        return None
    rows = db.execute(f"SELECT DISTINCT app FROM {CREDENTIALS_TABLE} WHERE username = ? ORDER BY app",  # noqa: S608
                      (username,)).fetchall()
    return [r["app"] for r in rows]


# --- the rules --------------------------------------------------------------------------------


def expire_attempts(ctx: Context, now: float, dry_run: bool) -> RuleResult:
    """Failed-attempt records older than retention.attempts."""
    period = ctx.config.retention.attempts
    removed = AttemptRecords(ctx).purge(now - period, dry_run)
    return RuleResult("attempts", f"failed-attempt records older than {period // 3600} h", removed)


def drop_orphaned_credentials(ctx: Context, now: float, dry_run: bool) -> RuleResult:
    """Credentials of apps no longer installed (or of slots that no longer exist).

    An install row in any state (``installing`` too) keeps its credentials: an install under
    way is not an uninstalled app.
    """
    db = ctx.store.db
    desc = "credentials of apps no longer installed"
    if not table_exists(db, CREDENTIALS_TABLE):
        return RuleResult("app-credentials", desc, note="no credentials store on this host")
    has_apps = table_exists(db, APPS_TABLE)
    # Table names are module constants, never input.
    installed = (f"EXISTS (SELECT 1 FROM {APPS_TABLE} a WHERE a.username = c.username AND a.app = c.app)"  # noqa: S608
                 if has_apps else "0")
    where = f"NOT ({installed}) OR NOT EXISTS (SELECT 1 FROM slots s WHERE s.username = c.username)"  # noqa: S608
    rows = db.execute(f"SELECT DISTINCT c.username, c.app FROM {CREDENTIALS_TABLE} c WHERE {where} "  # noqa: S608
                      "ORDER BY c.username, c.app").fetchall()
    removed = [f"{r['username']}/{r['app']}" for r in rows]
    if rows and not dry_run:
        with ctx.store.transaction():
            db.executemany(f"DELETE FROM {CREDENTIALS_TABLE} WHERE username = ? AND app = ?",  # noqa: S608
                           [(r["username"], r["app"]) for r in rows])
    return RuleResult("app-credentials", desc, removed)


def remove_kept_homes(ctx: Context, now: float, dry_run: bool) -> RuleResult:
    """Homes kept with --keep-data past retention.keep_data_for."""
    period = ctx.config.retention.keep_data_for
    desc = f"homes kept with --keep-data for more than {period // 86400} days"
    removed = []
    for kept in ctx.store.kept_homes():
        if kept["kept_at"] > now - period:
            continue
        path = Path(kept["path"])
        kept_dir = ctx.settings.slots_root / ".kept"
        if path.parent != kept_dir or path.is_symlink():
            raise SlotError(f"kept home {path} is not directly under {kept_dir}; refusing to remove it")
        removed.append(str(path))
        if not dry_run:
            ctx.quota.remove_home(path)
            ctx.store.delete_kept_home(str(path))
    return RuleResult("kept-homes", desc, removed)


def drop_orphaned_app_logs(ctx: Context, now: float, dry_run: bool) -> RuleResult:
    """The supervisor's logs of apps no longer installed (uninstall removes them; this catches the rest).

    A log ``slotwarden-PROG@USER.log*`` belongs to the install (USER, APP) when PROG is APP or
    starts with ``APP-`` (an app's second program, e.g. ``wordpress-fpm``).
    """
    desc = "app logs of apps no longer installed (the supervisor's log directory)"
    try:
        from provisioner.supervisor import supervisor_for

        log_dir = getattr(supervisor_for(ctx), "log_dir", None)
    except (ImportError, SlotError):
        log_dir = None
    if not isinstance(log_dir, Path):
        return RuleResult("app-logs", desc, note="apps log to the journal here: the host's rotation keeps them")
    db = ctx.store.db
    installs = {(r["username"], r["app"]) for r in db.execute(f"SELECT username, app FROM {APPS_TABLE}")} \
        if table_exists(db, APPS_TABLE) else set()  # noqa: S608 - a module constant
    removed = []
    for path in sorted(log_dir.glob("slotwarden-*@*.log*")):
        prog, _, rest = path.name.removeprefix("slotwarden-").partition("@")
        user = rest.partition(".log")[0]
        if any(u == user and (prog == a or prog.startswith(f"{a}-")) for u, a in installs):
            continue
        removed.append(str(path))
        if not dry_run:
            path.unlink(missing_ok=True)
    return RuleResult("app-logs", desc, removed)


RULES: tuple[Rule, ...] = (expire_attempts, drop_orphaned_credentials, remove_kept_homes, drop_orphaned_app_logs)


def run_retention(ctx: Context, *, dry_run: bool = False, now: float | None = None) -> list[RuleResult]:
    """Apply every rule (or say what each would remove); audits what was removed."""
    now = time.time() if now is None else now
    results = [rule(ctx, now, dry_run) for rule in (*RULES, *ctx.extensions.retention_rules())]
    if not dry_run and any(r.removed for r in results):
        ctx.store.audit(current_actor(), "retention.run", None,
                        {r.rule: len(r.removed) for r in results if r.removed})
    return results


def forget_attempts(ctx: Context, username: str) -> int:
    """Remove every failed-attempt record of USERNAME (as typed) on the user's request; audited."""
    if not username or "\x00" in username:
        raise BadInput("--user must not be empty")
    n = AttemptRecords(ctx).forget(username)
    # The audit names the user only when it is a slot (kept anyway); a bare typed name that
    # asked to be forgotten must not live on in the audit log.
    subject = username if ctx.store.get_slot(username) is not None else None
    ctx.store.audit(current_actor(), "attempts.forget", subject, {"removed": n})
    return n
