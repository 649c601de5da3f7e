"""usrquota backend: homes are directories on ext4/xfs mounted with ``usrquota``; ``setquota``
caps each slot user's blocks on that filesystem (production hosts whose kernel has quotas)."""

from __future__ import annotations

import shutil
from pathlib import Path

from provisioner.errors import SlotError
from provisioner.quota import Usage, mount_of
from provisioner.runner import run


class UserQuota:
    """Per-user block limits with the classic quota tools."""

    name = "usrquota"

    def __init__(self, slots_root: Path) -> None:
        self.slots_root = slots_root

    @property
    def mountpoint(self) -> str:
        return mount_of(self.slots_root)[0]

    def enable(self) -> None:
        """Create the quota files if needed and turn quotas on (idempotent)."""
        mnt, fstype, opts = mount_of(self.slots_root)
        if not opts & {"usrquota", "quota", "uquota", "usrjquota=aquota.user"}:
            raise SlotError(f"{mnt} is not mounted with usrquota")
        if fstype == "ext4" and not Path(mnt, "aquota.user").exists():
            run(["quotacheck", "-cum", mnt], check=False)
        run(["quotaon", "-u", mnt], check=False)

    def make_home(self, home: Path) -> None:
        home.mkdir(mode=0o700, exist_ok=True)

    def remove_home(self, home: Path) -> None:
        if home.exists():
            shutil.rmtree(home)

    def set_limit(self, username: str, home: Path, limit_bytes: int) -> None:
        kib = max(1, limit_bytes // 1024)
        run(["setquota", "-u", username, "0", str(kib), "0", "0", self.mountpoint])

    def clear_limit(self, username: str, home: Path) -> None:
        run(["setquota", "-u", username, "0", "0", "0", "0", self.mountpoint], check=False)

    def usage(self, username: str, home: Path) -> Usage:
        out = run(["quota", "-w", "-p", "-u", username, "-f", self.mountpoint], check=False).stdout
        for line in out.splitlines():
            cols = line.split()
            if cols and cols[0] == self.mountpoint and len(cols) >= 4:
                used, hard = int(cols[1].rstrip("*")) * 1024, int(cols[3]) * 1024
                return Usage(used_bytes=used, limit_bytes=hard or None)
        return Usage(used_bytes=0, limit_bytes=None)
