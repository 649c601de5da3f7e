"""Slot lifecycle: plans, suspend / unsuspend, change of plan — what a billing system asks for.

Every operation is a :class:`~provisioner.steps.Plan` computed from facts (``plan_suspend``,
``plan_unsuspend``, ``plan_change_plan`` touch nothing) and applied by the executor, so a
failure half-way undoes what was done. Each runs under the slot's lock (:func:`slot_lock`), so
the CLI and the API never interleave two changes of one slot.

Suspend makes every login impossible while keeping everything the slot owns:

- the account expires (``usermod --expiredate 1``), so the PAM *account* phase refuses it —
  this is what stops public-key logins, for which sshd skips the auth stack, and ``su`` from root;
- the password hash is locked (``usermod --lock``), so password checks fail as well;
- the slot's apps are stopped through the app control (``ctx.extensions.app_control``), then every
  process of the UID is killed;
- the store records when, why and by whom, and what unsuspend must restore (the expiry and
  lock as they were, the apps that were running).

Unsuspend restores exactly that saved state. Both are idempotent: a plan holds only the steps
whose result is missing, so a second call changes nothing and an interrupted one is finished.

>>> st = LoginState(expire="", locked=False)
>>> st.suspended
False
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner import accounts, slots
from provisioner.config import PlanConfig
from provisioner.context import Context
from provisioner.errors import BadInput, SlotError
from provisioner.extensions import AppControl, Hooks
from provisioner.names import RESERVED_NAMES, format_size, validate_username
from provisioner.plans import allows_app, get_plan
from provisioner.quota import Usage
from provisioner.runner import run
from provisioner.steps import Plan, Step, apply
from provisioner.store import SlotRecord, Store, current_actor

if TYPE_CHECKING:
    from provisioner.datareport import Item

SCHEMA = """
CREATE TABLE IF NOT EXISTS slot_lifecycle (
    username          TEXT PRIMARY KEY,
    plan              TEXT,
    suspended_at      REAL,
    suspended_reason  TEXT,
    suspended_by      TEXT,
    saved             TEXT
);
"""
log = logging.getLogger("slotwarden.lifecycle")
SHADOW = Path("/etc/shadow")
# The expiry day suspend sets: 1970-01-02, long past, so pam_unix's account phase says "expired".
SUSPENDED_EXPIRE = "1"
MAX_REASON = 500
# What a fresh slot's login looks like: no expiry, password usable, no app running.
FRESH_LOGIN: dict[str, Any] = {"expire": "", "locked": False, "apps": {}}


# --- store -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LifecycleRecord:
    """The lifecycle row of a slot: its plan and, while suspended, when/why and what to restore."""

    username: str
    plan: str | None = None
    suspended_at: float | None = None
    suspended_reason: str | None = None
    suspended_by: str | None = None
    saved: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"plan": self.plan, "suspended_at": self.suspended_at,
                "suspended_reason": self.suspended_reason, "suspended_by": self.suspended_by}


# Stores whose lifecycle table is known to exist. ensure_schema runs executescript, which
# commits an open transaction, so it must run once per connection, before any transaction.
_READY: weakref.WeakSet[Store] = weakref.WeakSet()


def _ensure_schema(store: Store) -> None:
    if store not in _READY:
        store.ensure_schema(SCHEMA)
        _READY.add(store)


def get_lifecycle(store: Store, username: str) -> LifecycleRecord | None:
    _ensure_schema(store)
    row = store.db.execute("SELECT * FROM slot_lifecycle WHERE username = ?", (username,)).fetchone()
    if row is None:
        return None
    values = dict(row)
    values["saved"] = json.loads(values["saved"]) if values["saved"] else None
    return LifecycleRecord(**values)


def put_lifecycle(store: Store, rec: LifecycleRecord) -> None:
    _ensure_schema(store)
    store.db.execute(
        "INSERT OR REPLACE INTO slot_lifecycle VALUES (?, ?, ?, ?, ?, ?)",
        (rec.username, rec.plan, rec.suspended_at, rec.suspended_reason, rec.suspended_by,
         json.dumps(rec.saved, sort_keys=True) if rec.saved is not None else None),
    )


def delete_lifecycle(store: Store, username: str) -> None:
    _ensure_schema(store)
    store.db.execute("DELETE FROM slot_lifecycle WHERE username = ?", (username,))


def _restore_lifecycle(store: Store, username: str, previous: LifecycleRecord | None) -> None:
    if previous is None:
        delete_lifecycle(store, username)
    else:
        put_lifecycle(store, previous)


# --- per-slot lock ------------------------------------------------------------------------------


def check_name_shape(username: object) -> str:
    """USERNAME if it has the shape of a slot name (BadInput otherwise), reserved names included.

    For operations on a slot that exists (or may not): ``slot remove daemon`` must say there is
    no such slot, not that the name is reserved, and a slot whose name became reserved later
    (a new catalog app) must still be removable.
    """
    if isinstance(username, str) and username in RESERVED_NAMES:
        return username
    return validate_username(username)


_held_locks = threading.local()


@contextmanager
def slot_lock(ctx: Context, username: str) -> Iterator[None]:
    """Hold the slot's lock: changes of one slot run one at a time, across processes and threads.

    A ``flock`` on ``<state_dir>/locks/USERNAME.lock``; the kernel drops it if the holder dies.
    USERNAME must have a slot name's shape (it becomes a file name). Re-entrant within one
    thread (an operation that holds the lock may call another that takes it); other threads
    and processes wait.
    """
    check_name_shape(username)
    lock_dir = ctx.config.state_dir / "locks"
    path = lock_dir / f"{username}.lock"
    held: set[str] = _held_locks.__dict__.setdefault("paths", set())
    if str(path) in held:
        yield
        return
    lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder before us removed the file (slot terminated): lock the new one
    held.add(str(path))
    try:
        yield
    finally:
        held.discard(str(path))
        os.close(fd)  # closing the descriptor releases the lock


def drop_lock_file(ctx: Context, username: str) -> None:
    """Remove the lock file of a terminated slot (call while holding its lock)."""
    (ctx.config.state_dir / "locks" / f"{username}.lock").unlink(missing_ok=True)


# --- login state --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoginState:
    """The two shadow fields suspend changes: the expiry day ('' = never) and the password lock."""

    expire: str
    locked: bool

    @property
    def suspended(self) -> bool:
        return self.expire == SUSPENDED_EXPIRE and self.locked


def login_state(username: str, shadow: Path = SHADOW) -> LoginState:
    """Read USERNAME's expiry and lock from the shadow file (root only)."""
    with open(shadow, encoding="utf-8") as f:
        for line in f:
            fields = line.rstrip("\n").split(":")
            if fields[0] == username and len(fields) >= 8:
                return LoginState(expire=fields[7], locked=fields[1].startswith("!"))
    raise SlotError(f"{username!r} has no shadow entry")


