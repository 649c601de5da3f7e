"""Disk used and quota of every slot in one pass per filesystem, as the quota backend accounts it.

A scrape of 500 slots cannot afford two ``btrfs`` commands per slot: the backend reads every
slot's figure in one pass (:meth:`~provisioner.quota.QuotaBackend.bulk_usage`: for btrfs one
read of the quota tree, for usrquota one ``repquota``); any home the pass misses falls back to
the backend's own ``usage()``.
"""

from __future__ import annotations

from pathlib import Path

from provisioner.context import Context
from provisioner.errors import SlotError
from provisioner.quota import Usage
from provisioner.store import SlotRecord


def usage_all(ctx: Context, records: list[SlotRecord], fresh: bool = False) -> dict[str, tuple[Usage | None, str]]:
    """{username: (Usage or None, where it came from)} for RECORDS; FRESH commits pending writes first."""
    if not records:
        return {}
    backend = ctx.quota
    try:
        out = backend.bulk_usage(records, fresh)
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
        out[rec.username] = (usage, backend.usage_source if usage else "unavailable")
    return out
