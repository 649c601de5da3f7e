"""Support access with the tenant's consent: requested by staff, approved by the tenant, time-limited.

The life of a grant (table ``support_grants``, every change audited)::

    slotctl support request USER --by STAFF --reason R --for 2h [--write]   → requested
    slotwarden-me support approve ID [--read-only] | refuse ID (as the tenant) → active | refused
    at expiry, `slotctl support revoke ID`, `slotwarden-me support revoke ID`,
    slot removal or suspension                                               → expired | revoked

STAFF must be a real account in the host's admin group (never root, never a slot). While a
grant is active STAFF sees the slot's home at ``<grants_dir>/<STAFF>/<USER>-<ID>``: an
idmapped mount (:mod:`provisioner.idmapped`) in which the tenant's files are STAFF's, read-only
unless write was asked for and approved, below a directory only STAFF (and root) can enter.
Nothing in the tenant's tree is changed, so there is nothing to undo in it and no path walk
over a tree the tenant controls: a symlink the tenant plants is followed by STAFF's own
credentials, outside the mapping. (A write grant lets STAFF write what the tenant could —
``~/.bashrc`` included — so it is as strong as the tenant's own account: the tenant is told so.)

The tenant's answers arrive through its inbox (:mod:`provisioner.inbox`: files it creates in
``~/.slotwarden/answers/``, trusted by their kernel-set owner); :func:`sync` takes
them, applies them, ends what has expired and republishes the inboxes. Every support command and
``slotctl retention run`` (on the timer) call it first.

>>> parse_grant_duration("2h", 7 * 86400)
7200
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from provisioner import idmapped, inbox
from provisioner.config import SupportConfig, parse_duration
from provisioner.context import Context
from provisioner.errors import BadInput, ConfigError, SlotError
from provisioner.extensions import Hooks
from provisioner.names import validate_username
from provisioner.steps import Step
from provisioner.store import SlotRecord, Store, current_actor

OPEN_STATES = ("requested", "active")
MAX_REASON = 300


def support_config(ctx: Context) -> SupportConfig:
    return ctx.config.support


@dataclass(frozen=True)
class Grant:
    """One support request and what became of it."""

    id: int
    username: str
    staff: str
    reason: str
    write: bool
    duration: int
    state: str
    requested_at: float
    decided_at: float | None
    expires_at: float | None
    ended_at: float | None
    ended_by: str | None
    mountpoint: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class SupportGrants:
    """The only code that writes ``support_grants``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, username: str, staff: str, reason: str, write: bool, duration: int, now: float) -> int:
        row = self.store.db.execute(
            "INSERT INTO support_grants (username, staff, reason, write, duration, state, requested_at) "
            "VALUES (?, ?, ?, ?, ?, 'requested', ?) RETURNING id",
            (username, staff, reason, int(write), duration, now)).fetchone()
        return int(row[0])

    def get(self, grant_id: int) -> Grant | None:
        row = self.store.db.execute("SELECT * FROM support_grants WHERE id = ?", (grant_id,)).fetchone()
        return _grant(row) if row else None

    def list(self, username: str | None = None, open_only: bool = False) -> list[Grant]:
        sql, args = "SELECT * FROM support_grants WHERE 1=1", []
        if username is not None:
            sql += " AND username = ?"
            args.append(username)
        if open_only:
            sql += " AND state IN ('requested', 'active')"
        return [_grant(r) for r in self.store.db.execute(sql + " ORDER BY id", args).fetchall()]

    def activate(self, grant_id: int, write: bool, now: float, expires_at: float, mountpoint: str) -> None:
        self.store.db.execute(
            "UPDATE support_grants SET state = 'active', write = ?, decided_at = ?, expires_at = ?, mountpoint = ? "
            "WHERE id = ?", (int(write), now, expires_at, mountpoint, grant_id))

    def end(self, grant_id: int, state: str, now: float, by: str) -> None:
        self.store.db.execute(
            "UPDATE support_grants SET state = ?, ended_at = ?, ended_by = ?, "
            "decided_at = COALESCE(decided_at, ?) WHERE id = ?", (state, now, by, now, grant_id))


def _grant(row: Any) -> Grant:
    values = dict(row)
    values["write"] = bool(values["write"])
    return Grant(**values)


# --- validation ---------------------------------------------------------------------------------


def parse_grant_duration(value: object, maximum: int) -> int:
    """Seconds of a ``--for`` value (``30m``, ``2h``, ``1d``): more than zero, at most MAXIMUM."""
    try:
        seconds = parse_duration(value, "--for")
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    if seconds <= 0:
        raise BadInput("--for must be more than zero")
    if seconds > maximum:
        raise BadInput(f"--for must be at most {maximum}s (support.max_duration)")
    return seconds


