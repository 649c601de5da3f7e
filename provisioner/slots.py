"""Slots: plan and apply creation, removal and password resets.

``plan_create_slot(request, facts, ...)`` and ``plan_remove_slot(...)`` decide from facts and
touch nothing; :func:`apply_create_slot` / :func:`apply_remove_slot` gather the facts, plan, and apply.
Every ``apply_*`` function expects its caller to hold the slots' locks: call them through the
front door, :mod:`provisioner.operations`, never directly.
A create interrupted at any point (even ``kill -9``) leaves a store row in state
``creating``: running the same create again finishes it, and ``slot remove`` cleans it.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provisioner import accountfiles, accounts, sweep
from provisioner.context import Context
from provisioner.errors import BadInput, SlotError
from provisioner.names import (
    format_size,
    parse_size,
    validate_country,
    validate_email,
    validate_payment_ref,
    validate_username,
)
from provisioner.quota import QuotaBackend
from provisioner.runner import run
from provisioner.steps import Plan, Step, apply
from provisioner.store import SlotRecord, Store, current_actor


def reserved_names(ctx: Context) -> frozenset[str]:
    """Names no slot may take beyond :data:`provisioner.names.RESERVED_NAMES` (the extensions')."""
    return ctx.extensions.reserved_names()


@dataclass(frozen=True)
class SlotRequest:
    """A validated purchase."""

    username: str
    email: str
    country: str
    quota_bytes: int | None
    payment_ref: str | None = None
    apps: tuple[str, ...] = ()  # installed by the apps extension
    plan: str | None = None  # the plan sold (a [plans] name): the limits and lifecycle extensions read it

    @classmethod
    def parse(
        cls,
        username: str,
        email: str,
        country: str,
        quota: str | int | None = None,
        payment_ref: str | None = None,
        apps: tuple[str, ...] = (),
        *,
        plan: str | None = None,
        reserved: frozenset[str] = frozenset(),
    ) -> SlotRequest:
        """Validate every field; raises BadInput naming the first bad one. RESERVED: names refused too."""
        return cls(
            username=validate_username(username, reserved),
            email=validate_email(email),
            country=validate_country(country),
            quota_bytes=None if quota is None else parse_size(quota),
            payment_ref=None if payment_ref is None else validate_payment_ref(payment_ref),
            apps=tuple(dict.fromkeys(apps)),
            plan=plan,
        )


@dataclass(frozen=True)
class SlotFacts:
    """What the host and the store say about one name right now."""

    account: accounts.Account | None
    group_exists: bool
    record: SlotRecord | None
    home_exists: bool
    uid_min: int = 1000

    @classmethod
    def gather(cls, ctx: Context, username: str) -> SlotFacts:
        home = ctx.settings.slots_root / username
        return cls(
            account=accounts.lookup_user(username),
            group_exists=accounts.group_exists(username),
            record=ctx.store.get_slot(username),
            home_exists=home.exists() or home.is_symlink(),
            uid_min=accounts.uid_min(),
        )


@dataclass(frozen=True)
class Created:
    """The outcome of a create: the password is shown once and never stored."""

    record: SlotRecord
    password: str = field(repr=False)
    resumed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {**self.record.as_dict(), "password": self.password, "resumed": self.resumed}


def _copy_skeleton(skel: Path, home: Path, uid: int, gid: int) -> None:
    """Copy SKEL into HOME (no symlinks followed), chown everything to the slot, home 0700."""
    if skel.is_dir():
        for entry in skel.iterdir():
            dest = home / entry.name
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, dest, symlinks=True, dirs_exist_ok=True)
            else:
                shutil.copy2(entry, dest, follow_symlinks=False)
    for root, dirs, files in os.walk(home):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, gid)
    os.chown(home, uid, gid)
    os.chmod(home, 0o700)