def set_expire(username: str, expire: str) -> None:
    """Set the account expiry day ('' = never expires)."""
    run(["usermod", "--expiredate", expire, username])


def lock_password(username: str) -> None:
    run(["usermod", "--lock", username])


def unlock_password(username: str) -> None:
    run(["usermod", "--unlock", username])


# --- facts --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LifecycleFacts:
    """What the store and the host say about a slot, for planning a lifecycle change."""

    record: SlotRecord
    lifecycle: LifecycleRecord | None
    uid: int | None
    login: LoginState | None
    running_apps: dict[str, list[str]] = field(default_factory=dict)
    installed_apps: dict[str, list[str]] = field(default_factory=dict)
    has_processes: bool = False

    @classmethod
    def gather(cls, ctx: Context, username: str) -> LifecycleFacts:
        rec = ctx.store.get_slot(username)
        if rec is None or rec.state in {"creating", "removing"}:
            raise SlotError(f"no slot named {username!r}" if rec is None
                            else f"slot {username!r} is being {'created' if rec.state == 'creating' else 'removed'}")
        acct = accounts.lookup_user(username)
        if acct is None:
            raise SlotError(f"slot {username!r} has no system account; run 'slotctl doctor'")
        return cls(
            record=rec,
            lifecycle=get_lifecycle(ctx.store, username),
            uid=acct.uid,
            login=login_state(username),
            running_apps=_by_control(ctx, lambda c: c.running(ctx, username)),
            installed_apps=_by_control(ctx, lambda c: c.installed(ctx, username)),
            has_processes=bool(accounts.pids_of(acct.uid)),
        )


def _by_control(ctx: Context, ask: Callable[[AppControl], list[str]]) -> dict[str, list[str]]:
    """{control name: ASK(control)} for the host's one app control (nothing without one)."""
    control = ctx.extensions.app_control
    return {control.name: ask(control)} if control is not None else {}


def _controls(ctx: Context) -> dict[str, AppControl]:
    control = ctx.extensions.app_control
    return {control.name: control} if control is not None else {}


