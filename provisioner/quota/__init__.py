"""Disk quota backends: one file per backend, picked by name through :data:`BACKENDS`.

A backend owns how a slot's home comes into being and how its size is capped:

- ``btrfs``: the home is a subvolume, capped by a qgroup limit (works on kernels without
  classic quota support, like this project's CI machines);
- ``usrquota``: the home is a directory on an ext4/xfs filesystem mounted with ``usrquota``,
  capped by ``setquota`` (production hosts);
- ``none``: a plain directory, no cap (refuses ``--quota``).

>>> sorted(BACKENDS)
['btrfs', 'none', 'usrquota']
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from provisioner.errors import BadInput

BACKENDS: dict[str, str] = {
    "btrfs": "provisioner.quota.btrfs:BtrfsQuota",
    "usrquota": "provisioner.quota.usrquota:UserQuota",
    "none": "provisioner.quota.none:NoQuota",
}


@dataclass(frozen=True)
class Usage:
    """Bytes a slot uses and its cap (None: no cap)."""

    used_bytes: int
    limit_bytes: int | None


class QuotaBackend(Protocol):
    """What every quota backend provides. Every method is idempotent."""

    name: str

    def enable(self) -> None:
        """Prepare the filesystem for caps (idempotent); called by ``host init``."""

    def make_home(self, home: Path) -> None:
        """Create the empty home (directory or subvolume)."""

    def remove_home(self, home: Path) -> None:
        """Remove the home and everything the backend attached to it; absent is fine."""

    def set_limit(self, username: str, home: Path, limit_bytes: int) -> None:
        """Cap the slot at LIMIT_BYTES, enforced by the kernel."""

    def clear_limit(self, username: str, home: Path) -> None:
        """Lift the cap, so a later owner of the same UID or path inherits nothing."""

    def usage(self, username: str, home: Path) -> Usage:
        """Bytes used and the cap as the kernel accounts them."""

    def enforce(self, username: str, home: Path) -> list[str]:
        """Bring everything the tenant made under its cap again (btrfs: nested subvolumes into
        the slot's group); return what was changed, one item each."""

    def problems(self, username: str, home: Path, limit_bytes: int | None) -> list[str]:
        """Whatever lets the slot's usage escape its limit, one line each (for ``doctor``)."""


def load_backend(name: str, slots_root: Path, *, bytes_per_inode: int = 16384) -> QuotaBackend:
    """Instantiate the backend NAME for SLOTS_ROOT.

    BYTES_PER_INODE (``[slots] bytes_per_inode``): backends that cap files as well as bytes
    (usrquota) allow one inode per that many bytes of quota.
    """
    if name not in BACKENDS:
        raise BadInput(f"unknown quota backend {name!r}; choose one of {', '.join(sorted(BACKENDS))}")
    module_name, _, cls_name = BACKENDS[name].partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    backend: QuotaBackend = cls(slots_root, bytes_per_inode=bytes_per_inode)
    return backend


def mount_of(path: Path) -> tuple[str, str, set[str]]:
    """(mountpoint, fstype, options) of the filesystem holding PATH, from /proc/self/mounts."""
    path = path.resolve()
    best = ("/", "", set[str]())
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        mnt = parts[1].replace("\\040", " ")
        if (str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
            best = (mnt, parts[2], set(parts[3].split(",")))
    return best


def detect_backend(slots_root: Path) -> str:
    """The backend the filesystem under SLOTS_ROOT supports: btrfs, usrquota, or none."""
    probe = slots_root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    _mnt, fstype, opts = mount_of(probe)
    if fstype == "btrfs":
        return "btrfs"
    if fstype in {"ext4", "xfs"} and opts & {"usrquota", "quota", "uquota", "usrjquota=aquota.user"}:
        return "usrquota"
    return "none"


def same_filesystem(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev
