"""The local executor: slot changes applied on this host through the provisioner's front door.

:func:`apply_changes` is also what the ``slotwarden_slot`` Ansible module runs on each fleet
host, so a change means the same thing locally and through the fleet. It is idempotent: a
``present`` slot that already matches is ``unchanged``, an ``absent`` one that is gone is
``unchanged``; ``check`` computes the outcome (and the plan) without touching anything.

>>> LocalExecutor.name
'local'
"""

from __future__ import annotations

import socket
from typing import Any

from provisioner.context import Context
from provisioner.errors import BadInput, SlotError
from provisioner.executors import SlotChange, SlotOutcome
from provisioner.names import parse_size, validate_country, validate_email, validate_payment_ref
from provisioner.plan import Plan
from provisioner.slots import Created, create_slot, remove_slot
from provisioner.store import SlotRecord, current_actor

# Fields of a live slot that a `present` change may update in place.
_UPDATABLE = ("email", "country", "payment_ref", "quota_bytes")


def _wanted(ctx: Context, change: SlotChange, rec: SlotRecord) -> dict[str, Any]:
    """The record fields CHANGE asks for that differ from REC (unset fields are left alone)."""
    want: dict[str, Any] = {}
    if change.email is not None:
        want["email"] = validate_email(change.email)
    if change.country is not None:
        want["country"] = validate_country(change.country)
    if change.payment_ref is not None:
        want["payment_ref"] = validate_payment_ref(change.payment_ref)
    if change.quota is not None:
        want["quota_bytes"] = parse_size(change.quota)
    return {k: v for k, v in want.items() if getattr(rec, k) != v}


def _update(ctx: Context, rec: SlotRecord, diff: dict[str, Any]) -> None:
    """Bring a live slot's record (and its kernel quota) to DIFF."""
    if "quota_bytes" in diff:
        from pathlib import Path

        if ctx.quota.name == "none":
            raise BadInput("the quota backend is 'none': this host cannot enforce a quota")
        ctx.quota.set_limit(rec.username, Path(rec.home), diff["quota_bytes"])
    with ctx.store.transaction():
        ctx.store.update_slot(rec.username, **diff)
        ctx.store.audit(current_actor(), "slot.update", rec.username,
                        {k: v for k, v in diff.items() if k != "email"})


def _present(ctx: Context, change: SlotChange, host: str, check: bool) -> SlotOutcome:
    name = change.username
    rec = ctx.store.get_slot(name)
    if rec is not None and rec.state == "removing":
        raise SlotError(f"slot {name!r} is half removed; remove it (state=absent) before creating it again")
    if rec is not None and rec.state != "creating":
        if change.strict:
            raise SlotError(f"slot {name!r} already exists")
        diff = _wanted(ctx, change, rec)
        if diff and not check:
            _update(ctx, rec, diff)
            rec = ctx.store.get_slot(name) or rec
        record = {**rec.as_dict(), **(diff if check else {})}
        return SlotOutcome(host, name, "updated" if diff else "unchanged", bool(diff), record,
                           [{"step": "update", "detail": f"set {', '.join(sorted(diff))}"}] if diff else [])
    if change.email is None or change.country is None:
        raise BadInput(f"slot {name!r} does not exist: creating it needs email and country")
    if change.apps:
        raise SlotError("installing apps through the fleet path is not available yet on this host")
    result = create_slot(ctx, name, change.email, change.country, change.quota, change.payment_ref, dry_run=check)
    if isinstance(result, Plan):
        return SlotOutcome(host, name, "resumed" if rec else "created", True, None, result.describe())
    assert isinstance(result, Created)
    return SlotOutcome(host, name, "resumed" if result.resumed else "created", True, result.record.as_dict(),
                       password=result.password)


def _absent(ctx: Context, change: SlotChange, host: str, check: bool) -> SlotOutcome:
    name = change.username
    rec = ctx.store.get_slot(name)
    if rec is None:
        if change.strict:
            raise SlotError(f"no slot named {name!r}")
        return SlotOutcome(host, name, "unchanged", False)
    plan = remove_slot(ctx, name, keep_data=change.keep_data, dry_run=check)
    return SlotOutcome(host, name, "removed", True, rec.as_dict(), plan.describe())


def apply_changes(ctx: Context, changes: list[SlotChange], *, check: bool = False,
                  host: str | None = None) -> list[SlotOutcome]:
    """Apply CHANGES on this host in order; a failing change is reported and the rest go on.

    Creation failures are undone by the plan (see :func:`provisioner.plan.apply`).
    """
    host = host or socket.gethostname()
    outcomes: list[SlotOutcome] = []
    for change in changes:
        try:
            if change.state == "absent":
                outcomes.append(_absent(ctx, change, host, check))
            else:
                outcomes.append(_present(ctx, change, host, check))
        except SlotError as exc:
            outcomes.append(SlotOutcome(host, change.username, "failed", False, error=" ".join(str(exc).split()),
                                        exit_code=exc.exit_code))
    return outcomes


class LocalExecutor:
    """Apply slot changes on this host, in this process."""

    name = "local"

    def __init__(self, ctx: Context | None = None, host: str | None = None) -> None:
        self.ctx = ctx or Context()
        self.host = host or socket.gethostname()

    def apply(self, changes: list[SlotChange], *, check: bool = False) -> list[SlotOutcome]:
        """Apply CHANGES here; see :func:`apply_changes`."""
        return apply_changes(self.ctx, changes, check=check, host=self.host)
