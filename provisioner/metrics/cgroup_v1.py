"""cgroup v1 accounting: one directory per slot under the cpuacct, memory, blkio and pids hierarchies.

Each slot directory is ``root:<slot group>`` mode 0750 (the tenant reads its own counters;
no other tenant can even list its process ids) under a parent of mode 0711 (slot names are not
listable). Memory charges follow a process that is moved in (``move_charge_at_immigrate``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner.metrics import remove_cgroup_dir
from provisioner.metrics.kernel import CgroupFigures, read_cgroup_v1

if TYPE_CHECKING:
    from provisioner.metrics import MetricsConfig

CONTROLLERS = ("cpuacct", "memory", "blkio", "pids")


class CgroupV1:
    """A cgroup directory per slot in each v1 hierarchy this host mounts."""

    name = "cgroup-v1"

    @staticmethod
    def detects(cgroup_root: Path) -> bool:
        """The v1 cpuacct and memory hierarchies are mounted."""
        return all((cgroup_root / c / "cgroup.procs").exists() for c in ("cpuacct", "memory"))

    def __init__(self, cfg: MetricsConfig) -> None:
        self.root = cfg.cgroup_root
        self.parent = cfg.cgroup_parent
        self.controllers = [c for c in CONTROLLERS if (self.root / c / "cgroup.procs").exists()]
        # Plain strings: a scrape of 500 slots builds these thousands of times.
        self._bases = {c: f"{self.root}/{c}/{self.parent}/" for c in self.controllers}

    def paths(self, username: str) -> dict[str, str]:
        return {c: base + username for c, base in self._bases.items()}

    def dirs(self, username: str) -> dict[str, Path]:
        return {c: Path(p) for c, p in self.paths(username).items()}

    def create(self, username: str, gid: int) -> None:
        for ctrl, d in self.dirs(username).items():
            parent = d.parent
            if not parent.is_dir():
                parent.mkdir(parents=True, exist_ok=True)
            os.chmod(parent, 0o711)  # noqa: S103 - slot names are not listable
            d.mkdir(exist_ok=True)
            if ctrl == "memory":
                try:
                    (d / "memory.move_charge_at_immigrate").write_text("3")
                except OSError:
                    pass  # newer kernels drop the knob; charges then stay where they were made
            os.chown(d, 0, gid)
            os.chmod(d, 0o750)  # noqa: S103 - the slot's group reads its own counters

    def remove(self, username: str) -> None:
        for d in self.dirs(username).values():
            remove_cgroup_dir(d, evacuate_to=d.parent)

    def spec(self, username: str, uid: int) -> dict[str, Any] | None:
        if "memory" not in self.controllers or "cpuacct" not in self.controllers:
            return None
        return {"kind": "v1", "paths": self.paths(username)}

    def adopt(self, username: str, uid: int, pids: Iterable[int]) -> None:
        paths = self.paths(username)
        if not os.path.isdir(paths.get("memory", "")):
            return
        for pid in pids:
            for d in paths.values():
                try:
                    with open(f"{d}/cgroup.procs", "w") as f:
                        f.write(str(pid))
                except ProcessLookupError:
                    break

    def read(self, username: str, uid: int) -> CgroupFigures | None:
        spec = self.spec(username, uid)
        if spec is None or not os.path.isdir(spec["paths"]["memory"]):
            return None
        return read_cgroup_v1(spec["paths"])
