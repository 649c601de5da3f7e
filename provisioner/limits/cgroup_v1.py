"""cgroup v1 limits (hosts without systemd): the memory, cpu, pids and blkio controllers directly.

The slot's cgroup is one directory per hierarchy, ``<root>/<controller>/<parent>/<user>``
(the same directories :mod:`provisioner.metrics.cgroup_v1` reads), ``root:<slot group>``
mode 0750 under a parent of mode 0711. Logins join it at session open
(``pam_slotwarden_session.so``), programs under supervisord before they drop to the slot user.

How the plan's limits map here (v1 has no direct "high" mark or swap-only limit):

=============  ==============================================================
cpu_cores      ``cpu.cfs_quota_us`` = cores x ``cpu.cfs_period_us`` (100 ms)
cpu_weight     ``cpu.shares`` = weight x 1024 / 100
memory_max     ``memory.limit_in_bytes`` (the OOM killer acts inside the slot)
memory_high    ``memory.soft_limit_in_bytes`` (reclaimed first under pressure)
swap_max       ``memory.memsw.limit_in_bytes`` = memory_max + swap_max
max_processes  ``pids.max``
io_weight      ``blkio.bfq.weight`` (weight / 10; the device must use BFQ)
io_*_bps       ``blkio.throttle.{read,write}_bps_device`` on the home's device
=============  ==============================================================

The slots' common parent weighs one nice-0 process per CPU (``cpu.shares`` = 1024 x CPUs,
:func:`parent_shares`): a v1 process in the root cgroup weighs 1024 on its own, so with the
kernel's default of 1024 every tenant together weighed as much as *one* root process, and a
host running a few root jobs (a backup, dpkg, a compile) starved all slots alike. Measured
in ``bench/noisy_neighbour.py`` (BENCHMARKS.md, "Noisy neighbour").

>>> expected_v1(ResourceLimits(cpu_cores=0.5, max_processes=64), None)["cpu/cpu.cfs_quota_us"]
'50000'
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from provisioner.config import ResourceLimits
from provisioner.limits.enforcement import LimitsError, Placement, SlotTarget, io_scheduler

CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "blkio")
PERIOD_US = 100_000
UNLIMITED = "max"
PAGE = os.sysconf("SC_PAGE_SIZE")
# What a v1 memory limit reads as when unset (PAGE_COUNTER_MAX pages, page-aligned).
_V1_BIG = 1 << 62
_SHARES_MAX = 262_144  # MAX_SHARES of the v1 cpu controller


def parent_shares(cpus: int) -> str:
    """``cpu.shares`` of the slots' parent: 1024 (one nice-0 task) per CPU, within the kernel's range.

    >>> parent_shares(2), parent_shares(1000)
    ('2048', '262144')
    """
    return str(min(_SHARES_MAX, 1024 * max(1, cpus)))


def _pages(n: int) -> str:
    return str(n // PAGE * PAGE)


def expected_v1(limits: ResourceLimits, device: tuple[int, int] | None) -> dict[str, str]:
    """The v1 settings LIMITS mean, normalised as :func:`read_v1` reports them (pure)."""
    out = {
        "cpu/cpu.cfs_quota_us": str(round(limits.cpu_cores * PERIOD_US)) if limits.cpu_cores else "-1",
        "cpu/cpu.shares": str(max(2, limits.cpu_weight * 1024 // 100)) if limits.cpu_weight else "1024",
        "memory/memory.limit_in_bytes": _pages(limits.memory_max) if limits.memory_max else UNLIMITED,
        "memory/memory.soft_limit_in_bytes": _pages(limits.memory_high) if limits.memory_high else UNLIMITED,
        "pids/pids.max": str(limits.max_processes) if limits.max_processes is not None else UNLIMITED,
    }
    if limits.memory_max and limits.swap_max is not None:
        out["memory/memory.memsw.limit_in_bytes"] = _pages(limits.memory_max + limits.swap_max)
    if limits.io_weight is not None:
        out["blkio/blkio.bfq.weight"] = str(min(1000, max(1, limits.io_weight // 10)))
    if device is not None:
        dev = f"{device[0]}:{device[1]}"
        for key, file in (("io_read_bps", "read"), ("io_write_bps", "write")):
            value = getattr(limits, key)
            out[f"blkio/blkio.throttle.{file}_bps_device"] = f"{dev} {value}" if value else ""
    return out


def _normalise(key: str, text: str) -> str:
    value = text.strip()
    if key.startswith("memory/") and value.isdigit() and int(value) >= _V1_BIG:
        return UNLIMITED
    if key == "blkio/blkio.bfq.weight":
        # "default 100" on some kernels, "100" on others
        return value.split()[-1] if value else value
    return value


class CgroupV1Limits:
    """Limits on the slot's v1 cgroup directories."""

    name = "cgroup-v1"

    def __init__(self, root: Path, parent: str) -> None:
        self.root = root
        self.parent = parent

    @staticmethod
    def detects(cgroup_root: Path) -> bool:
        """A v1 memory hierarchy is mounted."""
        return (cgroup_root / "memory" / "cgroup.procs").exists()

    @classmethod
    def for_host(cls, cgroup_root: Path, cgroup_parent: str) -> CgroupV1Limits:
        return cls(cgroup_root, cgroup_parent)

    def mounted(self) -> list[str]:
        return [c for c in CONTROLLERS if (self.root / c / "cgroup.procs").exists()]

    def dirs(self, username: str) -> dict[str, Path]:
        return {c: self.root / c / self.parent / username for c in self.mounted()}

    # --- what this host can do -------------------------------------------------------------

    def missing(self, limits: ResourceLimits, target: SlotTarget) -> list[str]:
        have = set(self.mounted())
        out = []
        need = {"cpu_cores": "cpu", "cpu_weight": "cpu", "memory_max": "memory", "memory_high": "memory",
                "swap_max": "memory", "max_processes": "pids", "io_weight": "blkio", "io_read_bps": "blkio",
                "io_write_bps": "blkio"}
        for key in limits.set_keys():
            ctrl = need.get(key)
            if key == "tmp_size":
                continue  # a tmpfs of the slot's, not a cgroup (provisioner.limits.tmpfs)
            if ctrl not in have:
                out.append(f"{key}: the {ctrl} cgroup controller is not mounted under {self.root}")
            elif key == "swap_max" and not (self.root / "memory" / "memory.memsw.limit_in_bytes").exists():
                out.append("swap_max: the memory controller has no swap accounting (boot with swapaccount=1)")
            elif key == "swap_max" and limits.memory_max is None:
                out.append("swap_max: cgroup v1 limits swap only together with memory_max")
            elif key in ("io_read_bps", "io_write_bps") and target.device is None:
                out.append(f"{key}: {target.home} is not on a block device the blkio controller can throttle")
            elif key == "io_weight":
                sched = io_scheduler(target.device) if target.device else "none"
                if sched != "bfq":
                    out.append(f"io_weight: the blkio weight needs the bfq I/O scheduler on the slot's disk "
                               f"(it uses {sched}); sell io_read_bps/io_write_bps instead")
        return out

    # --- doing -----------------------------------------------------------------------------

    def _make(self, target: SlotTarget) -> dict[str, Path]:
        dirs = self.dirs(target.username)
        for ctrl, d in dirs.items():
            parent = d.parent
            parent.mkdir(parents=True, exist_ok=True)
            os.chmod(parent, 0o711)  # noqa: S103 - slot names are not listable
            if ctrl == "cpu":
                self._write(parent, "cpu.shares", parent_shares(os.cpu_count() or 1))
            d.mkdir(exist_ok=True)
            os.chown(d, 0, target.gid)
            os.chmod(d, 0o750)  # noqa: S103 - the slot's group reads its own counters
            if ctrl == "memory":
                try:
                    (d / "memory.move_charge_at_immigrate").write_text("3")
                except OSError:
                    pass  # newer kernels drop the knob
        return dirs

    def _write(self, d: Path, file: str, value: str) -> None:
        try:
            (d / file).write_text(value)
        except OSError as exc:
            why = "the slot already uses more" if exc.errno == errno.EBUSY else exc.strerror
            raise LimitsError(f"the kernel refused {file} = {value!r} for {d.name} ({why})") from None

    def apply(self, limits: ResourceLimits, target: SlotTarget) -> None:
        dirs = self._make(target)
        want = expected_v1(limits, target.device)
        if "cpu" in dirs:
            self._write(dirs["cpu"], "cpu.cfs_period_us", str(PERIOD_US))
        if "memory" in dirs:
            mem = dirs["memory"]
            memsw = (mem / "memory.memsw.limit_in_bytes").exists()
            if memsw:  # mem+swap must never be below the memory limit while we change both
                self._write(mem, "memory.memsw.limit_in_bytes", "-1")
        for key, value in want.items():
            ctrl, file = key.split("/", 1)
            d = dirs.get(ctrl)
            if d is None:
                continue
            if file.endswith("_bps_device"):
                self._set_throttle(d, file, value, target.device)
                continue
            if file == "memory.memsw.limit_in_bytes":
                continue
            if file == "blkio.bfq.weight" and not (d / file).exists():
                raise LimitsError("io_weight: the blkio controller has no bfq weight here")
            self._write(d, file, "-1" if value == UNLIMITED and ctrl == "memory" else value)
        if "memory/memory.memsw.limit_in_bytes" in want and "memory" in dirs:
            self._write(dirs["memory"], "memory.memsw.limit_in_bytes", want["memory/memory.memsw.limit_in_bytes"])

    def _set_throttle(self, d: Path, file: str, value: str, device: tuple[int, int] | None) -> None:
        if device is None:
            return
        self._write(d, file, value or f"{device[0]}:{device[1]} 0")

    def clear(self, target: SlotTarget) -> None:
        from provisioner.metrics import remove_cgroup_dir

        for d in self.dirs(target.username).values():
            remove_cgroup_dir(d, evacuate_to=d.parent)

    def expected(self, limits: ResourceLimits, target: SlotTarget) -> dict[str, str]:
        return expected_v1(limits, target.device)

    def read(self, target: SlotTarget) -> dict[str, str] | None:
        dirs = self.dirs(target.username)
        if not dirs or not all(d.is_dir() for d in dirs.values()):
            return None
        out = {}
        for key in expected_v1(ResourceLimits(swap_max=0, memory_max=PAGE, io_weight=100), target.device):
            ctrl, file = key.split("/", 1)
            try:
                text = (dirs[ctrl] / file).read_text() if ctrl in dirs else ""
            except OSError:
                continue
            if file.endswith("_bps_device"):
                lines = [ln for ln in text.splitlines() if ln.strip()]
                text = lines[0] if lines else ""
            out[key] = _normalise(key, text)
        return out

    def placement(self, target: SlotTarget) -> Placement:
        return Placement(cgroups=tuple(str(d) for d in self.dirs(target.username).values()), uid=target.uid)