def validate_reason(reason: object) -> str:
    """A support reason: 1-300 printable characters on one line."""
    if not isinstance(reason, str) or not reason.strip():
        raise BadInput("--reason is empty")
    if len(reason) > MAX_REASON or not reason.isprintable():
        raise BadInput(f"--reason must be at most {MAX_REASON} printable characters on one line")
    return reason.strip()


def check_staff(ctx: Context, staff: object) -> pwd.struct_passwd:
    """STAFF's passwd entry if it is a real, non-root account in the admin group and not a slot."""
    if not isinstance(staff, str) or not staff or len(staff) > 64 or not staff.isprintable() or "/" in staff:
        raise BadInput("--by must name a staff account")
    try:
        pw = pwd.getpwnam(staff)
    except KeyError:
        raise BadInput(f"--by: no account named {staff!r}") from None
    group = ctx.settings.admin_group
    try:
        gr = grp.getgrnam(group)
    except KeyError:
        raise BadInput(f"--by: the admin group {group!r} does not exist") from None
    if pw.pw_uid == 0:
        raise BadInput("--by: root needs no grant")
    if ctx.store.get_slot(staff) is not None:
        raise BadInput(f"--by: {staff!r} is a slot, not staff")
    if staff not in gr.gr_mem and pw.pw_gid != gr.gr_gid:
        raise BadInput(f"--by: {staff!r} is not in the admin group {group!r}")
    return pw


def _require_slot(ctx: Context, username: str) -> SlotRecord:
    validate_username(username)
    rec = ctx.store.get_slot(username)
    if rec is None or rec.state in ("creating", "removing"):
        raise BadInput(f"no slot named {username!r}")
    return rec


# --- the kernel side ----------------------------------------------------------------------------


def _staff_dir(cfg: SupportConfig, staff: pwd.struct_passwd) -> int:
    """A descriptor of ``<grants_dir>/<staff>``: the staff's own, 0500 — nobody else traverses it,
    whatever group the staff is in (the view's root shows the home's mode with the staff as owner
    and group). Root only works in it by descriptor and never follows a link there."""
    cfg.grants_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
    os.chmod(cfg.grants_dir, 0o711)  # noqa: S103 - traverse only
    base = os.open(cfg.grants_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(staff.pw_name, 0o750, dir_fd=base)
        fd = os.open(staff.pw_name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=base)
    finally:
        os.close(base)
    os.fchown(fd, staff.pw_uid, staff.pw_gid)
    os.fchmod(fd, 0o500)
    return fd


def _mount_grant(ctx: Context, grant: Grant, rec: SlotRecord, write: bool) -> str:
    cfg = support_config(ctx)
    staff = check_staff(ctx, grant.staff)
    tenant = pwd.getpwnam(grant.username)
    home = Path(rec.home)
    if home.parent != ctx.settings.slots_root or home.is_symlink() or not home.is_dir():
        raise SlotError(f"slot {grant.username!r} has no home under {ctx.settings.slots_root}")
    name = f"{grant.username}-{grant.id}"
    sfd = _staff_dir(cfg, staff)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=sfd)
        tfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sfd)
        try:
            idmapped.mount_idmapped(home, tfd, uid=(tenant.pw_uid, staff.pw_uid),
                                    gid=(tenant.pw_gid, staff.pw_gid), read_only=not write)
        finally:
            os.close(tfd)
    finally:
        os.close(sfd)
    return str(cfg.grants_dir / staff.pw_name / name)


def _unmount_grant(grant: Grant) -> list[int]:
    if not grant.mountpoint:
        return []
    path = Path(grant.mountpoint)
    try:
        staff_uid = pwd.getpwnam(grant.staff).pw_uid
    except KeyError:
        staff_uid = -1
    killed = idmapped.unmount(path, staff_uid)
    with contextlib.suppress(FileNotFoundError, OSError):
        if not idmapped.is_mount_root(path):
            path.rmdir()
    return killed


# --- operations ---------------------------------------------------------------------------------


def request_support(ctx: Context, username: str, staff: str, reason: str, duration: object, write: bool,
                    *, now: float | None = None) -> Grant:
    """Open a support request for USERNAME's home by STAFF; the tenant is told through its inbox."""
    now = time.time() if now is None else now
    cfg = support_config(ctx)
    reason = validate_reason(reason)
    seconds = parse_grant_duration(duration, cfg.max_duration)
    _require_slot(ctx, username)
    check_staff(ctx, staff)
    sync(ctx, now=now)
    grants = SupportGrants(ctx.store)
    with ctx.store.transaction():
        gid = grants.add(username, staff, reason, write, seconds, now)
        ctx.store.audit(current_actor(), "support.request", username,
                        {"id": gid, "staff": staff, "reason": reason, "write": write, "seconds": seconds})
    inbox.publish(ctx, username)
    grant = grants.get(gid)
    assert grant is not None
    return grant