# --- suspend / unsuspend ------------------------------------------------------------------------


def validate_reason(reason: object) -> str:
    """A suspension reason: 1-500 printable characters on one line."""
    if not isinstance(reason, str) or not reason.strip():
        raise BadInput("reason is empty")
    if len(reason) > MAX_REASON or not reason.isprintable():
        raise BadInput(f"reason must be at most {MAX_REASON} printable characters on one line")
    return reason.strip()


def plan_suspend(
    username: str,
    reason: str,
    facts: LifecycleFacts,
    *,
    ctx: Context,
    actor: str,
    now: float,
) -> Plan:
    """The steps that suspend USERNAME; only those whose result is missing (idempotent)."""
    store = ctx.store
    rec, life, login = facts.record, facts.lifecycle, facts.login
    assert login is not None
    already = rec.state == "suspended"
    steps: list[Step] = []
    if life is None or life.saved is None:
        # A slot marked suspended with nothing saved (by hand, or a store restored from backup)
        # would otherwise "restore" its locked state: it gets what a fresh slot has instead.
        saved = (FRESH_LOGIN if already else
                 {"expire": login.expire, "locked": login.locked, "apps": facts.running_apps})
        suspended = LifecycleRecord(username, life.plan if life else None, now, reason, actor, saved)
        steps.append(Step("record", f"record the suspension of {username} ({reason!r}) and what to restore",
                          lambda: put_lifecycle(store, suspended),
                          lambda: _restore_lifecycle(store, username, life)))
    if login.expire != SUSPENDED_EXPIRE:
        steps.append(Step("expire", f"usermod --expiredate {SUSPENDED_EXPIRE} {username} (account phase refuses "
                                    "every login: password, key, su)",
                          lambda: set_expire(username, SUSPENDED_EXPIRE),
                          lambda: set_expire(username, login.expire)))
    if not login.locked:
        steps.append(Step("lock", f"usermod --lock {username} (password checks fail)",
                          lambda: lock_password(username), lambda: unlock_password(username)))
    controls = _controls(ctx)
    for control_name, apps in facts.running_apps.items():
        control = controls[control_name]
        for app in apps:
            steps.append(Step(f"stop-app:{app}", f"stop app {app} of {username} ({control_name}); files kept",
                              partial(control.stop, ctx, username, app),
                              partial(control.start, ctx, username, app)))
    if facts.has_processes or not already:
        uid = facts.uid
        assert uid is not None

        def stop() -> None:
            accounts.stop_processes(uid)

        steps.append(Step("processes", f"stop every process of {username} (uid {uid})", stop))
    if rec.state != "suspended":
        def mark() -> None:
            with store.transaction():
                store.update_slot(username, state="suspended")
                store.audit(actor, "slot.suspend", username, {"reason": reason})

        steps.append(Step("mark", f"mark slot {username} suspended",
                          mark, lambda: store.update_slot(username, state=rec.state)))
    return Plan(f"suspend slot {username}", steps)


def plan_unsuspend(username: str, facts: LifecycleFacts, *, ctx: Context, actor: str) -> Plan:
    """The steps that bring USERNAME back exactly as it was before suspend (idempotent)."""
    store = ctx.store
    rec, life, login = facts.record, facts.lifecycle, facts.login
    assert login is not None
    steps: list[Step] = []
    saved = life.saved if life is not None else None
    if saved is None:
        if rec.state == "suspended":
            saved = FRESH_LOGIN  # nothing says what was there: what a fresh slot has
        else:
            return Plan(f"unsuspend slot {username}", [])
    want_expire, want_locked = str(saved.get("expire", "")), bool(saved.get("locked", False))
    if login.locked and not want_locked:
        steps.append(Step("unlock", f"usermod --unlock {username}",
                          lambda: unlock_password(username), lambda: lock_password(username)))
    if login.expire != want_expire:
        steps.append(Step("expire", f"usermod --expiredate {want_expire!r} {username} (as before the suspension)",
                          lambda: set_expire(username, want_expire),
                          lambda: set_expire(username, login.expire)))
    controls = _controls(ctx)
    saved_apps: dict[str, list[str]] = saved.get("apps") or {}
    for control_name, apps in saved_apps.items():
        control = controls.get(control_name)
        if control is None:
            raise SlotError(f"slot {username} had apps of {control_name!r} running, which this host cannot start")
        running = set(facts.running_apps.get(control_name, []))
        for app in apps:
            if app in running:
                continue
            steps.append(Step(f"start-app:{app}", f"start app {app} of {username} ({control_name})",
                              partial(control.start, ctx, username, app),
                              partial(control.stop, ctx, username, app)))

    def mark() -> None:
        with store.transaction():
            store.update_slot(username, state="active")
            put_lifecycle(store, LifecycleRecord(username, life.plan if life else None))
            store.audit(actor, "slot.unsuspend", username,
                        {"suspended_at": life.suspended_at if life else None})

    def unmark() -> None:
        with store.transaction():
            store.update_slot(username, state=rec.state)
            _restore_lifecycle(store, username, life)

    steps.append(Step("mark", f"mark slot {username} active, forget the suspension (audit kept)", mark, unmark))
    return Plan(f"unsuspend slot {username}", steps)


