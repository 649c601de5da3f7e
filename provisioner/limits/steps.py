"""Per-slot limits as plan steps: applied at create and change-plan, lifted at remove.

The limits a slot is sold come from its plan (``[plans.NAME]``); what was applied is kept in
the store (``slot_limits``: the limits and the backend, never a secret) so ``doctor`` can
compare it with what the kernel enforces, and ``slot show``, the data report and the metrics
can show it. A limit this host cannot enforce refuses the whole change before anything is done,
in one line naming the controller that is missing.
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner import accounts
from provisioner.config import PlanConfig, ResourceLimits
from provisioner.context import Context
from provisioner.extensions import Hooks
from provisioner.limits.enforcement import (
    LimitsBackend,
    LimitsError,
    Placement,
    SlotTarget,
    beyond_host,
    block_device,
    host_capacity,
    kernel_units_differ,
)
from provisioner.limits.tmpfs import SlotTmpfs, TmpUse, inode_cap, login_tmpfs_refusal, page_rounded, shrink_refusal
from provisioner.steps import Step
from provisioner.store import SlotRecord, Store

if TYPE_CHECKING:
    from provisioner.slots import SlotRequest
    from provisioner.supervisor import Program

# name -> "module:Class", imported on first use. Order is detection order (each class's
# ``detects(cgroup_root)``); ``none`` fits any host, so it comes last. Each class is built by
# ``for_host(cgroup_root, cgroup_parent)`` (the ``[metrics]`` values).
BACKENDS: dict[str, str] = {
    "systemd": "provisioner.limits.systemd:SystemdSliceLimits",
    "cgroup-v1": "provisioner.limits.cgroup_v1:CgroupV1Limits",
    "none": "provisioner.limits.steps:NoLimits",
}


# --- the store's copy ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AppliedLimits:
    """What was applied to one slot, and by which backend."""

    username: str
    limits: ResourceLimits
    backend: str
    applied_at: float


class LimitRecords:
    """The only code that writes ``slot_limits``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, username: str) -> AppliedLimits | None:
        row = self.store.db.execute("SELECT * FROM slot_limits WHERE username = ?", (username,)).fetchone()
        if row is None:
            return None
        try:
            limits = ResourceLimits.from_dict(json.loads(row["limits"]))
        except (ValueError, TypeError):
            limits = ResourceLimits()
        return AppliedLimits(row["username"], limits, row["backend"], row["applied_at"])

    def put(self, username: str, limits: ResourceLimits, backend: str) -> None:
        self.store.db.execute("INSERT INTO slot_limits VALUES (?, ?, ?, ?) ON CONFLICT (username) DO UPDATE SET "
                              "limits = excluded.limits, backend = excluded.backend, applied_at = excluded.applied_at",
                              (username, json.dumps(limits.as_dict(), sort_keys=True), backend, time.time()))

    def delete(self, username: str) -> None:
        self.store.db.execute("DELETE FROM slot_limits WHERE username = ?", (username,))

    def restore(self, username: str, previous: AppliedLimits | None) -> None:
        if previous is None:
            self.delete(username)
        else:
            self.put(username, previous.limits, previous.backend)


# --- the backend of this host ----------------------------------------------------------------------


class NoLimits:
    """A host without cgroup controllers: nothing can be enforced, every set limit is refused."""

    name = "none"

    def __init__(self, *_args: object) -> None:
        pass

    @staticmethod
    def detects(cgroup_root: Path) -> bool:
        return True

    @classmethod
    def for_host(cls, cgroup_root: Path, cgroup_parent: str) -> NoLimits:
        return cls()

    def missing(self, limits: ResourceLimits, target: SlotTarget) -> list[str]:
        return [f"{k}: this host has no cgroup controllers (limits backend none)" for k in limits.set_keys()]

    def apply(self, limits: ResourceLimits, target: SlotTarget) -> None:
        """Nothing to apply."""

    def clear(self, target: SlotTarget) -> None:
        """Nothing to lift."""

    def expected(self, limits: ResourceLimits, target: SlotTarget) -> dict[str, str]:
        return {}

    def read(self, target: SlotTarget) -> dict[str, str] | None:
        return {}

    def placement(self, target: SlotTarget) -> Placement:
        return Placement()