def _approve(ctx: Context, grant: Grant, read_only: bool, now: float) -> None:
    rec = ctx.store.get_slot(grant.username)
    grants = SupportGrants(ctx.store)
    if rec is None or rec.state != "active":
        grants.end(grant.id, "refused", now, "slotwarden (the slot is not active)")
        ctx.store.audit("slotwarden", "support.refuse", grant.username, {"id": grant.id, "why": "slot not active"})
        return
    write = grant.write and not read_only
    ctx.store.audit(grant.username, "support.approve", grant.username, {"id": grant.id, "write": write})
    try:
        mountpoint = _mount_grant(ctx, grant, rec, write)
    except (SlotError, OSError) as exc:
        grants.end(grant.id, "revoked", now, "slotwarden (the grant could not be made)")
        ctx.store.audit("slotwarden", "support.revoke", grant.username, {"id": grant.id, "error": str(exc)})
        return
    expires = now + grant.duration
    grants.activate(grant.id, write, now, expires, mountpoint)
    ctx.store.audit("slotwarden", "support.grant", grant.username,
                    {"id": grant.id, "staff": grant.staff, "write": write, "expires_at": expires,
                     "mountpoint": mountpoint})


def end_grant(ctx: Context, grant: Grant, state: str, by: str, now: float) -> None:
    """End GRANT (requested or active) as STATE ('revoked', 'expired', 'refused'); unmounts first."""
    killed = _unmount_grant(grant) if grant.state == "active" else []
    SupportGrants(ctx.store).end(grant.id, state, now, by)
    action = {"refused": "support.refuse", "expired": "support.expire"}.get(state, "support.revoke")
    detail: dict[str, Any] = {"id": grant.id, "staff": grant.staff, "was": grant.state}
    if killed:
        detail["killed_pids"] = killed
    ctx.store.audit(by, action, grant.username, detail)


def _apply_answers(ctx: Context, username: str, now: float) -> None:
    rec = ctx.store.get_slot(username)
    try:
        acct = pwd.getpwnam(username) if rec else None
    except KeyError:
        acct = None
    if rec is None or acct is None or Path(rec.home).parent != ctx.settings.slots_root:
        return
    for answer in inbox.take_answers(username, acct.pw_uid, Path(rec.home)):
        apply_answer(ctx, username, answer, now)


def apply_answer(ctx: Context, username: str, answer: inbox.Answer, now: float) -> bool:
    """Apply ANSWER of tenant USERNAME (already authenticated as that tenant); False if it applies to nothing.

    For the shell's answers (:func:`sync`) and the Hub's privileged bridge, which authenticates the
    tenant itself: a tenant answers only its own requests.
    """
    grant = SupportGrants(ctx.store).get(answer.grant)
    if grant is None or grant.username != username:
        return False
    if answer.verb == "approve" and grant.state == "requested":
        _approve(ctx, grant, answer.read_only, now)
    elif answer.verb == "refuse" and grant.state == "requested":
        end_grant(ctx, grant, "refused", username, now)
    elif answer.verb == "revoke" and grant.state in OPEN_STATES:
        end_grant(ctx, grant, "revoked", username, now)
    else:
        return False
    inbox.publish(ctx, username)
    return True


def sync(ctx: Context, *, now: float | None = None, dry_run: bool = False) -> list[str]:
    """Apply the tenants' answers, end what has expired, republish inboxes; returns what expired."""
    now = time.time() if now is None else now
    grants = SupportGrants(ctx.store)
    cfg = support_config(ctx)
    expired: list[str] = []
    if not dry_run:
        for username in sorted({g.username for g in grants.list(open_only=True)}):
            _apply_answers(ctx, username, now)
    touched: set[str] = set()
    for g in grants.list(open_only=True):
        over = (g.state == "active" and g.expires_at is not None and g.expires_at <= now) or \
               (g.state == "requested" and g.requested_at + cfg.max_duration <= now)
        if over:
            expired.append(f"{g.username}: grant {g.id} to {g.staff} ({g.state})")
            if not dry_run:
                end_grant(ctx, g, "expired", "slotwarden (expiry)", now)
                touched.add(g.username)
    if not dry_run:
        for username in sorted(touched | {g.username for g in grants.list(open_only=True)}):
            if ctx.store.get_slot(username) is not None:
                inbox.publish(ctx, username)
    return expired


