"""What every limits backend shares: the protocol, the slot's block device, the host's size.

A backend turns a slot's :class:`~provisioner.config.ResourceLimits` into kernel settings
(``apply``), says which limits this host cannot enforce and why (``missing``), reads back what
the kernel enforces now (``read``, for ``doctor``), and tells a supervisor where a slot's
program must run (``placement``).

>>> kernel_units_differ({"pids/pids.max": "64"}, {"pids/pids.max": "64"})
[]
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from provisioner.config import ResourceLimits
from provisioner.errors import SlotError

# Why a plan's tmp_size is refused under systemd: app units get systemd's PrivateTmp= on the
# host's /tmp, not the slot's tmpfs (provisioner.limits.tmpfs), so the size would not hold for them.
TMP_SIZE_REFUSED = ("tmp_size: app units under systemd run with PrivateTmp= on the host's /tmp, not in the "
                    "slot's tmpfs; a /tmp size is enforced only with the cgroup-v1 backend (supervisord)")


class LimitsError(SlotError):
    """The host cannot enforce a limit, or the kernel refused one (exit code 1)."""


@dataclass(frozen=True)
class Placement:
    """Where a slot's programs run: cgroup directories to join (no systemd) or a systemd slice."""

    cgroups: tuple[str, ...] = ()
    slice: str | None = None
    uid: int | None = None


@dataclass(frozen=True)
class SlotTarget:
    """The slot a backend acts on: its name, ids and home (for the I/O device)."""

    username: str
    uid: int
    gid: int
    home: Path
    device: tuple[int, int] | None = field(default=None, compare=False)


class LimitsBackend(Protocol):
    """How a host enforces a slot's limits. Every method is idempotent."""

    name: str

    def missing(self, limits: ResourceLimits, target: SlotTarget) -> list[str]:
        """One line per set limit this host cannot enforce, naming the missing controller."""

    def apply(self, limits: ResourceLimits, target: SlotTarget) -> None:
        """Make the slot's cgroup/slice and set LIMITS on it (None: lifted)."""

    def clear(self, target: SlotTarget) -> None:
        """Lift every limit and remove the slot's cgroup/slice (its processes are stopped)."""

    def expected(self, limits: ResourceLimits, target: SlotTarget) -> dict[str, str]:
        """The kernel settings LIMITS mean here, as ``file -> value`` (normalised)."""

    def read(self, target: SlotTarget) -> dict[str, str] | None:
        """The kernel settings now, keyed as :meth:`expected`; None when the cgroup is gone."""

    def placement(self, target: SlotTarget) -> Placement:
        """Where the slot's programs must run."""


def kernel_units_differ(want: dict[str, str], have: dict[str, str]) -> list[str]:
    """``file: kernel has X, store says Y`` for every setting that differs."""
    return [f"{k}: kernel has {have.get(k, 'nothing')!s}, store says {v}" for k, v in sorted(want.items())
            if have.get(k) != v]


def block_device(path: Path) -> tuple[int, int] | None:
    """(major, minor) of the block device holding PATH's filesystem, or None (tmpfs, network...)."""
    out = subprocess.run(["findmnt", "-n", "-o", "SOURCE", "--target", str(path)], capture_output=True,
                         text=True, check=False).stdout.strip().splitlines()
    if not out:
        return None
    source = out[0].split("[", 1)[0]
    try:
        st = os.stat(source)
    except OSError:
        return None
    import stat as stat_mod

    if not stat_mod.S_ISBLK(st.st_mode):
        return None
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    # A partition is throttled through its disk (the queue lives there).
    parent = Path(f"/sys/dev/block/{major}:{minor}/partition")
    if parent.exists():
        disk = Path(f"/sys/dev/block/{major}:{minor}").resolve().parent / "dev"
        try:
            major, minor = (int(x) for x in disk.read_text().strip().split(":"))
        except (OSError, ValueError):
            pass
    return major, minor


def io_scheduler(device: tuple[int, int]) -> str:
    """The active I/O scheduler of DEVICE (``bfq``, ``mq-deadline``, ``none``...)."""
    try:
        text = Path(f"/sys/dev/block/{device[0]}:{device[1]}/queue/scheduler").read_text()
    except OSError:
        return "unknown"
    for word in text.split():
        if word.startswith("["):
            return word.strip("[]")
    return text.strip() or "unknown"


def host_capacity() -> tuple[int, int]:
    """(CPU cores, bytes of RAM) of this host."""
    cores = len(os.sched_getaffinity(0))
    mem = 0
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
                break
    return cores, mem


def beyond_host(limits: ResourceLimits, cores: int, mem: int) -> list[str]:
    """Limits larger than the host itself (a plan sold beyond the machine)."""
    out = []
    if limits.cpu_cores is not None and limits.cpu_cores > cores:
        out.append(f"cpu_cores {limits.cpu_cores:g} exceeds this host's {cores} cores")
    for key in ("memory_max", "memory_high", "tmp_size"):
        value = getattr(limits, key)
        if value is not None and value > mem:
            out.append(f"{key} {value} exceeds this host's {mem} bytes of RAM")
    return out