def backend_name(ctx: Context) -> str:
    """``[limits] backend`` (auto: systemd slices, cgroup v1 controllers, or none)."""
    name = ctx.config.limits.backend
    if name != "auto":
        return str(name)
    from provisioner.metrics import metrics_config

    root = metrics_config(ctx).cgroup_root
    return next(n for n in BACKENDS if _backend_class(n).detects(root))


def _backend_class(name: str) -> Any:
    module, _, cls_name = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls_name)


def load_limits_backend(ctx: Context) -> LimitsBackend:
    """The backend enforcing limits on this host (cgroup root and parent from ``[metrics]``)."""
    from provisioner.metrics import metrics_config

    cfg = metrics_config(ctx)
    backend: LimitsBackend = _backend_class(backend_name(ctx)).for_host(cfg.cgroup_root, cfg.cgroup_parent)
    return backend


def slot_tmpfs(ctx: Context) -> SlotTmpfs:
    """The slots' tmpfs of this host, under ``<state_dir>/slot-tmp`` (the session module's ``tmpfs_root=``)."""
    return SlotTmpfs(ctx.config.state_dir / "slot-tmp")


def _expected(backend: LimitsBackend, limits: ResourceLimits, target: SlotTarget) -> dict[str, str]:
    """The kernel settings LIMITS mean: the backend's, and the /tmp tmpfs size (page-rounded)."""
    want = backend.expected(limits, target)
    if limits.tmp_size is not None:
        want["tmpfs/size"] = str(page_rounded(limits.tmp_size))
        want["tmpfs/inodes"] = str(inode_cap(limits.tmp_size))
    return want


def _read(backend: LimitsBackend, tmp: SlotTmpfs, target: SlotTarget) -> dict[str, str] | None:
    """The kernel settings now, keyed as :func:`_expected`; None when the cgroup is gone."""
    have = backend.read(target)
    use = tmp.use(target.uid) if have is not None and target.uid > 0 else None
    if have is not None and use is not None:
        have = {**have, "tmpfs/size": str(use.size), "tmpfs/inodes": str(use.inodes)}
    return have


def target_of(ctx: Context, username: str, home: Path | None = None,
              acct: accounts.Account | None = None) -> SlotTarget:
    """The slot as a backend sees it (ids 0 while the user does not exist yet)."""
    home = home or ctx.settings.slots_root / username
    acct = acct or accounts.lookup_user(username)
    where = home if home.exists() else ctx.settings.slots_root
    return SlotTarget(username, acct.uid if acct else 0, acct.gid if acct else 0, home, block_device(where))


def check_enforceable(backend: LimitsBackend, limits: ResourceLimits, target: SlotTarget, plan: str,
                      tmpfs_root: Path | None = None) -> None:
    """Refuse (one line) limits this host cannot enforce or that exceed the host itself.

    TMPFS_ROOT (``<state_dir>/slot-tmp``): under systemd the host-wide session lines must look
    there, or a /tmp size would hold for the slot's apps and not for its logins.
    """
    problems = backend.missing(limits, target)
    if limits.tmp_size is not None and backend.name == "systemd" and tmpfs_root is not None:
        refusal = login_tmpfs_refusal(tmpfs_root)
        if refusal:
            problems.append(refusal)
    if not problems:
        problems = beyond_host(limits, *host_capacity())
    if problems:
        raise LimitsError(f"plan {plan} cannot be enforced on this host: {'; '.join(problems)}")


# --- steps -------------------------------------------------------------------------------------------


