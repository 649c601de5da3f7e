"""btrfs backend: each home is a subvolume in a level-1 qgroup of its own, which carries the limit.

A tenant can make subvolumes and snapshots in its home (the kernel allows it to anyone who
may write the directory), and each gets a level-0 qgroup of its own. So the cap is not on
the home's ``0/ID`` but on the slot's group ``1/ID`` (ID: the home's subvolume id), which the
home joins when it is made, before the tenant owns it:

- with **simple quotas** (kernel 6.7+, what ``enable`` turns on where the kernel has them), a
  subvolume or snapshot made the ordinary way joins the groups of the subvolume it is made in:
  ``btrfs subvolume create ~/s`` lands in ``1/ID`` and counts against the slot;
- a tenant can still pass its own (empty) inherit list, and kernels without simple quotas
  never inherit: :meth:`BtrfsQuota.enforce` finds every subvolume nested in a home that is not
  in the home's group and puts it there (usage moves with it, so a slot over its cap is
  stopped), and :meth:`BtrfsQuota.problems` (``doctor``) reports it meanwhile.

Every decision rests on numbers read from the kernel's trees (:mod:`btrfs_tree`), never on
subvolume paths, which the tenant names. Every command names exactly the qgroups of the slot
at hand: nothing here runs ``qgroup clear-stale``, which drops *any* qgroup whose subvolume it
does not see yet — another slot's, created a moment ago (the cause of "unable to limit
requested quota group: No such file or directory" under concurrent creates and removals).

Removal deletes the nested subvolumes deepest first, by id (no path inside the home is
walked), then the home, and destroys exactly their qgroups and the slot's group (waiting out
the commit that frees their extents where the kernel still counts them): a leftover limit
must never follow a name or an id.
"""

from __future__ import annotations

import errno
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from provisioner.errors import SlotError
from provisioner.quota import Usage, filesystem_of, mount_of
from provisioner.quota.btrfs_tree import (
    NO_LIMIT,
    QuotaFacts,
    create_subvolume,
    enable_quota,
    is_subvolume_root,
    qgroup_change,
    qgroup_name,
    qgroupid,
    quota_mode,
    read_facts,
    read_slot_facts,
    simple_quota_supported,
    subvolume_id,
)
from provisioner.runner import run

if TYPE_CHECKING:
    from provisioner.steps import Step
    from provisioner.store import SlotRecord


class BtrfsQuota:
    """Subvolume-per-slot homes, capped by a level-1 qgroup per slot."""

    name = "btrfs"
    requirement = "on btrfs"
    loopback_fstype = "btrfs"
    usage_source = "btrfs quota"

    def __init__(self, slots_root: Path, **_options: object) -> None:
        self.slots_root = slots_root

    @property
    def mountpoint(self) -> str:
        return mount_of(self.slots_root)[0]

    def enable(self) -> None:
        """Turn on quota accounting (idempotent): simple quotas where the kernel has them."""
        mnt = Path(self.mountpoint)
        if quota_mode(mnt) != "disabled":
            return
        enable_quota(mnt, simple=simple_quota_supported())

    def suits(self) -> bool:
        return filesystem_of(self.slots_root)[1] == "btrfs"

    def quota_on(self) -> bool:
        """The slots root is a btrfs filesystem with quota accounting on."""
        root = self.slots_root
        return (root.exists() and mount_of(root)[1] == "btrfs"
                and run(["btrfs", "qgroup", "show", str(root)], check=False).returncode == 0)

    def host_steps(self) -> list[Step]:
        from provisioner.steps import Step

        if self.quota_on():
            return []
        return [Step("quota", f"enable btrfs quota accounting on {self.slots_root}", self.enable)]

    def make_loopback(self, image: Path) -> None:
        run(["mkfs.btrfs", "-q", str(image)])

    def grow_loopback(self, image: Path) -> None:
        loops = run(["losetup", "-j", str(image)]).stdout.split(":", 1)[0]
        if loops:
            run(["losetup", "-c", loops])
            run(["btrfs", "filesystem", "resize", "max", str(self.slots_root)])

    def bulk_usage(self, records: Sequence[SlotRecord], fresh: bool) -> dict[str, tuple[Usage | None, str]]:
        """Every slot's qgroup from one read of the quota tree; no command per slot."""
        mnt = self.mountpoint
        if fresh:
            # qgroup figures move at transaction commit (every 30 s by default): commit now, so a
            # file just written shows up.
            run(["btrfs", "filesystem", "sync", mnt], check=False)
        # Numbers from the kernel's trees, and each home's subvolume id by ioctl on the home
        # itself: never `subvolume list`, whose paths tenants name (a newline forges a line).
        facts = read_facts(Path(mnt))
        out: dict[str, tuple[Usage | None, str]] = {}
        for rec in records:
            try:
                sid = subvolume_id(Path(rec.home)) if is_subvolume_root(Path(rec.home)) else None
            except SlotError:
                sid = None
            if sid is None:
                continue
            for level in (1, 0):  # the slot's group carries the cap; a home from before groups, its own
                q = qgroupid(level, sid)
                if q in facts.referenced:
                    out[rec.username] = (Usage(facts.referenced[q], facts.max_referenced.get(q)),
                                         f"btrfs qgroup {level}/{sid}")
                    break
        return out

    def is_subvolume(self, home: Path) -> bool:
        return is_subvolume_root(home)

    def subvolume_id(self, home: Path) -> int:
        """The id of the subvolume HOME is the top of (by ioctl; refuses a plain directory)."""
        if not is_subvolume_root(home):
            raise SlotError(f"{home} is not a slot subvolume")
        return subvolume_id(home)

    def group_of(self, home: Path) -> str:
        """The slot's level-1 qgroup: ``1/<the home's subvolume id>``."""
        return f"1/{self.subvolume_id(home)}"

    def _qgroup(self, op: str, *args: int, ok: tuple[int, ...] = ()) -> None:
        """One qgroup change (by ioctl, see :func:`qgroup_change`); an errno in OK is fine."""
        try:
            qgroup_change(Path(self.mountpoint), op, *args)
        except OSError as exc:
            if exc.errno not in ok:
                names = " ".join(qgroup_name(a) for a in (args if op != "limit" else args[:1]))
                raise SlotError(f"btrfs qgroup {op} {names}: {exc.strerror}") from None

    def _join_group(self, sid: int) -> None:
        """Make sure the group 1/SID exists and the home's 0/SID is in it."""
        self._qgroup("create", qgroupid(1, sid), ok=(errno.EEXIST,))
        # No rescan: a fresh (or squota) subvolume is accounted at once; a rescan is
        # filesystem-wide and no operation on one slot may touch the others.
        self._qgroup("assign", qgroupid(0, sid), qgroupid(1, sid), ok=(errno.EEXIST,))

    def make_home(self, home: Path) -> None:
        if self.is_subvolume(home):
            self._join_group(self.subvolume_id(home))
            return
        if home.exists():
            raise SlotError(f"{home} exists and is not a slot subvolume")
        create_subvolume(home.parent, home.name)
        self._join_group(self.subvolume_id(home))

    def remove_home(self, home: Path) -> None:
        if not home.exists():
            return
        if not self.is_subvolume(home):
            shutil.rmtree(home)
            return
        sid = self.subvolume_id(home)
        facts = read_slot_facts(Path(self.mountpoint), sid)
        nested = facts.descendants(sid)
        mnt = self.mountpoint
        for child in nested:  # deepest first: a subvolume holding another cannot be deleted
            run(["btrfs", "subvolume", "delete", "--subvolid", str(child), mnt])
        run(["btrfs", "subvolume", "delete", "--commit-after", "--subvolid", str(sid), mnt])
        self._drop_groups(sid, facts, nested)

    def remove_homes(self, homes: list[Path]) -> None:
        """Remove many homes with one transaction commit (``slot remove-many``).

        Each home's nested subvolumes go first (by id, deepest first), then every home in one
        ``btrfs subvolume delete --commit-after``, then exactly each slot's qgroups, as
        :meth:`remove_home` does one by one. A home this cannot take in the batch (a plain
        directory, a delete refused) goes through :meth:`remove_home`.
        """
        mnt = self.mountpoint
        batch: dict[Path, tuple[int, QuotaFacts, list[int]]] = {}
        for home in homes:
            if home.exists() and not home.is_symlink() and self.is_subvolume(home):
                sid = self.subvolume_id(home)
                facts = read_slot_facts(Path(mnt), sid)
                batch[home] = (sid, facts, facts.descendants(sid))
            else:
                self.remove_home(home)
        for _sid, _facts, nested in batch.values():
            for child in nested:
                run(["btrfs", "subvolume", "delete", "--subvolid", str(child), mnt])
        if batch:
            done = run(["btrfs", "subvolume", "delete", "--commit-after", *map(str, batch)], check=False)
            if done.returncode != 0:
                for home in [h for h in batch if h.exists()]:
                    del batch[home]
                    self.remove_home(home)
        for sid, facts, nested in batch.values():
            self._drop_groups(sid, facts, nested)

    def _drop_groups(self, sid: int, facts: QuotaFacts, nested: list[int]) -> None:
        """Destroy the qgroups of a removed home SID (and its NESTED subvolumes) and its group."""
        ours = {qgroupid(0, s) for s in [*nested, sid]}
        group = qgroupid(1, sid)
        for member in sorted(facts.members(group) - ours):
            if (member & ((1 << 48) - 1)) in facts.parents:
                # A living subvolume of someone else's, charged to this group by its own inherit
                # list: it leaves the group; its qgroup is not ours to destroy.
                self._qgroup("remove", member, group, ok=(errno.ENOENT,))
            else:
                ours.add(member)  # the qgroup of a subvolume the tenant deleted itself
        for q in sorted(ours):
            self._destroy(q)
        self._destroy(group)

    def _destroy(self, qgroup: int, attempts: int = 100) -> None:
        """Destroy QGROUP (absent is fine), waiting out the kernel's last accounting of it.

        A dropped subvolume's qgroup still holds usage until the transaction that frees its
        extents commits (EBUSY meanwhile): commit and try again.
        """
        for _ in range(attempts - 1):
            try:
                qgroup_change(Path(self.mountpoint), "destroy", qgroup)
                return
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    return
                if exc.errno != errno.EBUSY:
                    raise SlotError(f"btrfs qgroup destroy {qgroup_name(qgroup)}: {exc.strerror}") from None
            run(["btrfs", "filesystem", "sync", self.mountpoint], check=False)
            time.sleep(0.05)
        self._qgroup("destroy", qgroup, ok=(errno.ENOENT,))

    def _limit(self, home: Path, limit: int) -> None:
        # The group by id, on the mount point: a change started in the home's own subvolume is
        # refused with "Disk quota exceeded" when the slot is at or over its limit — and then
        # neither a larger plan nor removal could lift it.
        sid = self.subvolume_id(home)
        try:
            qgroup_change(Path(self.mountpoint), "limit", qgroupid(1, sid), limit)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise SlotError(f"btrfs qgroup limit 1/{sid}: {exc.strerror}") from None
            self._adopt_home(sid)  # a home made before slots had groups
            self._qgroup("limit", qgroupid(1, sid), limit)

    def _adopt_home(self, sid: int) -> None:
        """Give a home made before slots had groups its group, and move its old 0/SID cap there."""
        old = read_slot_facts(Path(self.mountpoint), sid).max_referenced.get(qgroupid(0, sid))
        self._join_group(sid)
        if old is not None:
            self._qgroup("limit", qgroupid(1, sid), old)
            self._qgroup("limit", qgroupid(0, sid), NO_LIMIT)

    def set_limit(self, username: str, home: Path, limit_bytes: int) -> None:
        self._limit(home, limit_bytes)
        self.enforce(username, home)

    def clear_limit(self, username: str, home: Path) -> None:
        if self.is_subvolume(home):
            self._limit(home, NO_LIMIT)

    def usage(self, username: str, home: Path) -> Usage:
        sid = self.subvolume_id(home)
        facts = read_slot_facts(Path(self.mountpoint), sid)
        group = qgroupid(1, sid)
        if group in facts.referenced:
            return Usage(facts.referenced[group], facts.max_referenced.get(group))
        if qgroupid(0, sid) in facts.referenced:  # a home from before slots had groups
            leaf = qgroupid(0, sid)
            return Usage(facts.referenced[leaf], facts.max_referenced.get(leaf))
        raise SlotError(f"no qgroup 1/{sid} or 0/{sid} for {home}")

    def escaped(self, home: Path, facts: QuotaFacts | None = None) -> list[int]:
        """Subvolume ids of HOME (itself and nested ones) whose qgroup is not in the slot's group."""
        sid = self.subvolume_id(home)
        facts = facts or read_slot_facts(Path(self.mountpoint), sid)
        group = qgroupid(1, sid)
        return [s for s in [sid, *facts.descendants(sid)]
                if group not in facts.memberships.get(qgroupid(0, s), set())]

    def enforce(self, username: str, home: Path) -> list[str]:
        """Put every subvolume nested in HOME into the slot's group; return what was moved.

        A nested subvolume a tenant put into another group (another slot's, by an explicit
        inherit) leaves that group first: it must count against its own slot and no other.
        """
        sid = self.subvolume_id(home)
        facts = read_slot_facts(Path(self.mountpoint), sid)
        moved: list[str] = []
        for s in self.escaped(home, facts):
            for other in sorted(facts.memberships.get(qgroupid(0, s), set())):
                self._qgroup("remove", qgroupid(0, s), other, ok=(errno.ENOENT,))
            if s == sid:
                self._adopt_home(sid)
            else:
                self._qgroup("assign", qgroupid(0, s), qgroupid(1, sid), ok=(errno.EEXIST,))
            moved.append(f"0/{s}")
        return moved

    def problems(self, username: str, home: Path, limit_bytes: int | None) -> list[str]:
        """What lets this slot's usage escape its limit (for ``doctor``), one line each."""
        sid = self.subvolume_id(home)
        facts = read_slot_facts(Path(self.mountpoint), sid)
        group = qgroupid(1, sid)
        found: list[str] = []
        if group not in facts.referenced:
            found.append(f"no group 1/{sid}: the limit covers the home only, not subvolumes in it")
        else:
            outside = [f"0/{s}" for s in self.escaped(home, facts)]
            if outside:
                found.append(f"subvolumes outside the slot's group 1/{sid}: {', '.join(outside)} "
                             "('slotctl doctor --enforce' puts them in)")
            nested = {qgroupid(0, s) for s in [sid, *facts.descendants(sid)]}
            foreign = sorted(q for q in facts.members(group) if q not in nested)
            if foreign:
                found.append(f"group 1/{sid} holds qgroups of other subvolumes: "
                             f"{', '.join(qgroup_name(q) for q in foreign)}")
            used, limit = facts.referenced[group], facts.max_referenced.get(group)
            if limit is not None and used > limit:
                found.append(f"uses {used} bytes, above its limit of {limit}")
            if limit_bytes is not None and limit is None:
                found.append(f"group 1/{sid} has no limit")
        return found


def qgroup_ids(slots_root: Path) -> set[str]:
    """Every qgroup of the filesystem, level 0 and 1 (for leak checks)."""
    out = run(["btrfs", "qgroup", "show", "--raw", str(slots_root)]).stdout
    return set(re.findall(r"^([01]/\d+)\s", out, re.M))
