"""The front door: every change of a slot, each under the slot's lock (:mod:`provisioner.slotlock`).

The CLI, the API, the Hub bridge, the local executor behind the Ansible module and the tests
call these, and nothing else changes a slot; the machinery (plans of steps with undo, facts,
the extensions in ``ctx.extensions``) lives behind them. Re-exported by :mod:`provisioner`::

    from provisioner import Context, create_slot, remove_slot
    ctx = Context()
    created = create_slot(ctx, "alice", "alice@example.com", "DE", plan="small")
    remove_slot(ctx, "alice")

Changes of one slot run one at a time, across processes and threads; a batch takes the lock of
each of its slots, in name order (no deadlock with another batch). The lock is re-entrant within
a thread, so an operation may call another (``create_slot(apps=...)`` installs its apps).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from provisioner import accounts, slots
from provisioner.apps import framework as apps
from provisioner.apps.framework import AppCredentials, app_credentials, app_status
from provisioner.context import Context
from provisioner.errors import BadInput, SlotError
from provisioner.lifecycle_facts import LifecycleFacts
from provisioner.lifecycle_records import LifecycleRecord, LifecycleRecords
from provisioner.loginstate import lock_password
from provisioner.names import validate_username
from provisioner.planchange import check_app_install, check_apps_allowed, limit_steps, plan_change_plan
from provisioner.plans import get_plan
from provisioner.slotlock import check_name_shape, drop_lock_file, require_slot, slot_lock
from provisioner.slots import BatchRow, Created, Removed, get_slot
from provisioner.steps import Plan, apply
from provisioner.store import SlotRecord, current_actor
from provisioner.suspension import plan_suspend, plan_unsuspend, validate_reason

__all__ = [
    "AppCredentials", "BatchRow", "Created", "Removed",
    "app_credentials", "app_status", "change_password", "change_plan", "create_many", "create_slot",
    "get_slot", "install_app", "remove_many", "remove_slot", "rotate_app", "set_password", "slot_status",
    "suspend", "uninstall_app", "unsuspend", "update_slot",
]


# --- slots ---------------------------------------------------------------------------------------


def create_slot(
    ctx: Context,
    username: str,
    email: str,
    country: str,
    quota: str | int | None = None,
    payment_ref: str | None = None,
    *,
    plan: str | None = None,
    apps: tuple[str, ...] = (),
    dry_run: bool = False,
) -> Created | Plan:
    """Create (or finish creating) slot USERNAME on PLAN (its quota unless QUOTA is given too).

    APPS are installed too; the plan must allow each of them and their number. Returns the plan
    when DRY_RUN. On failure every step already done is undone and StepFailed names the step.
    """
    plan_cfg = get_plan(ctx.config, plan) if plan is not None else None
    if quota is None and plan_cfg is not None:
        quota = plan_cfg.quota
    if plan_cfg is not None:
        check_apps_allowed(plan_cfg, list(dict.fromkeys(apps)))
    validate_username(username, slots.reserved_names(ctx))
    with slot_lock(ctx, username):
        return slots.apply_create_slot(ctx, username, email, country, quota, payment_ref, dry_run=dry_run,
                                       apps=apps, plan=plan_cfg.name if plan_cfg else None)


@contextmanager
def _locks(ctx: Context, names: list[str], *, existing: bool) -> Iterator[None]:
    """Hold the lock of each of NAMES that has a slot name's shape (and a slot, if EXISTING), in order."""
    with ExitStack() as stack:
        lockable = set()
        for name in names:
            try:
                check_name_shape(name)
            except SlotError:
                continue  # refused by the operation itself, one line for its row
            if not existing or ctx.store.get_slot(name) is not None:
                lockable.add(name)
        for name in sorted(lockable):
            stack.enter_context(slot_lock(ctx, name))
        yield


def create_many(ctx: Context, rows: list[BatchRow], *, batch_size: int = 200) -> list[Created | SlotError]:
    """Create a slot per row (``slot create-many``), each under its lock; one result per row, in order.

    A failing row never stops the rest. The locks of a chunk of BATCH_SIZE rows are held while
    :func:`provisioner.slots.apply_create_many` creates the chunk.
    """
    results: list[Created | SlotError] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        with _locks(ctx, [r.username for r in chunk], existing=False):
            results.extend(slots.apply_create_many(ctx, chunk, batch_size=max(len(chunk), 1)))
    return results


def remove_slot(ctx: Context, username: str, *, keep_data: bool = False, dry_run: bool = False) -> Plan:
    """Remove slot USERNAME (exact name): ``slot remove``, the API's terminate.

    Returns the plan (applied unless DRY_RUN).
    """
    require_slot(ctx, username)
    with slot_lock(ctx, username):
        plan = slots.apply_remove_slot(ctx, username, keep_data=keep_data, dry_run=dry_run)
        if not dry_run:
            drop_lock_file(ctx, username)
    return plan