def suspend(ctx: Context, username: str, reason: str, *, dry_run: bool = False, actor: str | None = None) -> Plan:
    """Suspend slot USERNAME for REASON. Returns the plan (applied unless DRY_RUN); empty if already done."""
    reason = validate_reason(reason)
    validate_username(username)
    with slot_lock(ctx, username):
        facts = LifecycleFacts.gather(ctx, username)
        plan = plan_suspend(username, reason, facts, ctx=ctx, actor=actor or current_actor(), now=time.time())
        extra = ctx.extensions.suspension_steps(ctx, username)
        if extra:
            plan = Plan(plan.title, [*plan.steps, *extra])
        if not dry_run:
            apply(plan)
    return plan


def unsuspend(ctx: Context, username: str, *, dry_run: bool = False, actor: str | None = None) -> Plan:
    """Bring slot USERNAME back as it was. Returns the plan; empty if it is not suspended."""
    validate_username(username)
    with slot_lock(ctx, username):
        facts = LifecycleFacts.gather(ctx, username)
        plan = plan_unsuspend(username, facts, ctx=ctx, actor=actor or current_actor())
        if not dry_run:
            apply(plan)
    return plan


# --- plans ---------------------------------------------------------------------------------------


def plan_change_plan(
    username: str,
    new: PlanConfig,
    facts: LifecycleFacts,
    usage: Usage | None,
    *,
    ctx: Context,
    actor: str,
    limit_steps: list[Step] | None = None,
) -> Plan:
    """The steps that move USERNAME to plan NEW; refuses a quota below the data already stored.

    LIMIT_STEPS (from :func:`_limit_steps`) apply the new plan's resource limits after the quota.
    """
    store = ctx.store
    rec, life = facts.record, facts.lifecycle
    old_plan = life.plan if life else None
    limit_steps = limit_steps or []
    if old_plan == new.name and rec.quota_bytes == new.quota and not limit_steps:
        return Plan(f"change plan of {username} to {new.name}", [])
    if usage is not None and usage.used_bytes > new.quota:
        raise SlotError(
            f"slot {username} stores {usage.used_bytes} bytes ({_human(usage.used_bytes)}), more than the "
            f"{new.quota} bytes ({format_size(new.quota)}) of plan {new.name}; free "
            f"{_human(usage.used_bytes - new.quota)} first or choose a larger plan")
    installed = [a for apps in facts.installed_apps.values() for a in apps]
    if new.apps is not None:
        refused = [a for a in installed if a not in new.apps]
        if refused:
            raise SlotError(f"plan {new.name} does not allow the app(s) {', '.join(refused)} that slot {username} "
                            "has installed; uninstall them first")
    if new.max_apps is not None and len(installed) > new.max_apps:
        raise SlotError(f"plan {new.name} allows {new.max_apps} app(s); slot {username} has {len(installed)}")
    home = Path(rec.home)
    steps: list[Step] = []
    if rec.quota_bytes != new.quota:
        old_quota = rec.quota_bytes

        def undo_quota() -> None:
            if old_quota is None:
                ctx.quota.clear_limit(username, home)
            else:
                ctx.quota.set_limit(username, home, old_quota)

        steps.append(Step("quota", f"limit {home} to {format_size(new.quota)} ({ctx.quota.name})",
                          lambda: ctx.quota.set_limit(username, home, new.quota), undo_quota))
    steps.extend(limit_steps)

    def record() -> None:
        with store.transaction():
            store.update_slot(username, quota_bytes=new.quota)
            put_lifecycle(store, LifecycleRecord(username, new.name, *(
                (life.suspended_at, life.suspended_reason, life.suspended_by, life.saved) if life else ())))
            store.audit(actor, "slot.change-plan", username,
                        {"from": old_plan, "to": new.name, "quota_bytes": new.quota})

    def unrecord() -> None:
        with store.transaction():
            store.update_slot(username, quota_bytes=rec.quota_bytes)
            _restore_lifecycle(store, username, life)

    steps.append(Step("record", f"record plan {new.name} for {username}", record, unrecord))
    return Plan(f"change plan of {username} from {old_plan or '(none)'} to {new.name}", steps)


