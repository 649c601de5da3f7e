"""Slots: plan and apply creation, removal and password resets.

``plan_create_slot(request, facts, ...)`` and ``plan_remove_slot(...)`` decide from facts and
touch nothing; :func:`create_slot` / :func:`remove_slot` gather the facts, plan, and apply.
A create interrupted at any point (even ``kill -9``) leaves a store row in state
``creating``: running the same create again finishes it, and ``slot remove`` cleans it.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provisioner import accounts
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
from provisioner.plan import Plan, Step, apply
from provisioner.quota import QuotaBackend
from provisioner.runner import run
from provisioner.store import SlotRecord, Store, current_actor

# Other packages (apps, metrics, lifecycle) add steps to slot changes here. A creation extension
# gets the context and the request and returns steps run after the password is set, before the
# slot is marked active; a removal extension gets the context and the slot record and returns
# steps run after the slot's processes are stopped, before the home and the user go.
CREATION_EXTENSIONS: list[Callable[[Context, SlotRequest], list[Step]]] = []
REMOVAL_EXTENSIONS: list[Callable[[Context, SlotRecord], list[Step]]] = []
# Names other packages reserve (the app catalog): callables returning a set of names.
RESERVED_NAME_SOURCES: list[Callable[[], frozenset[str]]] = []


# Packages that register extensions when imported; a package that is absent is skipped.
EXTENSION_MODULES: list[str] = ["provisioner.supervisor", "provisioner.apps", "provisioner.metrics",
                                "provisioner.lifecycle", "provisioner.hub.hostinit"]


def _load_extensions() -> None:
    """Import the optional packages that register extensions (absent ones are fine)."""
    for module in EXTENSION_MODULES:
        try:
            __import__(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def reserved_names() -> frozenset[str]:
    _load_extensions()
    names: frozenset[str] = frozenset()
    for source in RESERVED_NAME_SOURCES:
        names |= source()
    return names


@dataclass(frozen=True)
class SlotRequest:
    """A validated purchase."""

    username: str
    email: str
    country: str
    quota_bytes: int | None
    payment_ref: str | None = None
    apps: tuple[str, ...] = ()  # installed by the apps package's creation extension

    @classmethod
    def parse(
        cls,
        username: str,
        email: str,
        country: str,
        quota: str | int | None = None,
        payment_ref: str | None = None,
        apps: tuple[str, ...] = (),
    ) -> SlotRequest:
        """Validate every field; raises BadInput naming the first bad one."""
        return cls(
            username=validate_username(username, reserved_names()),
            email=validate_email(email),
            country=validate_country(country),
            quota_bytes=None if quota is None else parse_size(quota),
            payment_ref=None if payment_ref is None else validate_payment_ref(payment_ref),
            apps=tuple(dict.fromkeys(apps)),
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
) -> Plan:
    """The steps that turn REQ into a slot, given FACTS. Raises SlotError when it must not run.

    A fresh name gets every step; a name whose create was interrupted (store row ``creating``)
    gets only the steps whose result is missing.
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
        steps.append(Step("user", f"useradd {name} (private group, shell {shell}, home {home})",
                          lambda: accounts.add_user(name, home, shell),
                          lambda: accounts.delete_user(name)))
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


def create_slot(
    ctx: Context,
    username: str,
    email: str,
    country: str,
    quota: str | int | None = None,
    payment_ref: str | None = None,
    *,
    dry_run: bool = False,
    apps: tuple[str, ...] = (),
) -> Created | Plan:
    """Create (or finish creating) a slot. Returns the plan when DRY_RUN.

    On failure every step already done is undone and :class:`StepFailed` names the step.
    """
    if quota is None and ctx.settings.quota_backend != "none":
        quota = ctx.config.slots.default_quota
    req = SlotRequest.parse(username, email, country, quota, payment_ref, tuple(apps))
    _load_extensions()
    facts = SlotFacts.gather(ctx, req.username)
    if facts.account is not None and facts.account.uid < facts.uid_min:
        raise BadInput(f"username {req.username!r} is reserved (system account)")
    password = accounts.generate_password(ctx.config.slots.password_length)
    plan = plan_create_slot(
        req, facts, slots_root=ctx.settings.slots_root, quota=ctx.quota, store=ctx.store,
        shell=ctx.config.slots.shell, skeleton=ctx.config.slots.skeleton, password=password,
        extensions=[s for ext in CREATION_EXTENSIONS for s in ext(ctx, req)],
    )
    if dry_run:
        return plan
    apply(plan)
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

    def users() -> None:
        lines = "".join(f"{n}:{passwords[n]}:::{accounts.SLOT_COMMENT}:{homes[n]}:{shell}\n" for n in names)
        run(["newusers"], stdin=lines)

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


