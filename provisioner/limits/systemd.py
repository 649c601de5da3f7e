"""systemd limits (cgroup v2): the slot's ``user-UID.slice`` holds everything it runs.

pam_systemd puts every login session of the slot (ssh, su, cron) into ``user-UID.slice``; the
slot's app units join it with ``Slice=user-UID.slice`` (the systemd supervisor's drop-in), so
one slice, and one set of limits, covers all of it — and the metrics read that same slice.

Limits are slice properties set with ``systemctl set-property`` (persistent: systemd writes
them under ``/etc/systemd/system.control/``, so they hold across a reboot; no daemon-reload
of the whole host) and lifted with ``systemctl revert``.

>>> properties(ResourceLimits(cpu_cores=1.5, memory_max=1 << 30, max_processes=100), None)[:3]
['CPUQuota=150%', 'CPUWeight=', 'MemoryMax=1073741824']
"""

from __future__ import annotations

from pathlib import Path

from provisioner.config import ResourceLimits
from provisioner.limits.enforcement import LimitsError, Placement, SlotTarget
from provisioner.runner import run

CGROUP_ROOT = Path("/sys/fs/cgroup")


def slice_name(uid: int) -> str:
    return f"user-{uid}.slice"


def _dev_path(device: tuple[int, int]) -> str:
    return f"/dev/block/{device[0]}:{device[1]}"


def properties(limits: ResourceLimits, device: tuple[int, int] | None) -> list[str]:
    """``set-property`` assignments for LIMITS; an empty value resets a property (pure)."""
    def v(x: object) -> str:
        return "" if x is None else str(x)

    props = [
        f"CPUQuota={round(limits.cpu_cores * 100)}%" if limits.cpu_cores else "CPUQuota=",
        f"CPUWeight={v(limits.cpu_weight)}",
        f"MemoryMax={v(limits.memory_max)}",
        f"MemoryHigh={v(limits.memory_high)}",
        f"MemorySwapMax={v(limits.swap_max)}",
        f"TasksMax={v(limits.max_processes)}" if limits.max_processes is not None else "TasksMax=infinity",
        f"IOWeight={v(limits.io_weight)}",
    ]
    if device is not None:
        dev = _dev_path(device)
        props.append(f"IOReadBandwidthMax={dev} {limits.io_read_bps}" if limits.io_read_bps else "IOReadBandwidthMax=")
        props.append(f"IOWriteBandwidthMax={dev} {limits.io_write_bps}" if limits.io_write_bps
                     else "IOWriteBandwidthMax=")
    return props


def expected_v2(limits: ResourceLimits, device: tuple[int, int] | None) -> dict[str, str]:
    """The cgroup v2 files LIMITS mean in the slice (pure)."""
    def size(x: int | None) -> str:
        return "max" if x is None else str(x)

    out = {
        "cpu.max": f"{round(limits.cpu_cores * 100000)} 100000" if limits.cpu_cores else "max 100000",
        "cpu.weight": str(limits.cpu_weight or 100),
        "memory.max": size(limits.memory_max),
        "memory.high": size(limits.memory_high),
        "memory.swap.max": size(limits.swap_max),
        "pids.max": size(limits.max_processes),
    }
    if limits.io_weight is not None:
        out["io.weight"] = f"default {limits.io_weight}"
    if device is not None and (limits.io_read_bps or limits.io_write_bps):
        r = limits.io_read_bps or "max"
        w = limits.io_write_bps or "max"
        out["io.max"] = f"{device[0]}:{device[1]} rbps={r} wbps={w} riops=max wiops=max"
    return out


SHOWN = ("CPUQuotaPerSecUSec", "CPUWeight", "MemoryMax", "MemoryHigh", "MemorySwapMax", "TasksMax", "IOWeight",
         "IOReadBandwidthMax", "IOWriteBandwidthMax")
_USEC = {"us": 1, "ms": 1000, "s": 1_000_000, "min": 60_000_000}


def unit_of(target: SlotTarget) -> str:
    if target.uid < 1:
        raise LimitsError(f"slot {target.username} has no uid yet")
    return slice_name(target.uid)


def _usec(text: str) -> int | None:
    total = 0.0
    for part in text.split():
        num = part.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = part[len(num):]
        if unit not in _USEC:
            return None
        try:
            total += float(num) * _USEC[unit]
        except ValueError:
            return None
    return round(total) if 0 <= total < 1e18 else None