def plan_create_slot(
    req: SlotRequest,
    facts: SlotFacts,
    *,
    slots_root: Path,
    quota: QuotaBackend,
    store: Store,
    shell: str,
    skeleton: Path,
    password: str,
    extensions: list[Step] | None = None,
    id_range: tuple[int, int] = (65536, 99999),
) -> Plan:
    """The steps that turn REQ into a slot, given FACTS. Raises SlotError when it must not run.

    A fresh name gets every step; a name whose create was interrupted (store row ``creating``)
    gets only the steps whose result is missing. The UID (and the private group's GID, the
    same number) comes from ID_RANGE through the store, above every id ever handed out.
    """
    name = req.username
    home = slots_root / name
    rec = facts.record
    if rec is not None and rec.state != "creating":
        raise SlotError(f"slot {name!r} already exists")
    if rec is None and (facts.account is not None or facts.group_exists):
        raise SlotError(f"{name!r} is an existing account that is not a slot; it is never adopted")
    if rec is None and facts.home_exists:
        raise SlotError(f"{home} already exists; remove or move it first")
    if req.quota_bytes is not None and quota.name == "none":
        raise BadInput("the quota backend is 'none': this host cannot enforce --quota")
    resume = rec is not None
    steps: list[Step] = []
    actor = current_actor()

    if not resume:
        record = SlotRecord(name, None, req.email, req.country, req.payment_ref, req.quota_bytes,
                            str(home), "creating", time.time())

        def reserve() -> None:
            with store.transaction():
                store.insert_slot(record)
                store.audit(actor, "slot.create.start", name, {"quota_bytes": req.quota_bytes})

        steps.append(Step("reserve", f"record slot {name} as being created", reserve,
                          lambda: store.delete_slot(name)))
    if facts.account is None:
        lowest, highest = id_range
        allocated: dict[str, int] = {}

        def allocate() -> None:
            allocated.update(store.allocate_ids([name], lowest, highest, accounts.id_taken()))
            store.update_slot(name, uid=allocated[name])

        steps.append(Step("uid", f"allocate {name} a never-used id from {lowest}-{highest}", allocate,
                          lambda: store.retire_ids([name])))
        def make_user() -> None:
            with accounts.host_id_lock():
                allocated.update(_still_free(store, [name], dict(allocated), id_range))
                accounts.add_user(name, home, shell, allocated[name])

        steps.append(Step("user", f"useradd {name} (private group, shell {shell}, home {home})",
                          make_user, lambda: accounts.delete_user(name)))
    if not facts.home_exists:
        steps.append(Step("home", f"create home {home} ({quota.name})",
                          lambda: quota.make_home(home), lambda: quota.remove_home(home)))

    def skeleton_step() -> None:
        acct = accounts.lookup_user(name)
        if acct is None:
            raise SlotError(f"user {name} vanished during create")
        _copy_skeleton(skeleton, home, acct.uid, acct.gid)

    steps.append(Step("skeleton", f"copy {skeleton} into {home}, owner {name}, mode 0700", skeleton_step))
    if req.quota_bytes is not None:
        limit = req.quota_bytes
        steps.append(Step("quota", f"limit {home} to {format_size(limit)} ({quota.name})",
                          lambda: quota.set_limit(name, home, limit),
                          lambda: quota.clear_limit(name, home)))
    steps.append(Step("password", f"set a generated password for {name} (chpasswd, stdin)",
                      lambda: accounts.set_password(name, password)))

    steps.extend(extensions or [])

    def activate() -> None:
        acct = accounts.lookup_user(name)
        with store.transaction():
            store.update_slot(name, state="active", uid=acct.uid if acct else None,
                              quota_bytes=req.quota_bytes)
            store.audit(actor, "slot.create", name, {"quota_bytes": req.quota_bytes,
                                                     "resumed": resume})

    steps.append(Step("activate", f"mark slot {name} active", activate))
    return Plan(f"create slot {name}" + (" (resume)" if resume else ""), steps)


