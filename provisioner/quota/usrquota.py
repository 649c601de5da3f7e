"""usrquota backend: homes are directories on ext4/xfs mounted with ``usrquota``; ``setquota``
caps each slot user's blocks *and inodes* on that filesystem (production hosts whose kernel has
quotas). Without an inode cap a tenant fills the inode table with empty files and every other
slot on the filesystem gets "No space left on device" with its byte quota untouched: a slot
may own one inode per ``[slots] bytes_per_inode`` bytes of quota (default 16 KiB, so a 1 GiB
slot gets 65,536 files), and at least 1,024.

>>> setquota_argv("alice", "/srv", 1 << 30, 16384)
['setquota', '-u', 'alice', '0', '1048576', '0', '65536', '/srv']
>>> parse_repquota("alice     --   20480       0  102400    5 0 0")["alice"]
Usage(used_bytes=20971520, limit_bytes=104857600)
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from provisioner.errors import BadInput, SlotError
from provisioner.quota import Usage, filesystem_of, mount_of
from provisioner.runner import run

if TYPE_CHECKING:
    from provisioner.steps import Step
    from provisioner.store import SlotRecord

MIN_INODES = 1024
# Mount options that turn user quotas on.
QUOTA_OPTIONS = frozenset({"usrquota", "quota", "uquota", "usrjquota=aquota.user"})


def parse_repquota(text: str) -> dict[str, Usage]:
    """``repquota -u -p <mnt>`` (KiB blocks) -> {user: Usage}."""
    out = {}
    for line in text.splitlines():
        cols = line.split()
        if len(cols) >= 5 and cols[1] in ("--", "+-", "-+", "++") and cols[2].isdigit() and cols[4].isdigit():
            hard = int(cols[4]) * 1024
            out[cols[0]] = Usage(used_bytes=int(cols[2]) * 1024, limit_bytes=hard or None)
    return out


def inode_limit(limit_bytes: int, bytes_per_inode: int) -> int:
    """The inode cap that goes with a byte cap of LIMIT_BYTES."""
    return max(MIN_INODES, limit_bytes // max(1, bytes_per_inode))


def setquota_argv(username: str, mountpoint: str, limit_bytes: int, bytes_per_inode: int) -> list[str]:
    """The ``setquota`` command capping USERNAME at LIMIT_BYTES (hard) and its inodes (pure)."""
    kib = max(1, limit_bytes // 1024)
    return ["setquota", "-u", username, "0", str(kib), "0", str(inode_limit(limit_bytes, bytes_per_inode)),
            mountpoint]


class UserQuota:
    """Per-user block limits with the classic quota tools."""

    name = "usrquota"
    requirement = "on an ext4/xfs filesystem mounted with usrquota"
    loopback_fstype = None
    usage_source = "usrquota quota"

    def __init__(self, slots_root: Path, *, bytes_per_inode: int = 16384, **_options: object) -> None:
        self.slots_root = slots_root
        self.bytes_per_inode = bytes_per_inode

    @property
    def mountpoint(self) -> str:
        return mount_of(self.slots_root)[0]

    def enable(self) -> None:
        """Create the quota files if needed and turn quotas on (idempotent)."""
        mnt, fstype, opts = mount_of(self.slots_root)
        if not opts & QUOTA_OPTIONS:
            raise SlotError(f"{mnt} is not mounted with usrquota")
        if fstype == "ext4" and not Path(mnt, "aquota.user").exists():
            run(["quotacheck", "-cum", mnt], check=False)
        run(["quotaon", "-u", mnt], check=False)

    def suits(self) -> bool:
        _mnt, fstype, opts = filesystem_of(self.slots_root)
        return fstype in {"ext4", "xfs"} and bool(opts & QUOTA_OPTIONS)

    def host_steps(self) -> list[Step]:
        from provisioner.steps import Step

        return [Step("quota", f"turn on user quotas for {self.slots_root}", self.enable)]

    def make_loopback(self, image: Path) -> None:
        raise BadInput("the quota backend 'usrquota' makes no loopback filesystem")

    def grow_loopback(self, image: Path) -> None:
        raise BadInput("the quota backend 'usrquota' makes no loopback filesystem")

    def bulk_usage(self, records: Sequence[SlotRecord], fresh: bool) -> dict[str, tuple[Usage | None, str]]:
        """One ``repquota`` for every slot on the filesystem."""
        mnt = self.mountpoint
        table = parse_repquota(run(["repquota", "-u", "-p", mnt], check=False).stdout)
        return {r.username: (table[r.username], f"user quota on {mnt}") for r in records if r.username in table}

    def make_home(self, home: Path) -> None:
        home.mkdir(mode=0o700, exist_ok=True)

    def remove_home(self, home: Path) -> None:
        if home.exists():
            shutil.rmtree(home)

    def set_limit(self, username: str, home: Path, limit_bytes: int) -> None:
        run(setquota_argv(username, self.mountpoint, limit_bytes, self.bytes_per_inode))

    def clear_limit(self, username: str, home: Path) -> None:
        run(["setquota", "-u", username, "0", "0", "0", "0", self.mountpoint], check=False)

    def usage(self, username: str, home: Path) -> Usage:
        out = run(usage_argv(username, self.mountpoint)).stdout
        return parse_quota_output(out, self.mountpoint)

    def enforce(self, username: str, home: Path) -> list[str]:
        return []  # the kernel charges every file to its owner: nothing can escape

    def problems(self, username: str, home: Path, limit_bytes: int | None) -> list[str]:
        out = run(usage_argv(username, self.mountpoint), check=False).stdout
        return quota_problems(out, self.mountpoint, limit_bytes)


def quota_problems(text: str, mountpoint: str, limit_bytes: int | None) -> list[str]:
    """What :func:`usage_argv`'s output says lets a slot escape its limit (pure)."""
    for line in text.splitlines():
        cols = line.split()
        if cols and cols[0] == mountpoint and len(cols) >= 8:
            try:
                used, hard = int(cols[1].rstrip("*")), int(cols[3])
                files, ihard = int(cols[5].rstrip("*")), int(cols[7])
            except ValueError:
                return [f"unreadable quota report for {mountpoint}"]
            found = []
            if hard and used > hard:
                found.append(f"uses {used} KiB, above its limit of {hard} KiB")
            if limit_bytes is not None and not ihard:
                found.append("no inode limit")
            elif ihard and files > ihard:
                found.append(f"owns {files} inodes, above its limit of {ihard}")
            return found
    return ["no user quota on " + mountpoint] if limit_bytes is not None else []