def creation_steps(ctx: Context, req: SlotRequest) -> list[Step]:
    """Make the slot's cgroup (or slice) with its plan's limits (REQ's plan), before its apps start."""
    backend = load_limits_backend(ctx)
    plan = ctx.config.plans.get(req.plan) if req.plan else None
    limits = plan.limits if plan else ResourceLimits()
    name = req.username
    tmp = slot_tmpfs(ctx)
    check_enforceable(backend, limits, target_of(ctx, name), plan.name if plan else "(none)", tmp.root)
    if backend.name == "none":
        return []
    records = LimitRecords(ctx.store)

    def do() -> None:
        target = target_of(ctx, name)
        if target.uid == 0:
            raise LimitsError(f"user {name} vanished during create")
        backend.apply(limits, target)
        tmp.apply(limits.tmp_size, target.uid, name)
        records.put(name, limits, backend.name)

    def undo() -> None:
        target = target_of(ctx, name)
        if target.uid > 0:
            tmp.clear(target.uid)
        backend.clear(target)
        records.delete(name)

    what = ", ".join(f"{k}={v}" for k, v in limits.as_dict().items() if v is not None) or "no limits"
    return [Step("limits", f"make the cgroup of {name} ({backend.name}): {what}", do, undo)]


def removal_steps(ctx: Context, rec: SlotRecord) -> list[Step]:
    """Lift the slot's limits and remove its cgroup (its processes are already stopped)."""
    backend = load_limits_backend(ctx)
    records = LimitRecords(ctx.store)
    name = rec.username
    acct = accounts.lookup_user(name)
    if acct is None and records.get(name) is None:
        return []

    tmp = slot_tmpfs(ctx)

    def do() -> None:
        uid = acct.uid if acct is not None else rec.uid
        if uid:
            tmp.clear(uid)  # its processes are stopped: nothing holds the tmpfs
        if acct is not None:
            backend.clear(target_of(ctx, name, Path(rec.home), acct))
        records.delete(name)

    return [Step("limits", f"lift the limits of {name} and remove its cgroup ({backend.name})", do)]


def change_plan_steps(ctx: Context, username: str, new: PlanConfig) -> list[Step]:
    """Apply NEW's limits to USERNAME (undo: the limits applied before)."""
    backend = load_limits_backend(ctx)
    records = LimitRecords(ctx.store)
    previous = records.get(username)
    target = target_of(ctx, username)
    tmp = slot_tmpfs(ctx)
    check_enforceable(backend, new.limits, target, new.name, tmp.root)
    if backend.name == "none":
        return []
    have = _read(backend, tmp, target)
    if previous is not None and previous.limits == new.limits and have is not None \
            and not kernel_units_differ(_expected(backend, new.limits, target), have):
        return []
    old = previous.limits if previous else ResourceLimits()
    use = tmp.use(target.uid) if target.uid > 0 else None
    refusal = shrink_refusal(username, use, new.limits.tmp_size) if use and new.limits.tmp_size else None
    if refusal:
        raise LimitsError(f"plan {new.name}: {refusal}")

    # A /tmp size sold or dropped: the slot's running apps keep the /tmp they started with (the
    # home's, or a tmpfs about to go) until they start again, so they are restarted around it.
    moves = (old.tmp_size is None) != (new.limits.tmp_size is None)
    running: list[str] = []

    def do() -> None:
        backend.apply(new.limits, target)
        if moves:
            running[:] = _stop_apps(ctx, username)
        tmp.apply(new.limits.tmp_size, target.uid, username)
        records.put(username, new.limits, backend.name)
        _start_apps(ctx, username, running)

    def undo() -> None:
        backend.apply(old, target)
        if moves:
            _stop_apps(ctx, username)
        tmp.apply(old.tmp_size, target.uid, username)
        records.restore(username, previous)
        _start_apps(ctx, username, running)

    what = f"apply the limits of plan {new.name} to {username} ({backend.name})"
    return [Step("limits", what + ("; restart its running apps on their new /tmp" if moves else ""), do, undo)]


def _stop_apps(ctx: Context, username: str) -> list[str]:
    """Stop the slot's running apps (through the host's app control); returns which ran."""
    control = ctx.extensions.app_control
    if control is None:
        return []
    apps = control.running(ctx, username)
    for app in apps:
        control.stop(ctx, username, app)
    return apps


