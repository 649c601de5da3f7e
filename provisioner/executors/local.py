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
from provisioner.operations import (
    BatchRow,
    Created,
    app_credentials,
    create_many,
    create_slot,
    install_app,
    remove_slot,
    update_slot,
)
from provisioner.steps import Plan
from provisioner.store import SlotRecord

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


def _app_creds(ctx: Context, name: str, apps: tuple[str, ...]) -> list[dict[str, Any]]:
    return [app_credentials(ctx, name, a).as_dict() for a in dict.fromkeys(apps)]


def _install_missing(ctx: Context, rec: SlotRecord, apps: tuple[str, ...], check: bool,
                     host: str, diff: dict[str, Any], before: SlotRecord) -> SlotOutcome:
    """Install the apps of APPS the live slot REC lacks (after updating its record by DIFF)."""
    missing: list[str] = []
    if apps:
        from provisioner.apps import get_app, registry_of

        installed = {r.app for r in registry_of(ctx).installs(rec.username)}
        missing = [get_app(a).name for a in dict.fromkeys(apps) if get_app(a).name not in installed]
    steps = [{"step": "update", "detail": f"set {', '.join(sorted(diff))}"}] if diff else []
    steps += [{"step": "app", "detail": f"install {a}"} for a in missing]
    creds: list[dict[str, Any]] = []
    if missing and not check:
        creds = [install_app(ctx, rec.username, a).as_dict() for a in missing]
    changed = bool(diff or missing)
    return SlotOutcome(host, rec.username, "updated" if changed else "unchanged", changed,
                       {**rec.as_dict(), **(diff if check else {})}, steps, apps=creds, before=before.as_dict())


def _present(ctx: Context, change: SlotChange, host: str, check: bool) -> SlotOutcome:
    name = change.username
    rec = ctx.store.get_slot(name)
    if rec is not None and rec.state == "removing":
        raise SlotError(f"slot {name!r} is half removed; remove it (state=absent) before creating it again")
    if rec is not None and rec.state != "creating":
        if change.strict:
            raise SlotError(f"slot {name!r} already exists")
        diff = _wanted(ctx, change, rec)
        before = rec
        if diff and not check:
            rec = update_slot(ctx, name, diff)
        return _install_missing(ctx, rec, change.apps, check, host, diff, before)
    if change.email is None or change.country is None:
        if rec is None and not change.strict:
            raise SlotError(f"no slot named {name!r} (creating one needs email and country)")
        raise BadInput(f"slot {name!r} does not exist: creating it needs email and country")
    result = create_slot(ctx, name, change.email, change.country, change.quota, change.payment_ref,
                         dry_run=check, apps=change.apps)
    if isinstance(result, Plan):
        return SlotOutcome(host, name, "resumed" if rec else "created", True, None, result.describe())
    assert isinstance(result, Created)
    return SlotOutcome(host, name, "resumed" if result.resumed else "created", True, result.record.as_dict(),
                       password=result.password, apps=_app_creds(ctx, name, change.apps) if change.apps else [])


def _absent(ctx: Context, change: SlotChange, host: str, check: bool) -> SlotOutcome:
    name = change.username
    rec = ctx.store.get_slot(name)
    if rec is None:
        if change.strict:
            raise SlotError(f"no slot named {name!r}")
        return SlotOutcome(host, name, "unchanged", False)
    plan = remove_slot(ctx, name, keep_data=change.keep_data, dry_run=check)
    return SlotOutcome(host, name, "removed", True, rec.as_dict(), plan.describe())


def _batchable(ctx: Context, changes: list[SlotChange]) -> list[int]:
    """Indexes of the changes that create a fresh slot without apps: those go through
    :func:`provisioner.slots.create_many` together (one ``newusers`` run, one transaction), as
    ``slotctl slot create-many`` does. Names given twice keep their order: nothing is batched."""
    names = [c.username for c in changes]
    if len(set(names)) != len(names):
        return []
    return [i for i, c in enumerate(changes)
            if c.state == "present" and not c.apps and c.email is not None and c.country is not None
            and ctx.store.get_slot(c.username) is None]


def _locked(ctx: Context, change: SlotChange, host: str, check: bool) -> SlotOutcome:
    """One change under the slot's lock, held across its reads and its operations (check mode takes none)."""
    from provisioner import slotlock

    def one() -> SlotOutcome:
        return _absent(ctx, change, host, check) if change.state == "absent" else _present(ctx, change, host, check)

    slotlock.check_name_shape(change.username)
    if check or (change.state == "absent" and ctx.store.get_slot(change.username) is None):
        return one()  # nothing to change: no lock file for a name that is no slot
    with slotlock.slot_lock(ctx, change.username):
        out = one()
        if change.state == "absent" and out.changed:
            slotlock.drop_lock_file(ctx, change.username)
    return out


def apply_changes(ctx: Context, changes: list[SlotChange], *, check: bool = False,
                  host: str | None = None) -> list[SlotOutcome]:
    """Apply CHANGES on this host; one outcome per change, in order. A failing change is
    reported and the rest go on; a failed creation is undone (see :func:`provisioner.steps.apply`).
    """
    host = host or socket.gethostname()
    outcomes: dict[int, SlotOutcome] = {}
    batch = [] if check else _batchable(ctx, changes)
    if len(batch) > 1:
        rows = [BatchRow(changes[i].username, changes[i].email or "", changes[i].country or "", changes[i].quota,
                         changes[i].payment_ref) for i in batch]
        for i, res in zip(batch, create_many(ctx, rows), strict=True):
            if isinstance(res, Created):
                outcomes[i] = SlotOutcome(host, res.record.username, "resumed" if res.resumed else "created", True,
                                          res.record.as_dict(), password=res.password)
            else:
                outcomes[i] = SlotOutcome(host, changes[i].username, "failed", False,
                                          error=" ".join(str(res).split()), exit_code=res.exit_code)
    for i, change in enumerate(changes):
        if i in outcomes:
            continue
        try:
            outcomes[i] = _locked(ctx, change, host, check)
        except SlotError as exc:
            outcomes[i] = SlotOutcome(host, change.username, "failed", False, error=" ".join(str(exc).split()),
                                      exit_code=exc.exit_code)
    return [outcomes[i] for i in range(len(changes))]


class LocalExecutor:
    """Apply slot changes on this host, in this process."""

    name = "local"

    def __init__(self, ctx: Context | None = None, host: str | None = None) -> None:
        self.ctx = ctx or Context()
        self.host = host or socket.gethostname()

    def apply(self, changes: list[SlotChange], *, check: bool = False) -> list[SlotOutcome]:
        """Apply CHANGES here; see :func:`apply_changes`."""
        return apply_changes(self.ctx, changes, check=check, host=self.host)
