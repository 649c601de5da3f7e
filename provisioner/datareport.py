"""The data report: everything slotwarden holds about one user, item by item.

Each row is an item of the operator's data table (DESIGN.md) — why it is held, where, for how
long — filled with this user's value. Secrets never appear: for the slot password only whether
a shadow hash exists, for app credentials only whether they exist. A name that is not a slot
(someone typed it at a login prompt) gets its login records only (failed attempts, known origins).

The built-in rows come from :data:`SOURCES`; the extensions' rows (plan and suspension, limits,
support grants, notices, the Hub's) follow, from each extension's ``data_items`` in the order of
:data:`provisioner.extensions.EXTENSIONS`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from provisioner import accounts, hostlogs
from provisioner.context import Context
from provisioner.errors import BadInput, SlotError
from provisioner.metrics.kernel import human, tree_usage
from provisioner.retention import AttemptRecords, credential_apps, installed_apps
from provisioner.store import SlotRecord


@dataclass(frozen=True)
class Item:
    """One row: the item, this user's value, why it is held, where, and how long."""

    item: str
    value: Any
    why: str
    stored: str
    kept: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Source = Callable[[Context, str, SlotRecord | None], list[Item]]


def shadow_state(username: str, shadow: Path = Path("/etc/shadow")) -> str:
    """'set', 'locked', 'none' or 'no account' — never the hash itself."""
    try:
        for line in shadow.read_text().splitlines():
            name, _, rest = line.partition(":")
            if name == username:
                field = rest.split(":", 1)[0]
                if field in ("", "*", "!", "!!", "!*"):
                    return "none"
                return "locked" if field.startswith("!") else "set"
    except OSError:
        return "unknown (cannot read the shadow file)"
    return "no account"


def _attempt_items(ctx: Context, username: str, _rec: SlotRecord | None) -> list[Item]:
    period = ctx.config.retention.attempts
    records = AttemptRecords(ctx).list_for(username, time.time() - period)
    value = [{"ip": r.get("ip"), "count": r.get("count"),
              "last": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(r["last"])) if r.get("last") else None}
             for r in records]
    store = AttemptRecords(ctx)
    known = [{"origin": o["origin"], "last": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(o["last"])))}
             for o in store.known_origins(username)]
    return [Item("failed login attempts", value or "none", "stop brute force",
                 f"attempt store {store.path}: username as typed, remote IP, count, last attempt",
                 f"{period / 3600:g} hours, or until lifted/forgotten"),
            Item("known login origins", known or "none",
                 "addresses (IPv6: /64) and local callers of successful password logins: a distributed "
                 "attack on the name never locks its owner out of them",
                 f"attempt store {store.path} (known_origins): origin, last success",
                 "30 days after the last success ([guard] known_for), or until forgotten")]


def _slot_items(ctx: Context, username: str, rec: SlotRecord | None) -> list[Item]:
    if rec is None:
        return []
    db = ctx.config.db_path
    acct = accounts.lookup_user(username)
    items = [
        Item("email", rec.email, "login for the client area, notices, support", f"store {db} (slots), clear",
             "while the slot exists"),
        Item("username", {"slot": rec.username, "system account": f"uid {acct.uid}" if acct else "absent"},
             "names the Linux user, the home, the slot, app logins", f"store {db} (slots) + /etc/passwd",
             "while the slot exists"),
        Item("country", rec.country, "tax computation", f"store {db} (slots), clear", "while the slot exists"),
        Item("slot password", f"shadow hash {shadow_state(username)} (the hash is never shown)",
             "log in to the slot (ssh, hub)", "/etc/shadow hash only; never kept in clear, shown once",
             "reset on request"),
    ]
    apps = installed_apps(ctx, username)
    creds = credential_apps(ctx, username)
    names = sorted(set(apps) | set(creds))
    app_value: Any = [{"app": a, "installed": apps.get(a, "no"), "credentials stored": a in creds}
                      for a in names] or "none"
    items.append(Item("application passwords", app_value, "log in to each installed app",
                      f"store {db} (app credentials), encrypted at rest; secrets never shown here",
                      "until the app is uninstalled"))
    items.append(Item("payment reference", rec.payment_ref or "none", "PayPal transaction id / Coinbase payment id",
                      f"store {db} (slots), clear", "while the slot exists"))
    return items