def _start_apps(ctx: Context, username: str, apps: list[str]) -> None:
    control = ctx.extensions.app_control
    if control is None:
        return
    for app in apps:
        control.start(ctx, username, app)


def host_steps(ctx: Context, _req: object) -> list[Step]:
    """``host init`` (and so every boot): remake the cgroup of each slot whose limits the kernel lost.

    cgroup v1 directories live in memory: after a reboot every slot's cgroup is gone until this
    runs, and so is each slot's /tmp tmpfs (its logins and apps are refused until it is back). It
    runs before the supervisor step, so apps restarted at boot join their slot's cgroup and tmpfs.
    """
    if "slots_root" not in ctx.store.host_settings():
        return []
    backend = load_limits_backend(ctx)
    if backend.name == "none":
        return []
    records = LimitRecords(ctx.store)
    tmp = slot_tmpfs(ctx)
    todo: list[tuple[SlotTarget, ResourceLimits]] = []
    for rec in ctx.store.list_slots():
        applied = records.get(rec.username)
        acct = accounts.lookup_user(rec.username)
        if acct is None or rec.state not in ("active", "suspended"):
            continue
        # A slot made before limits existed gets its cgroup too (unlimited), so logins and
        # apps always have one to join.
        limits = applied.limits if applied else ResourceLimits()
        target = target_of(ctx, rec.username, Path(rec.home), acct)
        have = _read(backend, tmp, target)
        if applied is None or have is None or kernel_units_differ(_expected(backend, limits, target), have):
            todo.append((target, limits))
    if not todo:
        return []

    def restore() -> None:
        for target, limits in todo:
            backend.apply(limits, target)
            tmp.apply(limits.tmp_size, target.uid, target.username)  # a tmpfs does not survive a reboot either
            records.put(target.username, limits, backend.name)

    names = ", ".join(t.username for t, _ in todo[:5]) + (" ..." if len(todo) > 5 else "")
    return [Step("slot-limits", f"restore the cgroup and limits of {len(todo)} slot(s) ({names}; {backend.name})",
                 restore)]


# --- what the others show -------------------------------------------------------------------------


def limits_of(ctx: Context, username: str) -> dict[str, Any] | None:
    """The applied limits of USERNAME for ``slot show``, metrics and the data report."""
    applied = LimitRecords(ctx.store).get(username)
    if applied is None:
        return None
    return {**applied.limits.as_dict(), "backend": applied.backend}


def tmp_use(ctx: Context, username: str, uid: int | None, mountinfo: str | None = None) -> TmpUse | None:
    """Size and use of the slot's /tmp tmpfs (None: it has none mounted; MOUNTINFO: see tmpfs_use)."""
    if uid is None or uid <= 0:
        return None
    return slot_tmpfs(ctx).use(uid, mountinfo)


def slot_fields(ctx: Context, rec: SlotRecord) -> dict[str, Any]:
    """``slot show``: the limits the slot is held to (None: no limits recorded), its /tmp use against its size."""
    limits = limits_of(ctx, rec.username)
    out: dict[str, Any] = {"limits": limits}
    if limits is not None and limits.get("tmp_size") is not None:
        acct = accounts.lookup_user(rec.username)
        use = tmp_use(ctx, rec.username, acct.uid if acct else None)
        out["tmp"] = ({"used_bytes": use.used, "size_bytes": use.size} if use is not None
                      else {"used_bytes": None, "size_bytes": None, "problem": "its tmpfs is not mounted"})
    return out


