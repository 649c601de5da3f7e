"""Disk used and quota of every slot in one pass per filesystem, as the quota backend accounts it.

A scrape of 500 slots cannot afford two ``btrfs`` commands per slot: for btrfs, one
``subvolume list`` maps homes to subvolume ids and one ``qgroup show`` gives every qgroup;
for usrquota, one ``repquota``. Other backends (and any home the batch misses) fall back to
the backend's own ``usage()``.
"""

from __future__ import annotations

import re
from pathlib import Path

from provisioner.context import Context
from provisioner.errors import SlotError
from provisioner.quota import Usage, mount_of
from provisioner.runner import run
from provisioner.store import SlotRecord

_SUBVOL = re.compile(r"^ID (\d+) gen \d+ top level \d+ path (.+)$")


def parse_subvolume_list(text: str) -> dict[str, int]:
    """``btrfs subvolume list`` output -> {path relative to the filesystem top: subvolume id}."""
    out = {}
    for line in text.splitlines():
        m = _SUBVOL.match(line.strip())
        if m:
            out[m.group(2)] = int(m.group(1))
    return out


def parse_qgroup_show(text: str, level: int = 0) -> dict[int, Usage]:
    """``btrfs qgroup show -re --raw`` output -> {id: Usage(referenced, max_rfer)} of LEVEL's qgroups.

    A slot's cap is on its level-1 group ``1/<home id>`` (see :mod:`provisioner.quota.btrfs`).
    """
    out = {}
    prefix = f"{level}/"
    for line in text.splitlines():
        cols = line.split()
        if len(cols) >= 4 and cols[0].startswith(prefix) and cols[0][2:].isdigit() and cols[1].isdigit():
            limit = None if cols[3] in ("none", "0") else int(cols[3]) if cols[3].isdigit() else None
            out[int(cols[0][2:])] = Usage(used_bytes=int(cols[1]), limit_bytes=limit)
    return out


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
    ids = parse_subvolume_list(run(["btrfs", "subvolume", "list", mnt]).stdout)
    shown = run(["btrfs", "qgroup", "show", "-re", "--raw", mnt]).stdout
    qgroups, groups = parse_qgroup_show(shown), parse_qgroup_show(shown, level=1)
    out: dict[str, tuple[Usage | None, str]] = {}
    for rec in records:
        rel = str(Path(rec.home).relative_to(mnt)) if Path(rec.home).is_relative_to(mnt) else None
        sid = ids.get(rel) if rel else None
        if sid is not None and sid in groups:
            out[rec.username] = (groups[sid], f"btrfs qgroup 1/{sid}")
        elif sid is not None and sid in qgroups:
            out[rec.username] = (qgroups[sid], f"btrfs qgroup 0/{sid}")
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