def _tail_items(ctx: Context, username: str, rec: SlotRecord | None) -> list[Item]:
    if rec is None:
        return []
    items = [Item("per-slot metrics", f"not stored (read live: slotctl metrics {username})",
                  "CPU, swap, RAM, load 1/5/15, own processes, I/O, disk used, quota, physical disk",
                  "read live", "not stored")]
    home = Path(rec.home)
    hist = home / ".bash_history"
    try:
        hist_size: Any = human(os.lstat(hist).st_size) if hist.exists() else "none"
    except OSError:
        hist_size = "unknown"
    items.append(Item("user data, bash history",
                      {"home": str(home), "home size": human(tree_usage(str(home))) if home.exists() else "absent",
                       "bash history size": hist_size},
                      "the tenant's own", "the slot's home, isolated", "until the tenant removes it"))
    kept = [k for k in ctx.store.kept_homes() if k["username"] == username]
    if kept:
        items.append(Item("kept homes (--keep-data)", [k["path"] for k in kept], "the tenant's data after removal",
                          "under the slots root, owned by root",
                          f"{ctx.config.retention.keep_data_for // 86400} days after removal"))
    audit = ctx.store.audit_entries(username)
    items.append(Item("audit entries", {"count": len(audit), "actions": sorted({a["action"] for a in audit})},
                      "who changed the slot, when", f"store {ctx.config.db_path} (audit), never a secret",
                      "kept (the audit record stays after removal)"))
    return items


def _log_items(ctx: Context, username: str, rec: SlotRecord | None) -> list[Item]:
    """The client-area password, sshd and system logs, app logs and files: counted, never copied."""
    if rec is None:
        return []
    cfg = ctx.config.report
    files = hostlogs.auth_log_counts(cfg, username)
    items = [
        Item("client-area password", "not held here (the billing system's)", "log in to the client area",
             "not held here", "—"),
        Item("sshd logs", {"auth log lines (sshd) naming the user": sum(files.values()),
                           "per file": files or "no auth log file on this host",
                           "journal lines (sshd) naming the user": hostlogs.journal_count(cfg, username)},
             "intrusion checks, troubleshooting",
             "the host's logs (auth.log, the journal): counted here, never copied", "the host's log rotation"),
        Item("system logs", "none per user: the host's system logs (kernel, daemons) are not kept per user; "
                            "the lines about this user's logins are counted under sshd logs",
             "troubleshooting", "the host's logs", "the host's log rotation"),
    ]
    apps = installed_apps(ctx, username)
    log_dir = _supervisor_log_dir(ctx)
    home = Path(rec.home)
    rows = []
    for app in sorted(apps):
        app_dir = home / "apps" / app
        rows.append({"app": app, "files": str(app_dir),
                     "size": human(tree_usage(str(app_dir))) if app_dir.is_dir() else "absent",
                     "log files in the app's directory": hostlogs.app_log_files(app_dir),
                     "supervisor logs": hostlogs.supervisor_logs(log_dir, app, username)
                     if log_dir is not None else "in the journal of the app's units (the host's rotation)"})
    items.append(Item("app logs, installed app files", rows or "not held (no app installed)",
                      "app support, with the tenant's permission",
                      "the slot's app directory (~/apps/APP) and the supervisor's log directory",
                      "until the app is uninstalled"))
    return items


def _supervisor_log_dir(ctx: Context) -> Path | None:
    """Where the host's app supervisor keeps the apps' output (None: the journal, or no supervisor)."""
    try:
        from provisioner.supervisor import supervisor_for

        log_dir = getattr(supervisor_for(ctx), "log_dir", None)
    except (ImportError, SlotError):
        return None
    return log_dir if isinstance(log_dir, Path) else None


SOURCES: tuple[Source, ...] = (_slot_items, _attempt_items, _log_items, _tail_items)


def data_report(ctx: Context, username: str) -> dict[str, Any]:
    """Everything held about USERNAME; a non-slot name gets its login records only."""
    if not isinstance(username, str) or not username or "\x00" in username or len(username) > 256:
        raise BadInput("username is empty or invalid")
    rec = ctx.store.get_slot(username)
    items = [item for source in SOURCES for item in source(ctx, username, rec)]
    items += ctx.extensions.data_items(ctx, username, rec)
    return {"username": username, "is_slot": rec is not None, "generated_at": time.time(),
            "items": [i.as_dict() for i in items]}