def _still_free(store: Store, names: list[str], ids: dict[str, int], id_range: tuple[int, int]) -> dict[str, int]:
    """IDS, with every id that something outside the store took meanwhile replaced by a fresh one.

    Called under :func:`accounts.host_id_lock`, right before the accounts are made. A replaced
    id is burnt (retired unused); the slot row gets the new one.
    """
    out = dict(ids)
    for name in names:
        while not accounts.id_free_for(out[name], name):
            store.burn_id(out[name])
            out[name] = store.allocate_ids([name], id_range[0], id_range[1], accounts.id_taken())[name]
            store.update_slot(name, uid=out[name])
    return out


def slot_id_range(ctx: Context) -> tuple[int, int]:
    """The configured slot id range, checked against the ranges shadow-utils allocates from."""
    lowest, highest = ctx.config.slots.uid_min, ctx.config.slots.uid_max
    accounts.check_slot_range(lowest, highest)
    return lowest, highest


def apply_create_slot(
    ctx: Context,
    username: str,
    email: str,
    country: str,
    quota: str | int | None = None,
    payment_ref: str | None = None,
    *,
    dry_run: bool = False,
    apps: tuple[str, ...] = (),
    plan: str | None = None,
) -> Created | Plan:
    """Create (or finish creating) a slot on PLAN (a name the caller checked). Returns the plan when DRY_RUN.

    On failure every step already done is undone and :class:`StepFailed` names the step.
    """
    if quota is None and ctx.settings.quota_backend != "none":
        quota = ctx.config.slots.default_quota
    req = SlotRequest.parse(username, email, country, quota, payment_ref, tuple(apps), plan=plan,
                            reserved=reserved_names(ctx))
    facts = SlotFacts.gather(ctx, req.username)
    if facts.account is not None and facts.account.uid < facts.uid_min:
        raise BadInput(f"username {req.username!r} is reserved (system account)")
    password = accounts.generate_password(ctx.config.slots.password_length)
    id_range = slot_id_range(ctx)
    steps = plan_create_slot(
        req, facts, slots_root=ctx.settings.slots_root, quota=ctx.quota, store=ctx.store,
        shell=ctx.config.slots.shell, skeleton=ctx.config.slots.skeleton, password=password,
        extensions=ctx.extensions.creation_steps(ctx, req), id_range=id_range,
    )
    if dry_run:
        return steps
    apply(steps)
    record = ctx.store.get_slot(req.username)
    assert record is not None
    return Created(record, password, resumed=facts.record is not None)


