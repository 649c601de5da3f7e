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
            protocol = importlib.import_module("pam_hooks.protocol")
            self.guard_cfg = ctx.config.guard_config()
            self.guard, self.escape = client, protocol.escape_text
        except (ImportError, AttributeError):
            pass
        self.path: Path = self.guard_cfg.db_path if self.guard_cfg is not None else ctx.config.state_dir / "guard.db"

    def _connect(self) -> Any:
        """The attempt store through ``pam_hooks.store`` (None when absent or without records)."""
        if not self.path.exists():
            return None
        try:
            return self._store().open_store(self.path)
        except sqlite3.Error as exc:
            raise SlotError(f"cannot open the attempt store {self.path}: {exc}") from None

    def _store(self) -> Any:
        return importlib.import_module("pam_hooks.store")

    def list_for(self, username: str, since: float) -> list[dict[str, Any]]:
        """Records for USERNAME (exactly as typed) newer than SINCE, grouped by address."""
        conn = self._connect()
        if conn is None:
            return []
        try:
            return list(self._store().attempts_since(conn, self.escape(username), since))
        finally:
            conn.close()

    def known_origins(self, username: str) -> list[dict[str, Any]]:
        """Where USERNAME logged in with a password (the guard's per-username rule spares them)."""
        conn = self._connect()
        if conn is None:
            return []
        try:
            return list(self._store().list_known_origins(conn, username))
        except (AttributeError, sqlite3.Error):
            return []  # a guard from before known origins: none held
        finally:
            conn.close()

    def forget(self, username: str) -> int:
        """Remove every record of USERNAME (attempts, counters, known origins); returns how many attempts."""
        if self.guard is not None:
            return int(self.guard.admin(self.guard_cfg, "forget", user=username)["deleted"])
        conn = self._connect()
        if conn is None:
            return 0
        try:
            return int(self._store().forget_attempts(conn, username))
        finally:
            conn.close()

    def purge(self, before: float, dry_run: bool = False) -> list[str]:
        """Remove records older than BEFORE; returns ``'username' from ip (n)`` per removed group."""
        conn = self._connect()
        if conn is None:
            return []
        try:
            groups = self._store().expired_groups(conn, before)
            removed = [f"{g['username']!r} from {g['ip']} ({g['n']})" for g in groups]
            if not dry_run and groups:
                if self.guard is not None:
                    # The guard purges by the same key, [retention] attempts (as read when it started).
                    self.guard.admin(self.guard_cfg, "purge")
                else:
                    self._store().purge_attempts(conn, before)
            return removed
        finally:
            conn.close()


# --- the apps store ---------------------------------------------------------------------------


def _apps(ctx: Context) -> Any:
    from provisioner.apps.registry import AppRegistry
    from provisioner.apps.vault import KEY_FILE_NAME, Vault

    return AppRegistry(ctx.store, Vault(ctx.config.state_dir / KEY_FILE_NAME))  # the key is never read here


def installed_apps(ctx: Context, username: str) -> dict[str, str]:
    """{app: install state} for USERNAME."""
    return {r.app: r.state for r in _apps(ctx).installs(username)}


def credential_apps(ctx: Context, username: str) -> list[str]:
    """Apps of USERNAME that have stored credentials."""
    return list(_apps(ctx).credential_apps(username))


# --- the rules --------------------------------------------------------------------------------


def expire_attempts(ctx: Context, now: float, dry_run: bool) -> RuleResult:
    """Failed-attempt records older than retention.attempts."""
    period = ctx.config.retention.attempts
    removed = AttemptRecords(ctx).purge(now - period, dry_run)
    return RuleResult("attempts", f"failed-attempt records older than {period / 3600:g} h", removed)


def drop_orphaned_credentials(ctx: Context, now: float, dry_run: bool) -> RuleResult:
    """Credentials of apps no longer installed (or of slots that no longer exist).

    An install row in any state (``installing`` too) keeps its credentials: an install under
    way is not an uninstalled app.
    """
    desc = "credentials of apps no longer installed"
    registry = _apps(ctx)
    orphans = registry.orphaned_credentials({r.username for r in ctx.store.list_slots()})
    if orphans and not dry_run:
        with ctx.store.transaction():
            for username, app in orphans:
                registry.delete_credentials(username, app)
    return RuleResult("app-credentials", desc, [f"{u}/{a}" for u, a in orphans])


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
    installs = {(r.username, r.app) for r in _apps(ctx).installs()}
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
