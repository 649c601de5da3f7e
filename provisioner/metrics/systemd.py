"""systemd hosts: the slot's ``user-UID.slice``, which pam_systemd makes at login, is its cgroup.

systemd owns the tree, so nothing is created, removed or moved here: a login session lands in
the slice by itself, and apps should be started in it (``systemd-run --slice=user-UID.slice``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner.metrics.kernel import CgroupFigures, read_cgroup_v2

if TYPE_CHECKING:
    from provisioner.metrics import MetricsConfig


class SystemdSlices:
    """Read-only use of systemd's per-user slices (cgroup v2)."""

    name = "systemd"

    @staticmethod
    def detects(cgroup_root: Path) -> bool:
        """The unified hierarchy with systemd as PID 1 (its slices hold the slots)."""
        return (cgroup_root / "cgroup.controllers").exists() and Path("/run/systemd/system").is_dir()

    def __init__(self, cfg: MetricsConfig) -> None:
        self.root = cfg.cgroup_root

    def path(self, uid: int) -> Path:
        return self.root / "user.slice" / f"user-{uid}.slice"

    def create(self, username: str, gid: int) -> None:
        """systemd makes the slice at the first login."""

    def remove(self, username: str) -> None:
        """systemd removes the slice when the last session and process are gone."""

    def spec(self, username: str, uid: int) -> dict[str, Any] | None:
        return {"kind": "v2", "path": str(self.path(uid))}

    def adopt(self, username: str, uid: int, pids: Iterable[int]) -> None:
        """systemd owns placement; processes are never moved behind its back."""

    def read(self, username: str, uid: int) -> CgroupFigures | None:
        d = self.path(uid)
        return read_cgroup_v2(str(d)) if d.is_dir() else None