def plan_create_batch(
    reqs: list[SlotRequest],
    *,
    slots_root: Path,
    quota: QuotaBackend,
    store: Store,
    shell: str,
    skeleton: Path,
    passwords: dict[str, str],
    id_range: tuple[int, int] = (65536, 99999),
) -> Plan:
    """The steps that create many fresh slots at once (every name checked fresh by the caller).

    The same steps as one create, each done for the whole batch: the users come from a single
    ``newusers`` run (accounts, private groups and PAM-hashed passwords from stdin, with one
    write of the account files instead of one per user), which is what makes bulk provisioning
    cost little more than the password hashes themselves.
    """
    names = [r.username for r in reqs]
    homes = {n: slots_root / n for n in names}
    actor = current_actor()
    now = time.time()

    def reserve() -> None:
        with store.transaction():
            for r in reqs:
                store.insert_slot(SlotRecord(r.username, None, r.email, r.country, r.payment_ref,
                                             r.quota_bytes, str(homes[r.username]), "creating", now))
                store.audit(actor, "slot.create.start", r.username, {"quota_bytes": r.quota_bytes, "batch": True})

    def unreserve() -> None:
        with store.transaction():
            for n in names:
                store.delete_slot(n)

    def make_homes() -> None:
        for n in names:
            quota.make_home(homes[n])

    def remove_homes() -> None:
        for n in names:
            quota.remove_home(homes[n])

    allocated: dict[str, int] = {}

    def allocate() -> None:
        allocated.update(store.allocate_ids(names, id_range[0], id_range[1], accounts.id_taken()))
        with store.transaction():
            for n in names:
                store.update_slot(n, uid=allocated[n])

    def users() -> None:
        # An explicit uid and gid (the same number) per line: newusers creates the private group
        # with that gid. It also hands each user a subordinate range, which we take back at once.
        with accounts.host_id_lock():
            allocated.update(_still_free(store, names, dict(allocated), id_range))
            lines = "".join(f"{n}:{passwords[n]}:{allocated[n]}:{allocated[n]}:{accounts.SLOT_COMMENT}:"
                            f"{homes[n]}:{shell}\n" for n in names)
            try:
                run(["newusers"], stdin=lines)
            finally:
                accountfiles.drop_subordinate_ids(names)

    def delete_users() -> None:
        for n in names:
            accounts.delete_user(n)

    def skeletons() -> None:
        for n in names:
            acct = accounts.lookup_user(n)
            if acct is None:
                raise SlotError(f"user {n} missing after newusers")
            _copy_skeleton(skeleton, homes[n], acct.uid, acct.gid)

    def limits() -> None:
        for r in reqs:
            if r.quota_bytes is not None:
                quota.set_limit(r.username, homes[r.username], r.quota_bytes)

    def clear_limits() -> None:
        for n in names:
            quota.clear_limit(n, homes[n])

    def activate() -> None:
        with store.transaction():
            for r in reqs:
                acct = accounts.lookup_user(r.username)
                store.update_slot(r.username, state="active", uid=acct.uid if acct else None)
                store.audit(actor, "slot.create", r.username, {"quota_bytes": r.quota_bytes, "batch": True})

    steps = [
        Step("reserve", f"record {len(names)} slots as being created", reserve, unreserve),
        Step("home", f"create {len(names)} homes under {slots_root} ({quota.name})", make_homes, remove_homes),
        Step("uid", f"allocate {len(names)} never-used ids from {id_range[0]}-{id_range[1]}", allocate,
             lambda: store.retire_ids(names)),
        Step("user", f"newusers: {len(names)} users with private groups, passwords on stdin", users,
             delete_users),
        Step("skeleton", f"copy {skeleton} into each home, owner the slot, mode 0700", skeletons),
    ]
    if any(r.quota_bytes is not None for r in reqs):
        steps.append(Step("quota", f"set each slot's quota ({quota.name})", limits, clear_limits))
    steps.append(Step("activate", f"mark {len(names)} slots active", activate))
    return Plan(f"create {len(names)} slots", steps)


@dataclass(frozen=True)
class BatchRow:
    """One row of a bulk create, as given."""

    username: str
    email: str
    country: str
    quota: str | int | None = None
    payment_ref: str | None = None