def remove_many(ctx: Context, usernames: list[str], *, keep_data: bool = False,
                batch_size: int = 200) -> list[Removed | SlotError]:
    """Remove many slots (``slot remove-many``), each under its lock; one result per name.

    The locks of a chunk of BATCH_SIZE are held while :func:`provisioner.slots.apply_remove_many`
    removes the chunk.
    """
    results: list[Removed | SlotError] = []
    for start in range(0, len(usernames), batch_size):
        names = usernames[start:start + batch_size]
        with _locks(ctx, names, existing=True):
            outs = slots.apply_remove_many(ctx, names, keep_data=keep_data, batch_size=max(len(names), 1),
                                           fresh_walk=start == 0)  # one walk of the filesystems per call
            for name, out in zip(names, outs, strict=True):
                if isinstance(out, Removed):
                    drop_lock_file(ctx, name)
        results.extend(outs)
    return results


def update_slot(ctx: Context, username: str, changes: Mapping[str, Any]) -> SlotRecord:
    """Set CHANGES (validated email, country, payment_ref, quota_bytes) of live slot USERNAME; audited.

    A new quota_bytes is applied to the kernel first. Returns the updated record.
    """
    require_slot(ctx, username)
    unknown = sorted(set(changes) - {"email", "country", "payment_ref", "quota_bytes"})
    if unknown:
        raise BadInput(f"slot field {unknown[0]!r} cannot be updated")
    with slot_lock(ctx, username):
        rec = get_slot(ctx, username)
        if "quota_bytes" in changes:
            if ctx.quota.name == "none":
                raise BadInput("the quota backend is 'none': this host cannot enforce a quota")
            ctx.quota.set_limit(username, Path(rec.home), changes["quota_bytes"])
        with ctx.store.transaction():
            ctx.store.update_slot(username, **changes)
            ctx.store.audit(current_actor(), "slot.update", username,
                            {k: v for k, v in changes.items() if k != "email"})
        return get_slot(ctx, username)


def change_password(ctx: Context, username: str) -> str:
    """A new generated password for USERNAME, shown once; a suspended slot stays locked (the new hash too)."""
    require_slot(ctx, username)
    with slot_lock(ctx, username):
        password = slots.apply_reset_password(ctx, username)
        _keep_suspended_locked(ctx, username)
    return password


def set_password(ctx: Context, username: str, password: str) -> None:
    """Set the password the tenant chose (the Hub's password change; the caller checked the old one)."""
    require_slot(ctx, username)
    with slot_lock(ctx, username):
        accounts.set_password(username, password)
        _keep_suspended_locked(ctx, username)


def _keep_suspended_locked(ctx: Context, username: str) -> None:
    rec = ctx.store.get_slot(username)
    if rec is not None and rec.state == "suspended":
        lock_password(username)  # chpasswd wrote an unlocked hash


def slot_status(ctx: Context, username: str) -> dict[str, Any]:
    """The slot's record, live usage and lifecycle (plan, suspension)."""
    rec = slots.get_slot(ctx, username)
    out = slots.slot_details(ctx, rec)
    life = LifecycleRecords(ctx.store).get(username)
    out.update(LifecycleRecord(username).as_dict() if life is None else life.as_dict())
    return out


# --- suspension and plans ---------------------------------------------------------------------------


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


# --- apps ------------------------------------------------------------------------------------------


def install_app(ctx: Context, username: str, app_name: str) -> AppCredentials:
    """Install APP_NAME into slot USERNAME; returns the generated credentials.

    The slot's plan must allow the app (BadInput naming the plan otherwise); the check and the
    install run under the lock, so concurrent installs cannot exceed the plan's number of apps.
    On failure everything done so far is undone and StepFailed says which step and why.
    """
    app = apps.get_app(app_name)
    with slot_lock(ctx, username):
        check_app_install(ctx, username, app.name)
        return apps.install(ctx, username, app.name)


def uninstall_app(ctx: Context, username: str, app_name: str) -> Plan:
    """Stop APP_NAME and remove everything it had from slot USERNAME; returns the applied plan."""
    with slot_lock(ctx, username):
        return apps.uninstall(ctx, username, app_name)


def rotate_app(ctx: Context, username: str, app_name: str) -> AppCredentials:
    """New credentials for an installed app, applied to the running app; the old ones stop working."""
    with slot_lock(ctx, username):
        return apps.rotate(ctx, username, app_name)