def usage_argv(username: str, mountpoint: str) -> list[str]:
    """``quota`` asking for USERNAME's blocks on MOUNTPOINT only, one line per filesystem.

    ``-f`` would make every argument a filesystem (USERNAME included: "Cannot stat() given
    mountpoint"); ``--filesystem=`` names the one filesystem and leaves USERNAME a user. The
    first column is the mount point (``--show-mntpoint --hide-device``), ``-v`` prints the row
    even when the user has neither usage nor limits there.

    >>> usage_argv("alice", "/srv")[-2:]
    ['--filesystem=/srv', 'alice']
    """
    return ["quota", "-v", "-w", "-p", "-u", "--show-mntpoint", "--hide-device", f"--filesystem={mountpoint}",
            username]


def parse_quota_output(text: str, mountpoint: str) -> Usage:
    """Used and hard-limit bytes from :func:`usage_argv`'s output (1 KiB blocks); SlotError if absent.

    >>> parse_quota_output("Disk quotas for user a (uid 1):\\n  Filesystem blocks quota limit grace\\n"
    ...                    "  /srv 20* 0 100 0 5 0 0 0\\n", "/srv")
    Usage(used_bytes=20480, limit_bytes=102400)
    """
    for line in text.splitlines():
        cols = line.split()
        if cols and cols[0] == mountpoint and len(cols) >= 4:
            used_text, hard_text = cols[1].rstrip("*"), cols[3]
            if not all(t.isascii() and t.isdigit() for t in (used_text, hard_text)):
                break
            used, hard = int(used_text) * 1024, int(hard_text) * 1024
            return Usage(used_bytes=used, limit_bytes=hard or None)
    raise SlotError(f"quota reported no usage for {mountpoint}")