def apply_create_many(ctx: Context, rows: list[BatchRow], batch_size: int = 200) -> list[Created | SlotError]:
    """Create a slot per row; one result per row, in order. A failing row never stops the rest.

    Rows whose name is fresh go through :func:`plan_create_batch` in chunks of BATCH_SIZE; if a
    chunk fails as a whole it is undone and its rows are retried one by one, so a bad row only
    fails itself. Rows that resume an interrupted create go through :func:`apply_create_slot`.
    """
    id_range = slot_id_range(ctx)
    reserved = reserved_names(ctx)
    results: list[Created | SlotError | None] = [None] * len(rows)
    fresh: list[tuple[int, SlotRequest]] = []
    single: list[int] = []
    seen: set[str] = set()
    default_quota = ctx.config.slots.default_quota if ctx.settings.quota_backend != "none" else None
    for i, row in enumerate(rows):
        try:
            req = SlotRequest.parse(row.username, row.email, row.country,
                                    row.quota if row.quota is not None else default_quota, row.payment_ref,
                                    reserved=reserved)
        except SlotError as exc:
            results[i] = exc
            continue
        facts = SlotFacts.gather(ctx, req.username)
        is_fresh = (facts.record is None and facts.account is None and not facts.group_exists
                    and not facts.home_exists and req.username not in seen)
        if is_fresh and not (req.quota_bytes is not None and ctx.quota.name == "none"):
            fresh.append((i, req))
        else:
            single.append(i)
        seen.add(req.username)
    for start in range(0, len(fresh), batch_size):
        chunk = fresh[start:start + batch_size]
        passwords = {req.username: accounts.generate_password(ctx.config.slots.password_length)
                     for _, req in chunk}
        plan = plan_create_batch(
            [req for _, req in chunk], slots_root=ctx.settings.slots_root, quota=ctx.quota, store=ctx.store,
            shell=ctx.config.slots.shell, skeleton=ctx.config.slots.skeleton, passwords=passwords,
            id_range=id_range,
        )
        try:
            apply(plan)
        except SlotError:
            single.extend(i for i, _ in chunk)
            continue
        for i, req in chunk:
            ext = ctx.extensions.creation_steps(ctx, req)
            try:
                if ext:
                    apply(Plan(f"finish slot {req.username}", ext))
                rec = ctx.store.get_slot(req.username)
                assert rec is not None
                results[i] = Created(rec, passwords[req.username])
            except SlotError as exc:
                apply_remove_slot(ctx, req.username)
                results[i] = exc
    for i in sorted(single):
        row = rows[i]
        try:
            out = apply_create_slot(ctx, row.username, row.email, row.country, row.quota, row.payment_ref)
            assert isinstance(out, Created)
            results[i] = out
        except SlotError as exc:
            results[i] = exc
    return [r if r is not None else SlotError("not processed") for r in results]


def plan_remove_slot(
    username: str,
    facts: SlotFacts,
    *,
    slots_root: Path,
    quota: QuotaBackend,
    store: Store,
    keep_data: bool,
    extensions: list[Step],
    kept_dir: Path,
    sweep_scope: sweep.SweepScope | None = None,
) -> Plan:
    """The steps that remove slot USERNAME without trace (the audit entries stay).

    SWEEP_SCOPE says where the sweep looks (default: everything local but SLOTS_ROOT).
    """
    scope = sweep_scope or sweep.SweepScope((slots_root,))
    if not username:
        raise BadInput("username is empty")
    rec = facts.record
    if rec is None:
        raise SlotError(f"no slot named {username!r}")
    home = Path(rec.home)
    if home.parent != slots_root:
        raise SlotError(f"slot {username!r} has home {home} outside {slots_root}; refusing")
    actor = current_actor()
    results: dict[str, Any] = {}
    steps: list[Step] = [
        Step("mark", f"mark slot {username} as being removed",
             lambda: store.update_slot(username, state="removing")),
    ]
    acct = facts.account
    if acct is not None:
        uid = acct.uid
        if uid < facts.uid_min:
            raise SlotError(f"{username!r} has system uid {uid}; refusing")
        # Locked first: from here on no login of any kind can start a process that the next
        # step would have to catch, or that could race the steps after it.
        steps.append(Step("lock", f"lock and expire the account {username}",
                          lambda: accounts.lock_and_expire(username)))

        def stop() -> None:
            accounts.stop_processes(uid)

        steps.append(Step("processes", f"stop every process of {username} (uid {uid}) until none is left", stop))
    steps.extend(extensions)
    swept_uid = acct.uid if acct is not None else rec.uid
    owner = accounts.uid_owner(swept_uid) if acct is None and swept_uid is not None else None
    if owner is not None and swept_uid is not None:
        # The account went behind our back and its id is another account's now (an admin's
        # useradd, another store's slot): what that id owns and runs is that account's, not
        # this slot's leftovers. Nothing of it is swept or stopped; the removal says so.
        results["sweep"] = {**sweep.Swept(swept_uid).as_dict(), "skipped": f"uid {swept_uid} belongs to {owner!r} now"}
    elif swept_uid is not None and swept_uid >= facts.uid_min:
        sweep_uid = swept_uid

        def sweep_step() -> None:
            # Again: a supervisor may have restarted an app as the slot between the first kill
            # and the apps' removal step (it needs no login, so the lock does not stop it).
            accounts.stop_processes(sweep_uid)
            found = sweep.sweep({sweep_uid: username}, scope)
            results["sweep"] = found[sweep_uid].as_dict()

        steps.append(Step("sweep", f"remove what uid {sweep_uid} owns outside {home}: tmp dirs, spools, "
                                   "SysV IPC, message queues, systemd user state", sweep_step))
    if facts.home_exists:
        steps.append(Step("quota", f"lift the quota on {home}", lambda: quota.clear_limit(username, home)))
        if keep_data:
            dest = kept_dir / f"{username}-{time.strftime('%Y%m%dT%H%M%S')}-{swept_uid}"

            def keep() -> None:
                keep_home(home, kept_dir, dest)
                store.add_kept_home(str(dest), username)
                results["kept"] = str(dest)

            steps.append(Step("keep-data", f"move {home} to {dest} (one rename into a root-only directory)",
                              keep))
        else:
            steps.append(Step("home", f"remove home {home} ({quota.name})", lambda: quota.remove_home(home)))
    if acct is not None or facts.group_exists:
        steps.append(Step("user", f"userdel {username} and its group", lambda: accounts.delete_user(username)))

    def forget() -> None:
        with store.transaction():
            store.delete_slot(username)
            store.retire_ids([username])
            if swept_uid is not None:
                store.retire_id(swept_uid, username)
            store.audit(actor, "slot.remove", username, {"keep_data": keep_data, **removal_audit(results)})

    steps.append(Step("forget", f"delete the store rows of {username} (audit kept)", forget))
    return Plan(f"remove slot {username}", steps, results)