def list_grants(ctx: Context, username: str | None = None, *, open_only: bool = False) -> list[Grant]:
    """Grants (of USERNAME), after a sync."""
    if username is not None:
        validate_username(username)
    sync(ctx)
    grants = SupportGrants(ctx.store).list(username, open_only)
    if username is not None and not grants and ctx.store.get_slot(username) is None \
            and not SupportGrants(ctx.store).list(username):
        raise BadInput(f"no slot named {username!r}")
    return grants


def get_grant(ctx: Context, grant_id: int) -> Grant:
    sync(ctx)
    grant = SupportGrants(ctx.store).get(grant_id)
    if grant is None:
        raise BadInput(f"no support grant {grant_id}")
    return grant


def revoke(ctx: Context, grant_id: int, *, now: float | None = None) -> Grant:
    """Revoke support grant GRANT_ID at once (the operator's side); a closed grant is refused."""
    now = time.time() if now is None else now
    grant = get_grant(ctx, grant_id)
    if grant.state not in OPEN_STATES:
        raise SlotError(f"support grant {grant_id} is already {grant.state}")
    end_grant(ctx, grant, "revoked", current_actor(), now)
    inbox.publish(ctx, grant.username)
    return get_grant(ctx, grant_id)


def revoke_all(ctx: Context, username: str, why: str) -> None:
    """End every open grant of USERNAME (slot removed or suspended)."""
    now = time.time()
    for g in SupportGrants(ctx.store).list(username, open_only=True):
        end_grant(ctx, g, "revoked", f"slotwarden ({why})", now)


# --- the tenant's inbox, the data report, retention, removal and suspension ----------------------


def _when(t: float | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else None


def inbox_rows(ctx: Context, username: str) -> list[dict[str, Any]]:
    """What the tenant is shown: its open requests and active grants."""
    return [{"id": g.id, "staff": g.staff, "reason": g.reason, "write": g.write, "state": g.state,
             "for_seconds": g.duration, "requested": _when(g.requested_at), "expires": _when(g.expires_at)}
            for g in SupportGrants(ctx.store).list(username, open_only=True)]


def data_items(ctx: Context, username: str, rec: SlotRecord | None) -> list[Any]:
    """``slotctl data report``: every support request of the user and what became of it."""
    from provisioner.datareport import Item

    rows = [{"id": g.id, "staff": g.staff, "reason": g.reason, "write": g.write, "state": g.state,
             "requested": _when(g.requested_at), "decided": _when(g.decided_at), "expires": _when(g.expires_at),
             "ended": _when(g.ended_at), "ended by": g.ended_by}
            for g in SupportGrants(ctx.store).list(username)]
    if not rows and rec is None:
        return []
    return [Item("support grants", rows or "not held (no support request)",
                 "access to the tenant's files with the tenant's consent, for a support inquiry",
                 f"store {ctx.config.db_path} (support_grants) + audit",
                 "access: until expiry or revocation; the record and its audit entries are kept")]


def expire_grants(ctx: Context, now: float, dry_run: bool) -> Any:
    """Retention rule: support grants past their expiry, requests unanswered past support.max_duration."""
    from provisioner.retention import RuleResult

    return RuleResult("support-grants", "support grants past their expiry (access ended)",
                      sync(ctx, now=now, dry_run=dry_run))


def _revoke_steps(ctx: Context, username: str, why: str) -> list[Step]:
    open_grants = SupportGrants(ctx.store).list(username, open_only=True)
    if not open_grants:
        return []
    ids = ", ".join(str(g.id) for g in open_grants)
    return [Step("support-revoke", f"revoke the support grants of {username} ({ids})",
                 lambda: revoke_all(ctx, username, why))]


def removal_steps(ctx: Context, rec: SlotRecord) -> list[Step]:
    """Slot removal: revoke every grant, drop the inbox."""
    steps = _revoke_steps(ctx, rec.username, "slot removed")
    if (inbox.inbox_config(ctx).dir / rec.username).exists():
        steps.append(Step("inbox", f"remove the inbox of {rec.username}",
                          lambda: inbox.remove_inbox(ctx, rec.username)))
    return steps


def suspension_steps(ctx: Context, username: str) -> list[Step]:
    """Slot suspension: revoke every grant."""
    return _revoke_steps(ctx, username, "slot suspended")



# Grants end with the slot (removal, suspension); the inbox is made by host init.
EXTENSION = Hooks("support", host=inbox.host_steps, removal=removal_steps, suspension=suspension_steps,
                  data=data_items, rules=(expire_grants,))
