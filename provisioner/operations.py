"""The front door: every change of a slot, each under the slot's lock.

The CLI, the API, the Hub bridge, the local executor behind the Ansible module and the tests
call these; the machinery (plans of steps with undo, facts, the extensions) lives behind them.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from provisioner import slots
from provisioner.context import Context
from provisioner.errors import BadInput, SlotError
from provisioner.lifecycle_facts import LifecycleFacts
from provisioner.lifecycle_records import LifecycleRecord, get_lifecycle
from provisioner.loginstate import lock_password
from provisioner.names import validate_username
from provisioner.planchange import check_apps_allowed, limit_steps, plan_change_plan
from provisioner.plans import get_plan
from provisioner.slotlock import check_name_shape, drop_lock_file, require_slot, slot_lock
from provisioner.steps import Plan, apply
from provisioner.store import current_actor
from provisioner.suspension import plan_suspend, plan_unsuspend, validate_reason


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
                                limit_steps=limit_steps(ctx, username, new))
        if not dry_run:
            apply(plan)
    return plan




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



def terminate(ctx: Context, username: str, *, keep_data: bool = False, dry_run: bool = False) -> Plan:
    """Remove slot USERNAME (``slot remove``, the API's terminate) under the slot lock.

    Returns the plan (applied unless DRY_RUN).
    """
    require_slot(ctx, username)
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
    require_slot(ctx, username)
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
