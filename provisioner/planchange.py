"""A change of plan planned from facts, and the checks a plan imposes on a slot's apps.

(The plans themselves, as sold, are :mod:`provisioner.plans`.)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from provisioner.config import PlanConfig
from provisioner.context import Context
from provisioner.errors import BadInput, SlotError
from provisioner.lifecycle_facts import LifecycleFacts
from provisioner.lifecycle_records import LifecycleRecord, LifecycleRecords
from provisioner.names import format_size
from provisioner.plans import allows_app
from provisioner.quota import Usage
from provisioner.steps import Plan, Step


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

    LIMIT_STEPS (from :func:`limit_steps`) apply the new plan's resource limits after the quota.
    """
    store = ctx.store
    records = LifecycleRecords(store)
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
            records.put(LifecycleRecord(username, new.name, *(
                (life.suspended_at, life.suspended_reason, life.suspended_by, life.saved) if life else ())))
            store.audit(actor, "slot.change-plan", username,
                        {"from": old_plan, "to": new.name, "quota_bytes": new.quota})

    def unrecord() -> None:
        with store.transaction():
            store.update_slot(username, quota_bytes=rec.quota_bytes)
            records.restore(username, life)

    steps.append(Step("record", f"record plan {new.name} for {username}", record, unrecord))
    return Plan(f"change plan of {username} from {old_plan or '(none)'} to {new.name}", steps)


def limit_steps(ctx: Context, username: str, new: PlanConfig) -> list[Step]:
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
    life = LifecycleRecords(ctx.store).get(username)
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
