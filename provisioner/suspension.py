"""Suspension planned from facts: ``plan_suspend`` and ``plan_unsuspend`` touch nothing.

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
"""

from __future__ import annotations

from functools import partial
from typing import Any

from provisioner import accounts
from provisioner.context import Context
from provisioner.errors import BadInput, SlotError
from provisioner.lifecycle_facts import LifecycleFacts, app_controls
from provisioner.lifecycle_records import LifecycleRecord, LifecycleRecords
from provisioner.loginstate import SUSPENDED_EXPIRE, lock_password, set_expire, unlock_password
from provisioner.steps import Plan, Step

MAX_REASON = 500
# What a fresh slot's login looks like: no expiry, password usable, no app running.
FRESH_LOGIN: dict[str, Any] = {"expire": "", "locked": False, "apps": {}}


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
    records = LifecycleRecords(store)
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
                          lambda: records.put(suspended),
                          lambda: records.restore(username, life)))
    if login.expire != SUSPENDED_EXPIRE:
        steps.append(Step("expire", f"usermod --expiredate {SUSPENDED_EXPIRE} {username} (account phase refuses "
                                    "every login: password, key, su)",
                          lambda: set_expire(username, SUSPENDED_EXPIRE),
                          lambda: set_expire(username, login.expire)))
    if not login.locked:
        steps.append(Step("lock", f"usermod --lock {username} (password checks fail)",
                          lambda: lock_password(username), lambda: unlock_password(username)))
    controls = app_controls(ctx)
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
    records = LifecycleRecords(store)
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
    controls = app_controls(ctx)
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
            records.put(LifecycleRecord(username, life.plan if life else None))
            store.audit(actor, "slot.unsuspend", username,
                        {"suspended_at": life.suspended_at if life else None})

    def unmark() -> None:
        with store.transaction():
            store.update_slot(username, state=rec.state)
            records.restore(username, life)

    steps.append(Step("mark", f"mark slot {username} active, forget the suspension (audit kept)", mark, unmark))
    return Plan(f"unsuspend slot {username}", steps)
