"""``doctor``: compare the store with the system and report every drift.

A drift is anything an operator must look at: a slot whose create or removal was interrupted,
a slot whose user, home, owner, mode or quota is not what the store says, a slot whose usage
escapes its limit (btrfs: a subvolume in the home outside the slot's group, usage above the
limit; usrquota: no inode limit), or an account or home that looks like a slot but has no
store row. :func:`enforce_quotas` (``doctor --enforce``) brings escaped usage back under the
slot's cap first.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from provisioner import accounts
from provisioner.context import Context
from provisioner.errors import ConfigError, SlotError
from provisioner.store import SlotRecord


@dataclass(frozen=True)
class Drift:
    """One finding: the slot (or path) concerned and what is wrong."""

    subject: str
    problem: str

    def as_dict(self) -> dict[str, str]:
        return {"subject": self.subject, "problem": self.problem}


def find_drift(ctx: Context) -> list[Drift]:
    """Every difference between the store and the host."""
    found: list[Drift] = []
    root = ctx.settings.slots_root
    records = {r.username: r for r in ctx.store.list_slots()}
    for name, rec in records.items():
        if rec.state in {"creating", "removing"}:
            found.append(Drift(name, f"half-made: state is {rec.state!r}; re-run the command or "
                                     f"'slotctl slot remove {name}'"))
        acct = accounts.lookup_user(name)
        if acct is None:
            found.append(Drift(name, "no Linux user"))
        elif rec.uid is not None and acct.uid != rec.uid:
            found.append(Drift(name, f"uid is {acct.uid}, store says {rec.uid}"))
        home = Path(rec.home)
        if not home.is_dir():
            found.append(Drift(name, f"home {home} is missing"))
            continue
        st = home.stat()
        if acct is not None and st.st_uid != acct.uid:
            found.append(Drift(name, f"home {home} is owned by uid {st.st_uid}"))
        if st.st_mode & 0o777 != 0o700:
            found.append(Drift(name, f"home {home} has mode {st.st_mode & 0o777:o}, expected 700"))
        if rec.state == "active" and rec.quota_bytes is not None:
            try:
                limit = ctx.quota.usage(name, home).limit_bytes
            except SlotError as exc:
                found.append(Drift(name, f"quota unreadable: {exc}"))
            else:
                if limit != rec.quota_bytes:
                    found.append(Drift(name, f"quota is {limit}, store says {rec.quota_bytes}"))
            try:
                escapes = ctx.quota.problems(name, home, rec.quota_bytes)
            except SlotError as exc:
                escapes = [f"quota unreadable: {exc}"]
            found.extend(Drift(name, f"quota escape: {p}") for p in escapes)
    if importlib.util.find_spec("provisioner.limits") is not None:
        from provisioner.limits import drift

        found.extend(Drift(name, problem) for name, problem in drift(ctx, list(records.values())))
    for pw in pwd.getpwall():
        # Only accounts whose home is under this store's slots root are this store's business.
        if (pw.pw_gecos == accounts.SLOT_COMMENT and pw.pw_name not in records
                and Path(pw.pw_dir).parent == root):
            found.append(Drift(pw.pw_name, "Linux slot user with no store row"))
    found += id_drift(ctx, records)
    if root.is_dir():
        for entry in os.scandir(root):
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False) and entry.name not in records:
                found.append(Drift(str(root / entry.name), "directory in the slots root with no slot"))
    return found


def id_drift(ctx: Context, records: dict[str, SlotRecord]) -> list[Drift]:
    """Slot ids that break the never-twice rule or the slot range.

    A slot whose uid the id record does not hold for it, a retired id some account holds, a
    slot user with subordinate ids, and a configured range that overlaps login.defs' ranges.
    """
    found: list[Drift] = []
    slots_cfg = ctx.config.slots
    try:
        accounts.check_slot_range(slots_cfg.uid_min, slots_cfg.uid_max)
    except ConfigError as exc:
        found.append(Drift("config", str(exc)))
    ids = {r["id"]: r for r in ctx.store.slot_ids()}
    for name in records:
        acct = accounts.lookup_user(name)
        if acct is None:
            continue
        row = ids.get(acct.uid)
        if row is None or row["username"] != name or row["retired_at"] is not None:
            found.append(Drift(name, f"uid {acct.uid} is not recorded as this slot's in the slot id record"))
        elif not slots_cfg.uid_min <= acct.uid <= slots_cfg.uid_max:
            found.append(Drift(name, f"uid {acct.uid} is outside slots.uid_min..uid_max"))
    root = ctx.settings.slots_root
    for pw in pwd.getpwall():
        row = ids.get(pw.pw_uid)
        other_store = pw.pw_gecos == accounts.SLOT_COMMENT and Path(pw.pw_dir).parent != root
        if row is not None and row["retired_at"] is not None and not other_store:
            found.append(Drift(pw.pw_name, f"holds uid {pw.pw_uid}, retired from slot {row['username']!r}"))
    for path in (Path("/etc/subuid"), Path("/etc/subgid")):
        try:
            owners = {line.split(":", 1)[0] for line in path.read_text().splitlines() if line}
        except OSError:
            continue
        for name in sorted(owners & set(records)):
            found.append(Drift(name, f"slot user has subordinate ids in {path}"))
    return found
def enforce_quotas(ctx: Context) -> list[Drift]:
    """Bring every active slot's usage back under its cap; one entry per thing changed."""
    changed: list[Drift] = []
    for rec in ctx.store.list_slots():
        home = Path(rec.home)
        if rec.state != "active" or rec.quota_bytes is None or not home.is_dir():
            continue
        try:
            moved = ctx.quota.enforce(rec.username, home)
        except SlotError as exc:
            changed.append(Drift(rec.username, f"quota not enforced: {exc}"))
            continue
        changed.extend(Drift(rec.username, f"moved {m} into the slot's quota group") for m in moved)
    return changed