def _limit_steps(ctx: Context, username: str, new: PlanConfig) -> list[Step]:
    """The limits package's steps for a change of plan (none where it is absent)."""
    if importlib.util.find_spec("provisioner.limits") is None:
        return []
    from provisioner.limits import change_plan_steps

    return change_plan_steps(ctx, username, new)


def check_apps_allowed(plan: PlanConfig, apps: list[str], installed: int = 0) -> None:
    """Raise BadInput unless PLAN allows installing APPS next to INSTALLED apps already there."""
    for i, app in enumerate(apps):
        if plan.apps is not None and app not in plan.apps:
            raise BadInput(f"app {app!r} is not part of plan {plan.name} (it allows: {', '.join(plan.apps) or 'none'})")
        if not allows_app(plan, app, installed=installed + i):
            raise BadInput(f"plan {plan.name} allows {plan.max_apps} app(s)"
                           + (f" ({installed} installed)" if installed else ""))


def check_app_install(ctx: Context, username: str, app: str) -> None:
    """For the apps package before ``app install``: refuse an app the slot's plan does not allow.

    BadInput (one line, naming the plan) when the plan lacks APP or has no room for another app.
    A slot without a plan, or on a plan no longer configured, may install anything.
    """
    life = get_lifecycle(ctx.store, username)
    if life is None or life.plan is None or life.plan not in ctx.config.plans:
        return
    # APP itself does not count: reinstalling it is the apps package's question ("already installed").
    control = ctx.extensions.app_control
    installed = [a for a in (control.installed(ctx, username) if control else []) if a != app]
    check_apps_allowed(ctx.config.plans[life.plan], [app], installed=len(installed))


def _human(n: int) -> str:
    """Bytes for a person: 1.5G, 300M, 12K."""
    for unit, size in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n}B"


def change_plan(ctx: Context, username: str, plan_name: str, *, dry_run: bool = False,
                actor: str | None = None) -> Plan:
    """Move slot USERNAME to plan PLAN_NAME, applying the new quota at once."""
    new = get_plan(ctx.config, plan_name)
    validate_username(username)
    if ctx.settings.quota_backend == "none":
        raise BadInput("the quota backend is 'none': this host cannot enforce a plan's quota")
    with slot_lock(ctx, username):
        facts = LifecycleFacts.gather(ctx, username)
        home = Path(facts.record.home)
        usage = ctx.quota.usage(username, home) if home.exists() else None
        plan = plan_change_plan(username, new, facts, usage, ctx=ctx, actor=actor or current_actor(),
                                limit_steps=_limit_steps(ctx, username, new))
        if not dry_run:
            apply(plan)
    return plan


# --- create / terminate / password, under the slot lock ----------------------------------------


def create(
    ctx: Context,
    username: str,
    email: str,
    country: str,
    *,
    plan: str | None = None,
    quota: str | int | None = None,
    payment_ref: str | None = None,
    dry_run: bool = False,
    apps: tuple[str, ...] = (),
) -> slots.Created | Plan:
    """Create a slot on PLAN (its quota unless QUOTA is also given), under the slot lock.

    APPS are installed too; the plan must allow each of them and their number.
    """
    plan_cfg = get_plan(ctx.config, plan) if plan is not None else None
    if quota is None and plan_cfg is not None:
        quota = plan_cfg.quota
    if plan_cfg is not None:
        check_apps_allowed(plan_cfg, list(dict.fromkeys(apps)))
    validate_username(username, slots.reserved_names(ctx))
    with slot_lock(ctx, username):
        return slots.create_slot(ctx, username, email, country, quota, payment_ref, dry_run=dry_run,
                                 apps=apps, plan=plan_cfg.name if plan_cfg else None)


def _require_slot(ctx: Context, username: str) -> None:
    """Refuse a name that is no slot before locking it (no lock file left for a typo)."""
    check_name_shape(username)
    if ctx.store.get_slot(username) is None:
        raise SlotError(f"no slot named {username!r}")


