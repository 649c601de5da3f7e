"""``doctor``: compare the store with the system and report every drift.

A drift is anything an operator must look at: a slot whose create or removal was interrupted,
a slot whose user, home, owner, mode or quota is not what the store says, or an account or
home that looks like a slot but has no store row.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from provisioner import accounts
from provisioner.context import Context
from provisioner.errors import SlotError


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
    if importlib.util.find_spec("provisioner.limits") is not None:
        from provisioner.limits import drift

        found.extend(Drift(name, problem) for name, problem in drift(ctx, list(records.values())))
    for pw in pwd.getpwall():
        # Only accounts whose home is under this store's slots root are this store's business.
        if (pw.pw_gecos == accounts.SLOT_COMMENT and pw.pw_name not in records
                and Path(pw.pw_dir).parent == root):
            found.append(Drift(pw.pw_name, "Linux slot user with no store row"))
    if root.is_dir():
        for entry in os.scandir(root):
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False) and entry.name not in records:
                found.append(Drift(str(root / entry.name), "directory in the slots root with no slot"))
    return found
