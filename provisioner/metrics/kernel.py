#!/usr/bin/python3 -I
"""What the kernel accounts for one slot, read from /proc and cgroup files — and ``slotwarden-me``.

Standard library only, one self-contained file: ``host init`` installs a verbatim copy as
``/usr/local/bin/slotwarden-me`` (mode 0755), so a tenant runs it without being able to read
the provisioner's checkout or virtualenv. ``slotctl metrics`` imports the same readers, so the
team and the tenant see figures computed the same way.

A tenant sees only its own processes: /proc is mounted ``hidepid=invisible``, and every reader
here also filters on the real UID, so nothing of another user leaks even where hidepid is off
or the caller sits in the exempt group. The host's load average is printed without the
runnable/total task counts and the last PID of /proc/loadavg (those describe other users).

>>> parse_flat_keyed("rss 10\\ncache 4\\n")
{'rss': 10, 'cache': 4}
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import stat
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

# Replaced by `host init` in the installed copy with the configured [metrics] facts_dir.
FACTS_DIR = "/run/slotwarden/slots"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Proc:
    """One process of the slot, as /proc has it."""

    pid: int
    name: str
    cmdline: str
    state: str
    rss_bytes: int
    swap_bytes: int
    cpu_seconds: float
    read_bytes: int | None
    write_bytes: int | None


@dataclass(frozen=True)
class CgroupFigures:
    """Counters of one slot's cgroup: CPU seconds since it was created, memory now, I/O bytes."""

    cpu_seconds: float
    ram_bytes: int
    swap_bytes: int | None
    read_bytes: int
    write_bytes: int
    pids: frozenset[int]
    tasks: int | None = None  # pids.current: processes and threads, counted by the kernel
    pressure: dict[str, float] | None = None  # PSI avg10 per resource (cgroup v2 only)


@dataclass
class SlotMetrics:
    """Every figure the operator's policy lists for one slot, and where each one came from."""

    slot: str
    uid: int | None
    at: float
    cpu_seconds: float | None = None
    cpu_percent: float | None = None
    ram_bytes: int | None = None
    swap_bytes: int | None = None
    load1: float | None = None
    load5: float | None = None
    load15: float | None = None
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None
    processes: list[Proc] = field(default_factory=list)
    disk_used_bytes: int | None = None
    quota_bytes: int | None = None
    disk_total_bytes: int | None = None
    disk_free_bytes: int | None = None
    tasks: int | None = None
    pressure: dict[str, float] | None = None
    # What the slot may use (its plan's limits as applied), to read the figures against.
    limits: dict[str, Any] | None = None
    tmp_used_bytes: int | None = None  # in the slot's /tmp tmpfs (a plan's tmp_size), against its size
    tmp_size_bytes: int | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["process_count"] = len(self.processes)
        return out