def terminate(ctx: Context, username: str, *, keep_data: bool = False, dry_run: bool = False) -> Plan:
    """Remove slot USERNAME (``slot remove``, the API's terminate) under the slot lock.

    Returns the plan (applied unless DRY_RUN).
    """
    _require_slot(ctx, username)
    with slot_lock(ctx, username):
        plan = slots.remove_slot(ctx, username, keep_data=keep_data, dry_run=dry_run)
        if not dry_run:
            drop_lock_file(ctx, username)
    return plan


def terminate_many(ctx: Context, usernames: list[str], *, keep_data: bool = False,
                   batch_size: int = 200) -> list[slots.Removed | SlotError]:
    """Remove many slots (``slot remove-many``), each under its lock; one result per name.

    The locks of a chunk of BATCH_SIZE are taken in name order (no deadlock with another
    batch), then :func:`provisioner.slots.remove_many` removes the chunk.
    """
    results: list[slots.Removed | SlotError] = []
    for start in range(0, len(usernames), batch_size):
        names = usernames[start:start + batch_size]
        with ExitStack() as stack:
            lockable = set()
            for name in names:
                try:
                    check_name_shape(name)
                except SlotError:
                    continue
                if ctx.store.get_slot(name) is not None:
                    lockable.add(name)
            for name in sorted(lockable):
                stack.enter_context(slot_lock(ctx, name))
            outs = slots.remove_many(ctx, names, keep_data=keep_data, batch_size=max(len(names), 1),
                                     fresh_walk=start == 0)  # one walk of the filesystems per call
            for name, out in zip(names, outs, strict=True):
                if isinstance(out, slots.Removed):
                    drop_lock_file(ctx, name)
        results.extend(outs)
    return results


def change_password(ctx: Context, username: str) -> str:
    """A new generated password for USERNAME; a suspended slot stays locked (the new hash too)."""
    _require_slot(ctx, username)
    with slot_lock(ctx, username):
        password = slots.reset_password(ctx, username)
        rec = ctx.store.get_slot(username)
        if rec is not None and rec.state == "suspended":
            lock_password(username)  # chpasswd wrote an unlocked hash
    return password


def slot_status(ctx: Context, username: str) -> dict[str, Any]:
    """The slot's record, live usage and lifecycle (plan, suspension)."""
    rec = slots.get_slot(ctx, username)
    out = slots.slot_details(ctx, rec)
    life = get_lifecycle(ctx.store, username)
    out.update(LifecycleRecord(username).as_dict() if life is None else life.as_dict())
    return out


# --- extensions of slot create / remove ---------------------------------------------------------


def _creation_steps(ctx: Context, req: slots.SlotRequest) -> list[Step]:
    plan = req.plan
    if plan is None:
        return []
    store = ctx.store
    _ensure_schema(store)
    name = req.username
    return [Step("plan", f"record plan {plan} for {name}",
                 lambda: put_lifecycle(store, LifecycleRecord(name, plan)),
                 lambda: delete_lifecycle(store, name))]


def _removal_steps(ctx: Context, rec: SlotRecord) -> list[Step]:
    store = ctx.store
    previous = get_lifecycle(store, rec.username)
    if previous is None:
        return []
    return [Step("lifecycle", f"forget the plan and suspension record of {rec.username}",
                 lambda: delete_lifecycle(store, rec.username),
                 lambda: put_lifecycle(store, previous))]


# --- the data report: plan and suspension are data about the user --------------------------------


def data_items(ctx: Context, username: str, rec: SlotRecord | None) -> list[Item]:
    """Rows for ``slotctl data report``: the slot's plan and, while suspended, when/why/by whom."""
    from provisioner.datareport import Item

    if rec is None:
        return []
    life = get_lifecycle(ctx.store, username)
    where = f"store {ctx.config.db_path} (slot_lifecycle), clear"
    items = [Item("plan", life.plan if life and life.plan else "none", "what the slot was sold with (quota, apps)",
                  where, "while the slot exists")]
    if life is not None and life.suspended_at is not None:
        items.append(Item("suspension", {"since": life.suspended_at, "reason": life.suspended_reason,
                                         "by": life.suspended_by},
                          "why logins are refused, what unsuspend restores", where,
                          "until unsuspended (the audit entry stays)"))
    return items


# The plan a slot is created on (recorded after its apps), forgotten with it; data report rows.
EXTENSION = Hooks("lifecycle", creation=_creation_steps, removal=_removal_steps, data=data_items)