def create_many(ctx: Context, rows: list[BatchRow], batch_size: int = 200) -> list[Created | SlotError]:
    """Create a slot per row; one result per row, in order. A failing row never stops the rest.

    Rows whose name is fresh go through :func:`plan_create_batch` in chunks of BATCH_SIZE; if a
    chunk fails as a whole it is undone and its rows are retried one by one, so a bad row only
    fails itself. Rows that resume an interrupted create go through :func:`create_slot`.
    """
    _load_extensions()
    results: list[Created | SlotError | None] = [None] * len(rows)
    fresh: list[tuple[int, SlotRequest]] = []
    single: list[int] = []
    seen: set[str] = set()
    default_quota = ctx.config.slots.default_quota if ctx.settings.quota_backend != "none" else None
    for i, row in enumerate(rows):
        try:
            req = SlotRequest.parse(row.username, row.email, row.country,
                                    row.quota if row.quota is not None else default_quota, row.payment_ref)
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
        )
        try:
            apply(plan)
        except SlotError:
            single.extend(i for i, _ in chunk)
            continue
        for i, req in chunk:
            ext = [s for e in CREATION_EXTENSIONS for s in e(ctx, req)]
            try:
                if ext:
                    apply(Plan(f"finish slot {req.username}", ext))
                rec = ctx.store.get_slot(req.username)
                assert rec is not None
                results[i] = Created(rec, passwords[req.username])
            except SlotError as exc:
                remove_slot(ctx, req.username)
                results[i] = exc
    for i in sorted(single):
        row = rows[i]
        try:
            out = create_slot(ctx, row.username, row.email, row.country, row.quota, row.payment_ref)
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
) -> Plan:
    """The steps that remove slot USERNAME without trace (the audit entries stay)."""
    if not username:
        raise BadInput("username is empty")
    rec = facts.record
    if rec is None:
        raise SlotError(f"no slot named {username!r}")
    home = Path(rec.home)
    if home.parent != slots_root:
        raise SlotError(f"slot {username!r} has home {home} outside {slots_root}; refusing")
    actor = current_actor()
    steps: list[Step] = [
        Step("mark", f"mark slot {username} as being removed",
             lambda: store.update_slot(username, state="removing")),
    ]
    acct = facts.account
    if acct is not None:
        uid = acct.uid
        if uid < facts.uid_min:
            raise SlotError(f"{username!r} has system uid {uid}; refusing")

        def stop() -> None:
            accounts.stop_processes(uid)

        steps.append(Step("processes", f"stop every process of {username} (uid {uid})", stop))
    steps.extend(extensions)
    if facts.home_exists:
        steps.append(Step("quota", f"lift the quota on {home}", lambda: quota.clear_limit(username, home)))
        if keep_data:
            dest = kept_dir / f"{username}-{time.strftime('%Y%m%dT%H%M%S')}"

            def keep() -> None:
                kept_dir.mkdir(mode=0o700, exist_ok=True)
                os.rename(home, dest)
                for root, dirs, files in os.walk(dest):
                    for n in dirs + files:
                        os.lchown(os.path.join(root, n), 0, 0)
                os.chown(dest, 0, 0)
                os.chmod(dest, 0o700)
                store.add_kept_home(str(dest), username)

            steps.append(Step("keep-data", f"move {home} to {dest}, owned by root", keep))
        else:
            steps.append(Step("home", f"remove home {home} ({quota.name})", lambda: quota.remove_home(home)))
    if acct is not None or facts.group_exists:
        steps.append(Step("user", f"userdel {username} and its group", lambda: accounts.delete_user(username)))

    def forget() -> None:
        with store.transaction():
            store.delete_slot(username)
            store.audit(actor, "slot.remove", username, {"keep_data": keep_data})

    steps.append(Step("forget", f"delete the store rows of {username} (audit kept)", forget))
    return Plan(f"remove slot {username}", steps)


def remove_slot(ctx: Context, username: str, *, keep_data: bool = False, dry_run: bool = False) -> Plan:
    """Remove slot USERNAME (exact name). Returns the plan (applied unless DRY_RUN)."""
    if not isinstance(username, str) or not username:
        raise BadInput("username is empty")
    if "/" in username or "\x00" in username or username in {".", ".."}:
        raise BadInput(f"username {username!r} is invalid")
    facts = SlotFacts.gather(ctx, username)
    rec = facts.record
    _load_extensions()
    extensions = [s for ext in REMOVAL_EXTENSIONS for s in ext(ctx, rec)] if rec else []
    plan = plan_remove_slot(
        username, facts, slots_root=ctx.settings.slots_root, quota=ctx.quota, store=ctx.store,
        keep_data=keep_data, extensions=extensions, kept_dir=ctx.settings.slots_root / ".kept",
    )
    if not dry_run:
        apply(plan)
    return plan


def reset_password(ctx: Context, username: str) -> str:
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
    return out
