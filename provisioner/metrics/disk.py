"""Disk used and quota of every slot in one pass per filesystem, as the quota backend accounts it.

A scrape of 500 slots cannot afford two ``btrfs`` commands per slot: for btrfs, one read of
the quota tree gives every qgroup and an ioctl on each home its subvolume id (no command at
all); for usrquota, one ``repquota``. Other backends (and any home the batch misses) fall back to
the backend's own ``usage()``.
"""

from __future__ import annotations

from pathlib import Path

from provisioner.context import Context
from provisioner.errors import SlotError
from provisioner.quota import Usage, mount_of
from provisioner.quota.btrfs_tree import is_subvolume_root, qgroupid, read_facts, subvolume_id
from provisioner.runner import run
from provisioner.store import SlotRecord


def parse_repquota(text: str) -> dict[str, Usage]:
    """``repquota -u -p <mnt>`` (KiB blocks) -> {user: Usage}."""
    out = {}
    for line in text.splitlines():
        cols = line.split()
        if len(cols) >= 5 and cols[1] in ("--", "+-", "-+", "++") and cols[2].isdigit() and cols[4].isdigit():
            hard = int(cols[4]) * 1024
            out[cols[0]] = Usage(used_bytes=int(cols[2]) * 1024, limit_bytes=hard or None)
    return out


def _btrfs(slots_root: Path, records: list[SlotRecord], fresh: bool) -> dict[str, tuple[Usage | None, str]]:
    mnt = mount_of(slots_root)[0]
    if fresh:
        # qgroup figures move at transaction commit (every 30 s by default): commit now, so a
        # file just written shows up.
        run(["btrfs", "filesystem", "sync", mnt], check=False)
    # Numbers from the kernel's trees, and each home's subvolume id by ioctl on the home
    # itself: never `subvolume list`, whose paths tenants name (a newline forges a line).
    facts = read_facts(Path(mnt))
    out: dict[str, tuple[Usage | None, str]] = {}
    for rec in records:
        try:
            sid = subvolume_id(Path(rec.home)) if is_subvolume_root(Path(rec.home)) else None
        except SlotError:
            sid = None
        if sid is None:
            continue
        for level in (1, 0):  # the slot's group carries the cap; a home from before groups, its own
            q = qgroupid(level, sid)
            if q in facts.referenced:
                out[rec.username] = (Usage(facts.referenced[q], facts.max_referenced.get(q)),
                                     f"btrfs qgroup {level}/{sid}")
                break
    return out


def _usrquota(slots_root: Path, records: list[SlotRecord]) -> dict[str, tuple[Usage | None, str]]:
    mnt = mount_of(slots_root)[0]
    table = parse_repquota(run(["repquota", "-u", "-p", mnt], check=False).stdout)
    return {r.username: (table[r.username], f"user quota on {mnt}") for r in records if r.username in table}


def usage_all(ctx: Context, records: list[SlotRecord], fresh: bool = False) -> dict[str, tuple[Usage | None, str]]:
    """{username: (Usage or None, where it came from)} for RECORDS; FRESH commits pending writes first."""
    if not records:
        return {}
    backend = ctx.quota
    out: dict[str, tuple[Usage | None, str]] = {}
    try:
        if backend.name == "btrfs":
            out = _btrfs(ctx.settings.slots_root, records, fresh)
        elif backend.name == "usrquota":
            out = _usrquota(ctx.settings.slots_root, records)
    except (SlotError, OSError):
        out = {}
    for rec in records:
        if rec.username in out:
            continue
        home = Path(rec.home)
        try:
            usage = backend.usage(rec.username, home) if home.exists() else None
        except (SlotError, OSError):
            usage = None
        label = "walk of the home (allocated blocks)" if backend.name == "none" else f"{backend.name} quota"
        out[rec.username] = (usage, label if usage else "unavailable")
    return out
