"""The lifecycle extension: the plan a slot is created on (recorded after its apps), forgotten with
it, and its rows of the data report (plan, suspension).

Suspension and change of plan are :mod:`provisioner.suspension` and :mod:`provisioner.planchange`,
applied by :mod:`provisioner.operations`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from provisioner import slots
from provisioner.context import Context
from provisioner.extensions import Hooks
from provisioner.lifecycle_records import LifecycleRecord, LifecycleRecords
from provisioner.steps import Step
from provisioner.store import SlotRecord

if TYPE_CHECKING:
    from provisioner.datareport import Item


def _creation_steps(ctx: Context, req: slots.SlotRequest) -> list[Step]:
    plan = req.plan
    if plan is None:
        return []
    records = LifecycleRecords(ctx.store)
    name = req.username
    return [Step("plan", f"record plan {plan} for {name}",
                 lambda: records.put(LifecycleRecord(name, plan)),
                 lambda: records.delete(name))]


def _removal_steps(ctx: Context, rec: SlotRecord) -> list[Step]:
    records = LifecycleRecords(ctx.store)
    previous = records.get(rec.username)
    if previous is None:
        return []
    return [Step("lifecycle", f"forget the plan and suspension record of {rec.username}",
                 lambda: records.delete(rec.username),
                 lambda: records.put(previous))]




def data_items(ctx: Context, username: str, rec: SlotRecord | None) -> list[Item]:
    """Rows for ``slotctl data report``: the slot's plan and, while suspended, when/why/by whom."""
    from provisioner.datareport import Item

    if rec is None:
        return []
    life = LifecycleRecords(ctx.store).get(username)
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
