"""Disk quota backends: one file per backend, picked by name through :data:`BACKENDS`.

A backend owns how a slot's home comes into being and how its size is capped:

- ``btrfs``: the home is a subvolume, capped by a qgroup limit (works on kernels without
  classic quota support, like this project's CI machines);
- ``usrquota``: the home is a directory on an ext4/xfs filesystem mounted with ``usrquota``,
  capped by ``setquota`` (production hosts);
- ``none``: a plain directory, no cap (refuses ``--quota``).

Each backend also owns what the rest of the provisioner must not know by name: whether the
filesystem under the slots root suits it (:func:`detect_backend` asks them in map order, the
first that fits wins), the steps ``host init`` needs for it (:meth:`QuotaBackend.host_steps`),
whether it can build a loopback filesystem for ``--loopback-image``, and every slot's usage in
one pass for the metrics (:meth:`QuotaBackend.bulk_usage`). A new backend is a new file and
one line in :data:`BACKENDS`; callers that take a map (``backends=``) let tests add a fake one.

>>> sorted(BACKENDS)
['btrfs', 'none', 'usrquota']
>>> loopback_backends()
['btrfs']
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from provisioner.errors import BadInput

if TYPE_CHECKING:
    from provisioner.steps import Step
    from provisioner.store import SlotRecord

# name -> "module:Class", imported on first use. Order is detection order: ``none`` fits any
# filesystem, so it comes last.
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
    # What the slots root's filesystem must be, for errors: "{root} is not <requirement>".
    requirement: str
    # The filesystem ``host init --loopback-image`` makes for this backend (None: it cannot).
    loopback_fstype: str | None
    # Where a figure from :meth:`usage` comes from, as the metrics label it.
    usage_source: str

    def suits(self) -> bool:
        """Whether the filesystem under the slots root lets this backend cap slots (no change)."""

    def host_steps(self) -> list[Step]:
        """What ``host init`` must do so the backend can cap slots under its root (empty: ready)."""

    def make_loopback(self, image: Path) -> None:
        """Make the backend's filesystem in the (sized, empty) file IMAGE (``loopback_fstype``)."""

    def grow_loopback(self, image: Path) -> None:
        """Let the filesystem mounted on the slots root from IMAGE use the image's new size."""

    def bulk_usage(self, records: Sequence[SlotRecord], fresh: bool) -> dict[str, tuple[Usage | None, str]]:
        """{username: (usage, source)} for as many RECORDS as one pass over the filesystem gives
        (the caller asks :meth:`usage` for the rest); FRESH commits pending writes first."""

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


def _backend_class(name: str, backends: Mapping[str, str]) -> type:
    if name not in backends:
        raise BadInput(f"unknown quota backend {name!r}; choose one of {', '.join(sorted(backends))}")
    module_name, _, cls_name = backends[name].partition(":")
    cls: type = getattr(importlib.import_module(module_name), cls_name)
    return cls


def load_backend(name: str, slots_root: Path, *, bytes_per_inode: int = 16384,
                 backends: Mapping[str, str] = BACKENDS) -> QuotaBackend:
    """Instantiate the backend NAME of BACKENDS for SLOTS_ROOT (no I/O).

    BYTES_PER_INODE (``[slots] bytes_per_inode``): backends that cap files as well as bytes
    (usrquota) allow one inode per that many bytes of quota.
    """
    backend: QuotaBackend = _backend_class(name, backends)(slots_root, bytes_per_inode=bytes_per_inode)
    return backend


def backend_choices(backends: Mapping[str, str] = BACKENDS) -> str:
    """What an operator may name, for errors.

    >>> backend_choices({"btrfs": "", "none": ""})
    'auto, btrfs or none'
    """
    names = ["auto", *backends]
    return f"{', '.join(names[:-1])} or {names[-1]}"


def loopback_backends(backends: Mapping[str, str] = BACKENDS) -> list[str]:
    """The backends that can make their own filesystem in a loopback image, in map order."""
    return [n for n in backends if getattr(_backend_class(n, backends), "loopback_fstype", None)]


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


def filesystem_of(path: Path) -> tuple[str, str, set[str]]:
    """:func:`mount_of` the nearest existing ancestor of PATH (a slots root not made yet)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return mount_of(probe)


def detect_backend(slots_root: Path, backends: Mapping[str, str] = BACKENDS) -> str:
    """The first backend of BACKENDS that the filesystem under SLOTS_ROOT suits."""
    for name in backends:
        if load_backend(name, slots_root, backends=backends).suits():
            return name
    raise BadInput(f"no quota backend suits the filesystem under {slots_root}")


def same_filesystem(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev
