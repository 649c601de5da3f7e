"""btrfs backend: each home is a subvolume, capped by a qgroup limit on its referenced bytes.

Removal deletes the subvolume *and* destroys its qgroup: btrfs keeps a stale qgroup after a
subvolume is deleted, and a leftover limit must never follow a name or an id.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from provisioner.errors import SlotError
from provisioner.quota import Usage, mount_of
from provisioner.runner import run


class BtrfsQuota:
    """Subvolume-per-slot homes with qgroup limits."""

    name = "btrfs"

    def __init__(self, slots_root: Path) -> None:
        self.slots_root = slots_root

    def enable(self) -> None:
        """Turn on quota accounting for the filesystem (idempotent)."""
        run(["btrfs", "quota", "enable", str(self.slots_root)])

    def is_subvolume(self, home: Path) -> bool:
        return home.is_dir() and run(["btrfs", "subvolume", "show", str(home)], check=False).returncode == 0

    def subvolume_id(self, home: Path) -> int:
        out = run(["btrfs", "inspect-internal", "rootid", str(home)]).stdout
        return int(out.strip())

    def make_home(self, home: Path) -> None:
        if self.is_subvolume(home):
            return
        if home.exists():
            raise SlotError(f"{home} exists and is not a slot subvolume")
        run(["btrfs", "subvolume", "create", str(home)])

    def remove_home(self, home: Path) -> None:
        if not home.exists():
            return
        if not self.is_subvolume(home):
            shutil.rmtree(home)
            return
        qgroup = f"0/{self.subvolume_id(home)}"
        run(["btrfs", "subvolume", "delete", "--commit-after", str(home)])
        self._destroy_qgroup(qgroup)

    def remove_homes(self, homes: list[Path]) -> None:
        """Remove many homes with one transaction commit (``slot remove-many``).

        The subvolumes go in one ``btrfs subvolume delete --commit-after``; then the qgroups of
        exactly those subvolumes that the kernel has not dropped by itself are destroyed. Any
        home this cannot handle (not a subvolume of this mount, a delete refused) goes through
        :meth:`remove_home`, one by one.
        """
        mnt = mount_of(self.slots_root)[0]
        listed: dict[str, int] = {}
        for line in run(["btrfs", "subvolume", "list", mnt]).stdout.splitlines():
            m = re.match(r"ID (\d+) gen \d+ top level \d+ path (.+)$", line)
            if m:
                listed[m.group(2)] = int(m.group(1))
        ids: dict[Path, int] = {}
        for home in homes:
            rel = str(home.relative_to(mnt)) if home.is_relative_to(mnt) else None
            if rel is not None and rel in listed and home.is_dir() and not home.is_symlink():
                ids[home] = listed[rel]
        if ids:
            done = run(["btrfs", "subvolume", "delete", "--commit-after", *map(str, ids)], check=False)
            if done.returncode != 0:
                ids = {h: i for h, i in ids.items() if not h.exists()}
        for home in homes:
            if home not in ids:
                self.remove_home(home)
        if not ids:
            return
        run(["btrfs", "subvolume", "sync", mnt, *map(str, ids.values())], check=False)
        left = qgroup_ids(self.slots_root) & {f"0/{i}" for i in ids.values()}
        for qgroup in sorted(left):
            self._destroy_qgroup(qgroup)

    def _destroy_qgroup(self, qgroup: str) -> None:
        mnt = mount_of(self.slots_root)[0]
        if run(["btrfs", "qgroup", "destroy", qgroup, mnt], check=False).returncode == 0:
            return
        # The kernel may still count the deleted subvolume's extents against the qgroup until
        # the cleaner runs; clear-stale drops every qgroup whose subvolume is gone.
        run(["btrfs", "subvolume", "sync", mnt], check=False)
        run(["btrfs", "qgroup", "clear-stale", mnt], check=False)

    def _limit(self, home: Path, limit: str) -> None:
        # The qgroup by id, on the mount point: given the home's path, btrfs starts the change's
        # transaction in the home's own subvolume, which a slot at or over its limit refuses with
        # "Disk quota exceeded" — and then neither a larger plan nor removal could lift it.
        qgroup = f"0/{self.subvolume_id(home)}"
        run(["btrfs", "qgroup", "limit", limit, qgroup, mount_of(self.slots_root)[0]])

    def set_limit(self, username: str, home: Path, limit_bytes: int) -> None:
        self._limit(home, str(limit_bytes))

    def clear_limit(self, username: str, home: Path) -> None:
        if self.is_subvolume(home):
            self._limit(home, "none")

    def usage(self, username: str, home: Path) -> Usage:
        qgroup = f"0/{self.subvolume_id(home)}"
        out = run(["btrfs", "qgroup", "show", "-reF", "--raw", str(home)]).stdout
        for line in out.splitlines():
            cols = line.split()
            if cols and cols[0] == qgroup:
                limit = None if cols[3] == "none" else int(cols[3])
                return Usage(used_bytes=int(cols[1]), limit_bytes=limit)
        raise SlotError(f"no qgroup {qgroup} for {home}")


def qgroup_ids(slots_root: Path) -> set[str]:
    """Every level-0 qgroup of the filesystem (for leak checks)."""
    out = run(["btrfs", "qgroup", "show", "--raw", str(slots_root)]).stdout
    return set(re.findall(r"^(0/\d+)\s", out, re.M))