def drift(ctx: Context, records: list[SlotRecord]) -> list[tuple[str, str]]:
    """(slot, problem) for each slot whose kernel limits differ from the store's, or whose cgroup is gone."""
    backend = load_limits_backend(ctx)
    store = LimitRecords(ctx.store)
    tmp = slot_tmpfs(ctx)
    out = []
    for rec in records:
        if rec.state not in ("active", "suspended"):
            continue
        applied = store.get(rec.username)
        if applied is None:
            continue
        acct = accounts.lookup_user(rec.username)
        if acct is None:
            continue
        if applied.backend != backend.name:
            out.append((rec.username, f"limits were applied by {applied.backend}, this host enforces with "
                                      f"{backend.name}; run 'slotctl slot change-plan' again"))
            continue
        target = target_of(ctx, rec.username, Path(rec.home), acct)
        have = _read(backend, tmp, target)
        if have is None:
            out.append((rec.username, f"its cgroup is gone ({backend.name}): limits are not enforced"))
            continue
        if applied.limits.tmp_size is not None and "tmpfs/size" not in have:
            out.append((rec.username, f"its /tmp tmpfs is not mounted on {tmp.path(acct.uid)}: its logins and "
                                      "apps are refused until 'slotctl host init' remounts it"))
        elif applied.limits.tmp_size is None and tmp.expected(acct.uid):
            out.append((rec.username, f"{tmp.path(acct.uid)} is left from a /tmp size its plan no longer "
                                      "sells; run 'slotctl slot change-plan' again"))
        want = _expected(backend, applied.limits, target)
        if "tmpfs/size" not in have:  # a tmpfs not mounted is reported above, in words
            want = {k: v for k, v in want.items() if not k.startswith("tmpfs/")}
        for problem in kernel_units_differ(want, have):
            out.append((rec.username, f"limit drift: {problem}"))
    return out


def data_items(ctx: Context, username: str, rec: SlotRecord | None) -> list[Any]:
    """The data report row: the limits the slot is held to (not personal data, but about it)."""
    from provisioner.datareport import Item

    applied = LimitRecords(ctx.store).get(username) if rec is not None else None
    if applied is None:
        return []
    items = [Item("resource limits", {k: v for k, v in applied.limits.as_dict().items() if v is not None},
                  "what the plan sold (CPU, memory, swap, processes, I/O, /tmp size), enforced by the kernel",
                  f"store {ctx.config.db_path} (slot_limits), clear; the kernel ({applied.backend})",
                  "while the slot exists")]
    if applied.limits.tmp_size is not None:
        acct = accounts.lookup_user(username)
        use = tmp_use(ctx, username, acct.uid if acct else None)
        items.append(Item("files in /tmp and /var/tmp",
                          {"used_bytes": use.used if use else None, "size_bytes": use.size if use else None},
                          "the slot's own temporary files (the tenant's data, not read by us)",
                          f"a tmpfs (memory, swap) at {slot_tmpfs(ctx).root}/UID, charged to the slot's memory",
                          "until the tenant deletes them, the slot is removed or the host reboots"))
    return items


def place(ctx: Context, program: Program) -> Program:
    """PROGRAM set to run inside its slot's cgroup (or slice); root's programs stay as they are."""
    if program.user == "root" or ctx.store.get_slot(program.user) is None:
        return program  # only a slot's programs are held to a slot's limits
    acct = accounts.lookup_user(program.user)
    if acct is None:
        return program
    backend = load_limits_backend(ctx)
    target = target_of(ctx, program.user, acct=acct)
    if backend.name != "none" and backend.read(target) is None:
        # The slot's cgroup is gone (or predates limits): make it, with the limits on record.
        records = LimitRecords(ctx.store)
        applied = records.get(program.user)
        limits = applied.limits if applied else ResourceLimits()
        backend.apply(limits, target)
        records.put(program.user, limits, backend.name)
    where = backend.placement(target)
    # The wrapper binds the slot's tmpfs over /tmp when it has one (it checks at each start).
    return replace(program, cgroups=where.cgroups, slice=where.slice, tmpfs_root=str(slot_tmpfs(ctx).root))


# First in the list: the slot's cgroup and limits exist before any app of it starts, and
# ``host init`` prepares them before the supervisor starts apps.
EXTENSION = Hooks("limits", creation=creation_steps, removal=removal_steps, host=host_steps,
                  fields=slot_fields, data=data_items)