# --- /proc ------------------------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def parse_status(text: str) -> dict[str, str]:
    """The ``Key:\\tvalue`` lines of /proc/PID/status."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key] = value.strip()
    return out


def _kib(value: str | None) -> int:
    return int(value.split()[0]) * 1024 if value else 0


def parse_flat_keyed(text: str) -> dict[str, int]:
    """``key value`` lines (memory.stat, cpu.stat, /proc/PID/io with colons stripped)."""
    out = {}
    for line in text.splitlines():
        parts = line.replace(":", " ").split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def read_proc(pid: int, uid: int, proc: str = "/proc") -> Proc | None:
    """Process PID if its real UID is UID (None when it is gone or belongs to someone else)."""
    status_text = _read(f"{proc}/{pid}/status")
    if status_text is None:
        return None
    status = parse_status(status_text)
    uids = status.get("Uid", "").split()
    if not uids or int(uids[0]) != uid:
        return None
    stat = _read(f"{proc}/{pid}/stat") or ""
    # comm may hold spaces and parentheses: the fields after the last ')' are fixed.
    after = stat.rpartition(")")[2].split()
    cpu = (int(after[11]) + int(after[12])) / CLK_TCK if len(after) > 12 else 0.0
    raw_cmd = _read(f"{proc}/{pid}/cmdline") or ""
    io_text = _read(f"{proc}/{pid}/io")
    io = parse_flat_keyed(io_text) if io_text is not None else None
    return Proc(
        pid=pid,
        name=status.get("Name", "?"),
        cmdline=raw_cmd.replace("\x00", " ").strip()[:200],
        state=status.get("State", "?").split()[0] if status.get("State") else "?",
        rss_bytes=_kib(status.get("VmRSS")),
        swap_bytes=_kib(status.get("VmSwap")),
        cpu_seconds=cpu,
        read_bytes=io.get("read_bytes") if io else None,
        write_bytes=io.get("write_bytes") if io else None,
    )


def processes_of(uid: int, proc: str = "/proc") -> list[Proc]:
    """Every process whose real UID is UID, by PID."""
    found = []
    for entry in os.scandir(proc):
        if entry.name.isdigit():
            p = read_proc(int(entry.name), uid, proc)
            if p is not None:
                found.append(p)
    return sorted(found, key=lambda p: p.pid)


def loadavg(proc: str = "/proc") -> tuple[float, float, float]:
    """Load 1/5/15 of the host; the task counts and last PID that follow are deliberately dropped."""
    parts = (_read(f"{proc}/loadavg") or "0 0 0").split()
    return float(parts[0]), float(parts[1]), float(parts[2])


def from_processes(m: SlotMetrics, procs: list[Proc], label: str) -> None:
    """Fill CPU, RAM, swap and I/O of M from live processes (the fallback without a cgroup)."""
    m.cpu_seconds = sum(p.cpu_seconds for p in procs)
    m.ram_bytes = sum(p.rss_bytes for p in procs)
    m.swap_bytes = sum(p.swap_bytes for p in procs)
    m.io_read_bytes = sum(p.read_bytes or 0 for p in procs)
    m.io_write_bytes = sum(p.write_bytes or 0 for p in procs)
    for key in ("cpu", "memory", "swap", "io"):
        m.sources[key] = f"{label} (live processes only)"


# --- cgroups ----------------------------------------------------------------------------------


def read_cgroup_v1(paths: dict[str, str]) -> CgroupFigures:
    """Counters from a v1 cgroup: PATHS maps controller (cpuacct, memory, blkio) to its directory."""
    cpu_ns = int((_read(f"{paths['cpuacct']}/cpuacct.usage") or "0").strip() or 0)
    mem = paths["memory"]
    stat = parse_flat_keyed(_read(f"{mem}/memory.stat") or "")
    usage = int((_read(f"{mem}/memory.usage_in_bytes") or "0").strip() or 0)
    # Working set, as cAdvisor counts it: usage minus page cache the kernel may drop at will.
    ram = max(0, usage - stat.get("total_inactive_file", 0))
    swap = stat.get("total_swap")
    rd = wr = 0
    blkio = paths.get("blkio")
    if blkio:
        for line in (_read(f"{blkio}/blkio.throttle.io_service_bytes_recursive") or "").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2].isdigit():
                if parts[1] == "Read":
                    rd += int(parts[2])
                elif parts[1] == "Write":
                    wr += int(parts[2])
    pids = frozenset(int(x) for x in (_read(f"{mem}/cgroup.procs") or "").split() if x.isdigit())
    tasks = _int_file(f"{paths['pids']}/pids.current") if "pids" in paths else None
    return CgroupFigures(cpu_ns / 1e9, ram, swap, rd, wr, pids, tasks)


def _int_file(path: str) -> int | None:
    text = (_read(path) or "").strip()
    return int(text) if text.isascii() and text.isdigit() else None


def parse_pressure(resource: str, text: str) -> dict[str, float]:
    """``{RESOURCE_some_avg10: x, RESOURCE_full_avg10: y}`` from a PSI file (cpu/memory/io.pressure).

    >>> parse_pressure("io", "some avg10=1.50 avg60=0.00 total=9\\nfull avg10=0.25 avg60=0 total=1")
    {'io_some_avg10': 1.5, 'io_full_avg10': 0.25}
    """
    out = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        for item in rest.split():
            key, _, value = item.partition("=")
            if key == "avg10" and kind in ("some", "full"):
                try:
                    out[f"{resource}_{kind}_avg10"] = float(value)
                except ValueError:
                    pass
    return out


def read_cgroup_v2(path: str) -> CgroupFigures:
    """Counters from a v2 cgroup directory (also a systemd slice's)."""
    cpu = parse_flat_keyed(_read(f"{path}/cpu.stat") or "")
    stat = parse_flat_keyed(_read(f"{path}/memory.stat") or "")
    current = int((_read(f"{path}/memory.current") or "0").strip() or 0)
    swap_text = _read(f"{path}/memory.swap.current")
    rd = wr = 0
    for line in (_read(f"{path}/io.stat") or "").splitlines():
        for item in line.split()[1:]:
            key, _, value = item.partition("=")
            if key == "rbytes" and value.isdigit():
                rd += int(value)
            elif key == "wbytes" and value.isdigit():
                wr += int(value)
    pids = frozenset(int(x) for x in (_read(f"{path}/cgroup.procs") or "").split() if x.isdigit())
    pressure: dict[str, float] = {}
    for resource in ("cpu", "memory", "io"):
        pressure.update(parse_pressure(resource, _read(f"{path}/{resource}.pressure") or ""))
    return CgroupFigures(
        cpu.get("usage_usec", 0) / 1e6,
        max(0, current - stat.get("inactive_file", 0)),
        int(swap_text.strip()) if swap_text and swap_text.strip().isdigit() else None,
        rd, wr, pids, _int_file(f"{path}/pids.current"), pressure or None,
    )


def read_cgroup(spec: dict[str, Any]) -> CgroupFigures:
    """Counters from a cgroup described as in the facts file: ``{"kind": "v1"|"v2", ...}``."""
    if spec["kind"] == "v1":
        return read_cgroup_v1(spec["paths"])
    return read_cgroup_v2(spec["path"])


def from_cgroup(m: SlotMetrics, fig: CgroupFigures, label: str) -> None:
    """Fill CPU, RAM, swap and I/O of M from cgroup counters."""
    m.cpu_seconds, m.ram_bytes = fig.cpu_seconds, fig.ram_bytes
    m.io_read_bytes, m.io_write_bytes = fig.read_bytes, fig.write_bytes
    for key in ("cpu", "memory", "io"):
        m.sources[key] = label
    if fig.swap_bytes is not None:
        m.swap_bytes = fig.swap_bytes
        m.sources["swap"] = label
    if fig.tasks is not None:
        m.tasks = fig.tasks
        m.sources["tasks"] = f"{label} (pids.current)"
    if fig.pressure is not None:
        m.pressure = fig.pressure
        m.sources["pressure"] = f"{label} (PSI, avg10 %)"


# --- disk -------------------------------------------------------------------------------------


def tree_usage(top: str) -> int:
    """Bytes allocated under TOP (like ``du -s``: st_blocks, hard links once, symlinks not followed).

    Root runs this over a tenant's home (the data report), so the walk is by descriptor: every
    directory is opened with ``O_NOFOLLOW`` relative to its parent's descriptor, so a directory
    swapped for a symlink mid-walk (to ``/``, another home) is never entered. Nested btrfs
    subvolumes count (they are the tenant's data too). A tree too deep for the descriptors left
    is counted as far as they reach.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        top_fd = os.open(top, flags)
    except OSError:
        try:
            return os.lstat(top).st_blocks * 512  # not a directory (or unreadable): itself
        except OSError:
            return 0
    total = os.fstat(top_fd).st_blocks * 512
    seen: set[tuple[int, int]] = set()
    stack = [top_fd]
    try:
        while stack:
            dfd = stack.pop()
            try:
                with os.scandir(dfd) as it:
                    names = [e.name for e in it]
            except OSError:
                names = []
            try:
                for name in names:
                    try:
                        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        try:
                            cfd = os.open(name, flags, dir_fd=dfd)
                        except OSError:
                            continue  # swapped for a symlink, gone, or out of descriptors
                        total += os.fstat(cfd).st_blocks * 512
                        stack.append(cfd)
                        continue
                    if st.st_nlink > 1:
                        key = (st.st_dev, st.st_ino)
                        if key in seen:
                            continue
                        seen.add(key)
                    total += st.st_blocks * 512
            finally:
                os.close(dfd)
    finally:
        for fd in stack:
            os.close(fd)
    return total


def _unescape_mount(field: str) -> str:
    # /proc/self/mountinfo writes space, tab, newline and backslash as \\ooo (octal).
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_fstype(path: str, mountinfo: str) -> str | None:
    """The filesystem type of the mount on PATH in MOUNTINFO (/proc/self/mountinfo), None if none.

    >>> mount_fstype("/x/1", "36 25 0:31 / /x/1 rw,nosuid - tmpfs slot-tmp rw,size=8192k\\n")
    'tmpfs'
    >>> mount_fstype("/x/1", "36 25 0:31 / /x/10 rw - tmpfs tmpfs rw\\n") is None
    True
    """
    found = None
    # Split on the kernel's own separators only: a path may hold any other byte (U+0085 too,
    # which str.split() and splitlines() would take for white space).
    for line in mountinfo.split("\n"):
        left, sep, right = line.partition(" - ")
        parts = left.split(" ")
        if sep and len(parts) >= 5 and _unescape_mount(parts[4]) == path:
            found = right.split(" ")[0] or None  # the last mount on PATH is the one seen
    return found


def tmpfs_use(path: str, mountinfo: str | None = None) -> tuple[int, int] | None:
    """(size, used) bytes of the tmpfs mounted on PATH in this mount namespace, None if the top
    mount there is not a tmpfs (a slot's /tmp of a plan's ``tmp_size``). MOUNTINFO: a copy of
    /proc/self/mountinfo already read (one read for many slots), else it is read now."""
    if mountinfo is None:
        mountinfo = _read("/proc/self/mountinfo") or ""
    if mount_fstype(path, mountinfo) != "tmpfs":
        return None
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_blocks * st.f_frsize, (st.f_blocks - st.f_bfree) * st.f_frsize


def disk_space(path: str) -> tuple[int, int]:
    """(total, free for unprivileged users) bytes of the filesystem holding PATH."""
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


# --- the tenant's own view --------------------------------------------------------------------


def read_facts(username: str, facts_dir: str = FACTS_DIR) -> dict[str, Any]:
    """What root recorded for this slot (cgroup location, quota); {} if absent or unreadable."""
    text = _read(os.path.join(facts_dir, f"{username}.json"))
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def my_metrics(facts_dir: str = FACTS_DIR, sample: float = 0.5) -> SlotMetrics:
    """The calling user's own figures, computed without any privilege."""
    uid = os.getuid()
    pw = pwd.getpwuid(uid)
    facts = read_facts(pw.pw_name, facts_dir)
    m = SlotMetrics(slot=pw.pw_name, uid=uid, at=time.time())

    def counters() -> None:
        m.processes = processes_of(uid)
        cg = facts.get("cgroup")
        fig = None
        if isinstance(cg, dict):
            try:
                fig = read_cgroup(cg)
            except (OSError, KeyError, ValueError):
                fig = None
        if fig is not None:
            from_cgroup(m, fig, f"cgroup-{cg['kind']}")  # type: ignore[index]
            if "swap" not in m.sources:
                m.swap_bytes = sum(p.swap_bytes for p in m.processes)
                m.sources["swap"] = "processes (live processes only)"
        else:
            from_processes(m, m.processes, "processes")

    counters()
    if sample > 0 and m.cpu_seconds is not None:
        first, t0 = m.cpu_seconds, time.monotonic()
        time.sleep(sample)
        counters()
        m.cpu_percent = round(100.0 * max(0.0, (m.cpu_seconds or 0.0) - first) / (time.monotonic() - t0), 1)
    m.load1, m.load5, m.load15 = loadavg()
    m.sources["load"] = "/proc/loadavg (whole host)"
    home = pw.pw_dir
    m.disk_used_bytes = tree_usage(home)
    m.sources["disk_used"] = f"walk of {home} (allocated blocks)"
    quota = facts.get("quota_bytes")
    m.quota_bytes = quota if isinstance(quota, int) else None
    limits = facts.get("limits")
    if isinstance(limits, dict):
        m.limits = limits
        m.sources["limits"] = "facts recorded by the provisioner (the plan's limits, enforced by the kernel)"
        if limits.get("tmp_size") is not None:
            # The caller's own /tmp: in a session of the slot, the slot's tmpfs.
            use = tmpfs_use("/tmp")
            if use is not None:
                m.tmp_size_bytes, m.tmp_used_bytes = use
                m.sources["tmp"] = "statvfs(/tmp), the slot's tmpfs"
    m.sources["quota"] = "facts recorded by the provisioner" if facts else "unknown (no facts recorded)"
    try:
        m.disk_total_bytes, m.disk_free_bytes = disk_space(home)
        m.sources["physical_disk"] = f"statvfs({home})"
    except OSError:
        pass
    return m


def human(n: float | None) -> str:
    """1536 -> '1.5K' (binary units)."""
    if n is None:
        return "-"
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def render_text(m: SlotMetrics) -> str:
    """The human listing shared by ``slotctl metrics`` and ``slotwarden-me``."""
    quota = human(m.quota_bytes) if m.quota_bytes else "none"
    pct = f" ({m.cpu_percent:.1f}% now)" if m.cpu_percent is not None else ""
    lines = [
        f"slot {m.slot} (uid {m.uid})",
        f"  cpu        {m.cpu_seconds or 0:.2f} s{pct}   [{m.sources.get('cpu', '-')}]",
        f"  ram        {human(m.ram_bytes)}   [{m.sources.get('memory', '-')}]",
        f"  swap       {human(m.swap_bytes)}   [{m.sources.get('swap', '-')}]",
        f"  load       {m.load1} {m.load5} {m.load15}   [{m.sources.get('load', '-')}]",
        f"  io         read {human(m.io_read_bytes)}, written {human(m.io_write_bytes)}   "
        f"[{m.sources.get('io', '-')}]",
        f"  disk used  {human(m.disk_used_bytes)} of quota {quota}   [{m.sources.get('disk_used', '-')}]",
        f"  disk       {human(m.disk_free_bytes)} free of {human(m.disk_total_bytes)}",
        f"  processes  {len(m.processes)}" + (f" ({m.tasks} tasks)" if m.tasks is not None else ""),
    ]
    lines += limit_lines(m)
    for p in m.processes:
        lines.append(f"    {p.pid:>7} {p.state} {human(p.rss_bytes):>7} {p.cpu_seconds:8.2f}s  {p.cmdline or p.name}")
    return "\n".join(lines)


def limit_lines(m: SlotMetrics) -> list[str]:
    """Use against limit: one line per limit the slot is held to (none when it has none)."""
    lim = {k: v for k, v in (m.limits or {}).items() if v is not None and k != "backend"}
    if not lim:
        return []
    out = [f"  limits     [{(m.limits or {}).get('backend', '-')}]"]
    if "cpu_cores" in lim:
        now = f"{m.cpu_percent:.1f}% now of " if m.cpu_percent is not None else ""
        out.append(f"    cpu      {now}{lim['cpu_cores'] * 100:.0f}% ({lim['cpu_cores']:g} cores)")
    for key, label, used in (("memory_max", "ram     ", m.ram_bytes), ("memory_high", "ram high", m.ram_bytes),
                             ("swap_max", "swap    ", m.swap_bytes)):
        if key in lim:
            pct = f" ({100 * used / lim[key]:.0f}%)" if used is not None and lim[key] else ""
            out.append(f"    {label} {human(used)} of {human(lim[key])}{pct}")
    if "max_processes" in lim:
        used = m.tasks if m.tasks is not None else len(m.processes)
        out.append(f"    tasks    {used} of {lim['max_processes']}")
    if "tmp_size" in lim:
        size = m.tmp_size_bytes or lim["tmp_size"]
        pct = f" ({100 * m.tmp_used_bytes / size:.0f}%)" if m.tmp_used_bytes is not None and size else ""
        state = human(m.tmp_used_bytes) if m.tmp_size_bytes is not None else "not mounted"
        out.append(f"    /tmp     {state} of {human(size)}{pct}")
    for key in ("cpu_weight", "io_weight", "io_read_bps", "io_write_bps"):
        if key in lim:
            out.append(f"    {key:<8} {human(lim[key]) + '/s' if key.endswith('bps') else lim[key]}")
    if m.pressure:
        out.append("    pressure " + ", ".join(f"{k} {v:.1f}%" for k, v in sorted(m.pressure.items())))
    return out


def me_main(argv: list[str] | None = None) -> None:
    """``slotwarden-me``: your slot's CPU, RAM, swap, load, I/O, disk and processes."""
    parser = argparse.ArgumentParser(prog="slotwarden-me", description=me_main.__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--sample", type=float, default=0.5, metavar="SECONDS",
                        help="measure CPU %% over this interval (0: skip) [default: 0.5]")
    args = parser.parse_args(argv)
    if not 0 <= args.sample <= 60:
        parser.error("--sample must be between 0 and 60")
    m = my_metrics(sample=args.sample)
    if args.json:
        print(json.dumps(m.as_dict(), indent=2, sort_keys=True))
    else:
        print(render_text(m))
    sys.stdout.flush()


if __name__ == "__main__":
    me_main()
