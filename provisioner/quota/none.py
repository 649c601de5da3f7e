"""No quota: homes are plain directories; any request for a cap is refused."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from provisioner.errors import BadInput
from provisioner.quota import Usage

if TYPE_CHECKING:
    from provisioner.steps import Step
    from provisioner.store import SlotRecord


class NoQuota:
    """Plain directories, no cap."""

    name = "none"
    requirement = "anywhere"  # any filesystem will do
    loopback_fstype = None
    usage_source = "walk of the home (allocated blocks)"

    def __init__(self, slots_root: Path, **_options: object) -> None:
        self.slots_root = slots_root

    def enable(self) -> None:
        """Nothing to enable."""

    def suits(self) -> bool:
        return True

    def host_steps(self) -> list[Step]:
        return []

    def make_loopback(self, image: Path) -> None:
        raise BadInput("the quota backend 'none' makes no loopback filesystem")

    def grow_loopback(self, image: Path) -> None:
        raise BadInput("the quota backend 'none' makes no loopback filesystem")

    def bulk_usage(self, records: Sequence[SlotRecord], fresh: bool) -> dict[str, tuple[Usage | None, str]]:
        return {}  # no accounting to read: every home is walked by usage()

    def make_home(self, home: Path) -> None:
        home.mkdir(mode=0o700, exist_ok=True)

    def remove_home(self, home: Path) -> None:
        if home.exists():
            shutil.rmtree(home)

    def set_limit(self, username: str, home: Path, limit_bytes: int) -> None:
        raise BadInput("the quota backend is 'none': this host cannot enforce --quota")

    def clear_limit(self, username: str, home: Path) -> None:
        """Nothing to clear."""

    def usage(self, username: str, home: Path) -> Usage:
        total = 0
        for root, _dirs, files in os.walk(home):
            for f in files:
                try:
                    total += os.lstat(os.path.join(root, f)).st_blocks * 512
                except OSError:
                    pass
        return Usage(used_bytes=total, limit_bytes=None)

    def enforce(self, username: str, home: Path) -> list[str]:
        return []

    def problems(self, username: str, home: Path, limit_bytes: int | None) -> list[str]:
        return []