def removal_audit(results: dict[str, Any]) -> dict[str, Any]:
    """The audit detail of what a removal swept: counts, and the first paths removed."""
    found = results.get("sweep")
    if not found:
        return {}
    return {"swept": {"paths": found["paths"][:20], "removed_paths": found["removed_paths"],
                      "ipc": found["ipc"], "mqueues": found["mqueues"], "systemd": found["systemd"]}}


def keep_home(home: Path, kept_dir: Path, dest: Path) -> None:
    """Move HOME to DEST inside KEPT_DIR with one rename; nothing inside it is touched.

    KEPT_DIR is root's, mode 0700, so nobody but root reaches the kept tree; the files keep
    their owner, the slot's retired UID, which no account ever gets again, so no chown has to
    walk a tree a tenant shaped (with symlinks swapped in while it runs). Only DEST itself is
    made root's and 0700, through a descriptor opened without following links.
    """
    kept_dir.mkdir(mode=0o700, exist_ok=True)
    kfd = os.open(kept_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchown(kfd, 0, 0)
        os.fchmod(kfd, 0o700)
        os.rename(home, dest)
        dfd = os.open(dest.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=kfd)
        try:
            os.fchown(dfd, 0, 0)
            os.fchmod(dfd, 0o700)
        finally:
            os.close(dfd)
    finally:
        os.close(kfd)


def sweep_scope(ctx: Context, max_age: float) -> sweep.SweepScope:
    """Where removals on this host sweep: all but the slots root; places cached in the state dir."""
    return sweep.SweepScope((ctx.settings.slots_root,), (ctx.config.slots.uid_min, ctx.config.slots.uid_max),
                            ctx.config.state_dir / "sweep-places.json", max_age)


def apply_remove_slot(ctx: Context, username: str, *, keep_data: bool = False, dry_run: bool = False) -> Plan:
    """Remove slot USERNAME (exact name). Returns the plan (applied unless DRY_RUN)."""
    if not isinstance(username, str) or not username:
        raise BadInput("username is empty")
    if "/" in username or "\x00" in username or username in {".", ".."}:
        raise BadInput(f"username {username!r} is invalid")
    facts = SlotFacts.gather(ctx, username)
    rec = facts.record
    extensions = ctx.extensions.removal_steps(ctx, rec) if rec else []
    plan = plan_remove_slot(
        username, facts, slots_root=ctx.settings.slots_root, quota=ctx.quota, store=ctx.store,
        keep_data=keep_data, extensions=extensions, kept_dir=ctx.settings.slots_root / ".kept",
        sweep_scope=sweep_scope(ctx, sweep.PLACES_MAX_AGE),
    )
    if not dry_run:
        apply(plan)
    return plan


@dataclass(frozen=True)
class Removed:
    """The outcome of one removal in a batch: what was swept, where the home was kept."""

    username: str
    uid: int | None
    sweep: dict[str, Any] | None
    kept: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"username": self.username, "uid": self.uid, "sweep": self.sweep, "kept": self.kept}