def from_show(props: dict[str, str]) -> dict[str, str]:
    """``systemctl show`` properties of a slice in the cgroup v2 files' terms (pure).

    >>> from_show({"TasksMax": "32", "MemoryMax": "infinity", "CPUQuotaPerSecUSec": "500ms"})["cpu.max"]
    '50000 100000'
    """
    def size(key: str) -> str:
        value = props.get(key, "infinity")
        return "max" if value in ("infinity", "") else value

    quota = props.get("CPUQuotaPerSecUSec", "infinity")
    usec = None if quota in ("infinity", "") else _usec(quota)
    out = {
        "cpu.max": "max 100000" if usec is None else f"{usec // 10} 100000",
        "cpu.weight": props.get("CPUWeight", "") if props.get("CPUWeight", "").isdigit() else "100",
        "memory.max": size("MemoryMax"),
        "memory.high": size("MemoryHigh"),
        "memory.swap.max": size("MemorySwapMax"),
        "pids.max": size("TasksMax"),
    }
    if props.get("IOWeight", "").isdigit():
        out["io.weight"] = f"default {props['IOWeight']}"
    r = props.get("IOReadBandwidthMax", "").split()
    w = props.get("IOWriteBandwidthMax", "").split()
    if len(r) == 2 or len(w) == 2:
        dev = (r or w)[0].removeprefix("/dev/block/")
        out["io.max"] = (f"{dev} rbps={r[1] if len(r) == 2 else 'max'} wbps={w[1] if len(w) == 2 else 'max'} "
                         "riops=max wiops=max")
    return out


class SystemdSliceLimits:
    """Limits as properties of ``user-UID.slice``."""

    name = "systemd"

    def __init__(self, root: Path = CGROUP_ROOT) -> None:
        self.root = root

    @staticmethod
    def detects(cgroup_root: Path) -> bool:
        """The unified hierarchy, and systemd as PID 1 to own the slices."""
        return (cgroup_root / "cgroup.controllers").exists() and Path("/run/systemd/system").is_dir()

    @classmethod
    def for_host(cls, cgroup_root: Path, cgroup_parent: str) -> SystemdSliceLimits:
        return cls(cgroup_root)  # the slices are systemd's: no parent of ours

    def path(self, uid: int) -> Path:
        return self.root / "user.slice" / slice_name(uid)

    def missing(self, limits: ResourceLimits, target: SlotTarget) -> list[str]:
        try:
            have = set((self.root / "cgroup.controllers").read_text().split())
        except OSError:
            return [f"{k}: no cgroup v2 tree at {self.root}" for k in limits.set_keys() if k != "tmp_size"]
        need = {"cpu_cores": "cpu", "cpu_weight": "cpu", "memory_max": "memory", "memory_high": "memory",
                "swap_max": "memory", "max_processes": "pids", "io_weight": "io", "io_read_bps": "io",
                "io_write_bps": "io"}
        out = []
        for key in limits.set_keys():
            if key == "tmp_size":
                # A tmpfs of the slot's (provisioner.limits.tmpfs), not a controller: the session
                # module binds it for logins, slotwarden-confine in each app unit for apps.
                continue
            if need[key] not in have:
                out.append(f"{key}: the {need[key]} cgroup v2 controller is not available at {self.root}")
            elif key in ("io_read_bps", "io_write_bps") and target.device is None:
                out.append(f"{key}: {target.home} is not on a block device the io controller can throttle")
        return out

    def apply(self, limits: ResourceLimits, target: SlotTarget) -> None:
        # The slice itself starts with the slot's first login or app unit (user-.slice is
        # StopWhenUnneeded): the properties are stored now and the kernel gets them then.
        run(["systemctl", "set-property", unit_of(target), *properties(limits, target.device)])

    def clear(self, target: SlotTarget) -> None:
        unit = unit_of(target)
        run(["systemctl", "revert", unit], check=False)
        run(["systemctl", "stop", unit], check=False)

    def expected(self, limits: ResourceLimits, target: SlotTarget) -> dict[str, str]:
        return expected_v2(limits, target.device)

    def read(self, target: SlotTarget) -> dict[str, str] | None:
        d = self.path(target.uid)
        if not d.is_dir():
            # Nothing of the slot runs, so the kernel has no cgroup to hold: compare what systemd
            # will give the slice when it starts.
            props = run(["systemctl", "show", unit_of(target), *(f"--property={p}" for p in SHOWN)],
                        check=False).stdout
            return from_show(dict(ln.split("=", 1) for ln in props.splitlines() if "=" in ln))
        out = {}
        for file in ("cpu.max", "cpu.weight", "memory.max", "memory.high", "memory.swap.max", "pids.max",
                     "io.weight", "io.max"):
            try:
                text = (d / file).read_text().strip()
            except OSError:
                continue
            out[file] = text.splitlines()[0] if text else ""
        return out

    def placement(self, target: SlotTarget) -> Placement:
        return Placement(slice=unit_of(target), uid=target.uid)
