"""No quota: homes are plain directories; any request for a cap is refused."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from provisioner.errors import BadInput
from provisioner.quota import Usage


class NoQuota:
    """Plain directories, no cap."""

    name = "none"

    def __init__(self, slots_root: Path, **_options: object) -> None:
        self.slots_root = slots_root

    def enable(self) -> None:
        """Nothing to enable."""

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