def apply_remove_many(ctx: Context, usernames: list[str], *, keep_data: bool = False,
                batch_size: int = 200, fresh_walk: bool = True) -> list[Removed | SlotError]:
    """Remove many slots; one result per name, in order. A failing name never stops the rest.

    Every slot gets what :func:`apply_remove_slot` does (locked and expired first, every process
    stopped, its removal extensions, the sweep, home and quota, account, store rows, audit),
    but each expensive part once per chunk of BATCH_SIZE: one rewrite of the account files to
    lock them and one to delete them, one /proc scan a round for all their processes, one
    filesystem walk for the sweep (for the first chunk, unless FRESH_WALK is false; later
    chunks reuse it), one btrfs commit for all the homes. The caller holds the slots' locks
    (:func:`provisioner.operations.remove_many`).
    """
    results: list[Removed | SlotError | None] = [None] * len(usernames)
    seen: set[str] = set()
    todo: list[tuple[int, SlotFacts]] = []
    root = ctx.settings.slots_root
    for i, name in enumerate(usernames):
        if not isinstance(name, str) or not name or "/" in name or "\x00" in name or name in {".", ".."}:
            results[i] = BadInput(f"username {name!r} is invalid")
            continue
        if name in seen:
            results[i] = BadInput(f"{name!r} is named twice")
            continue
        seen.add(name)
        facts = SlotFacts.gather(ctx, name)
        rec = facts.record
        if rec is None:
            results[i] = SlotError(f"no slot named {name!r}")
        elif Path(rec.home).parent != root:
            results[i] = SlotError(f"slot {name!r} has home {rec.home} outside {root}; refusing")
        elif facts.account is not None and facts.account.uid < facts.uid_min:
            results[i] = SlotError(f"{name!r} has system uid {facts.account.uid}; refusing")
        else:
            todo.append((i, facts))
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        try:
            walk_age = 0.0 if fresh_walk and start == 0 else sweep.PLACES_MAX_AGE
            for i, out in _remove_chunk(ctx, chunk, keep_data, walk_age).items():
                results[i] = out
        except SlotError as exc:  # a batch-wide step failed: every row not yet done says why
            for i, _facts in chunk:
                if results[i] is None:
                    results[i] = SlotError(f"batch removal failed: {exc}")
    return [r if r is not None else SlotError("not processed") for r in results]


