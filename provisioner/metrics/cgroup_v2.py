"""cgroup v2 accounting (hosts without systemd): one directory per slot under the unified tree.

The cpu, memory and io controllers are enabled for the parent (``cgroup.subtree_control``);
each slot directory is ``root:<slot group>`` mode 0750 under a parent of mode 0711.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner.metrics import remove_cgroup_dir
from provisioner.metrics.kernel import CgroupFigures, read_cgroup_v2

if TYPE_CHECKING:
    from provisioner.metrics import MetricsConfig


class CgroupV2:
    """A directory per slot in the unified hierarchy."""

    name = "cgroup-v2"

    @staticmethod
    def detects(cgroup_root: Path) -> bool:
        """The unified hierarchy (without systemd: our own parent in it)."""
        return (cgroup_root / "cgroup.controllers").exists()

    def __init__(self, cfg: MetricsConfig) -> None:
        self.root = cfg.cgroup_root
        self.parent = self.root / cfg.cgroup_parent

    def path(self, username: str) -> Path:
        return self.parent / username

    def _enable(self, where: Path) -> None:
        available = set((where / "cgroup.controllers").read_text().split())
        wanted = [c for c in ("cpu", "memory", "io") if c in available]
        if wanted:
            (where / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))

    def create(self, username: str, gid: int) -> None:
        if not self.parent.is_dir():
            self._enable(self.root)
            self.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.parent, 0o711)  # noqa: S103 - slot names are not listable
        self._enable(self.parent)
        d = self.path(username)
        d.mkdir(exist_ok=True)
        os.chown(d, 0, gid)
        os.chmod(d, 0o750)  # noqa: S103 - the slot's group reads its own counters

    def remove(self, username: str) -> None:
        remove_cgroup_dir(self.path(username), evacuate_to=self.parent.parent)

    def spec(self, username: str, uid: int) -> dict[str, Any] | None:
        return {"kind": "v2", "path": str(self.path(username))}

    def adopt(self, username: str, uid: int, pids: Iterable[int]) -> None:
        d = self.path(username)
        if not d.is_dir():
            return
        for pid in pids:
            try:
                (d / "cgroup.procs").write_text(str(pid))
            except ProcessLookupError:
                pass

    def read(self, username: str, uid: int) -> CgroupFigures | None:
        d = self.path(username)
        return read_cgroup_v2(str(d)) if d.is_dir() else None