def _remove_chunk(ctx: Context, chunk: list[tuple[int, SlotFacts]], keep_data: bool,
                  walk_age: float) -> dict[int, Removed | SlotError]:
    """Remove the slots of CHUNK (index, facts); see :func:`apply_remove_many`."""
    store, quota, root = ctx.store, ctx.quota, ctx.settings.slots_root
    actor = current_actor()
    out: dict[int, Removed | SlotError] = {}
    live = dict(chunk)
    name_of = {i: f.record.username for i, f in chunk if f.record is not None}
    with store.transaction():
        for i in live:
            store.update_slot(name_of[i], state="removing")
    accountfiles.lock_and_expire([name_of[i] for i, f in live.items() if f.account is not None])
    uid_of = {i: (f.account.uid if f.account is not None else f.record.uid if f.record else None)
              for i, f in live.items()}
    survivors = accounts.stop_processes_of({f.account.uid for f in live.values() if f.account is not None})
    for i in list(live):
        if uid_of[i] in survivors:
            out[i] = SlotError(f"step 'processes' failed: processes of uid {uid_of[i]} survive SIGKILL")
            del live[i]
    for i in list(live):
        rec = live[i].record
        assert rec is not None
        ext = ctx.extensions.removal_steps(ctx, rec)
        try:
            if ext:
                apply(Plan(f"remove slot {rec.username}: extensions", ext))
        except SlotError as exc:
            out[i] = exc
            del live[i]
    # An account gone behind our back whose id another account has now: not this slot's to sweep.
    to_sweep = {u: name_of[i] for i in live if (u := uid_of[i]) is not None and u >= live[i].uid_min
                and (live[i].account is not None or accounts.uid_owner(u) is None)}
    accounts.stop_processes_of(set(to_sweep))  # an app a supervisor restarted meanwhile (see remove_slot)
    swept = sweep.sweep(to_sweep, sweep_scope(ctx, walk_age))
    kept: dict[int, str] = {}
    homes = {i: Path(f.record.home) for i, f in live.items() if f.record is not None and f.home_exists}
    if keep_data:
        for i, home in homes.items():
            dest = root / ".kept" / f"{name_of[i]}-{time.strftime('%Y%m%dT%H%M%S')}-{uid_of[i]}"
            try:
                quota.clear_limit(name_of[i], home)
                keep_home(home, root / ".kept", dest)
                store.add_kept_home(str(dest), name_of[i])
                kept[i] = str(dest)
            except (SlotError, OSError) as exc:
                out[i] = SlotError(f"step 'keep-data' failed: {exc}")
                del live[i]
    else:
        many = getattr(quota, "remove_homes", None)
        if many is not None:  # the backend removes the limit with the home (btrfs: the qgroup)
            many(list(homes.values()))
        else:
            for i, home in homes.items():
                quota.clear_limit(name_of[i], home)
                quota.remove_home(home)
    accountfiles.remove_accounts([name_of[i] for i, f in live.items() if f.account is not None or f.group_exists])
    with store.transaction():
        for i in live:
            name = name_of[i]
            uid = uid_of[i]
            found = swept.get(uid) if uid is not None else None
            result = {"sweep": found.as_dict()} if found else {}
            store.delete_slot(name)
            store.retire_ids([name])
            if uid is not None:
                store.retire_id(uid, name)
            store.audit(actor, "slot.remove", name, {"keep_data": keep_data, "batch": True, **removal_audit(result)})
            out[i] = Removed(name, uid_of[i], result.get("sweep"), kept.get(i))
    return out


def apply_reset_password(ctx: Context, username: str) -> str:
    """Give slot USERNAME a new generated password (shown once, only the hash is kept)."""
    rec = ctx.store.get_slot(username) if username else None
    if rec is None or rec.state == "creating":
        raise SlotError(f"no slot named {username!r}")
    password = accounts.generate_password(ctx.config.slots.password_length)
    accounts.set_password(username, password)
    ctx.store.audit(current_actor(), "slot.passwd", username, {})
    return password


def get_slot(ctx: Context, username: str) -> SlotRecord:
    rec = ctx.store.get_slot(username)
    if rec is None:
        raise SlotError(f"no slot named {username!r}")
    return rec


def slot_details(ctx: Context, rec: SlotRecord) -> dict[str, Any]:
    """The record plus live facts: disk used and cap as the kernel accounts them."""
    out = rec.as_dict()
    out["created"] = datetime.fromtimestamp(rec.created_at, UTC).isoformat(timespec="seconds")
    home = Path(rec.home)
    try:
        usage = ctx.quota.usage(rec.username, home) if home.exists() else None
    except SlotError:
        usage = None
    out["used_bytes"] = usage.used_bytes if usage else None
    out["enforced_limit_bytes"] = usage.limit_bytes if usage else None
    out.update(ctx.extensions.slot_fields(ctx, rec))
    return out
