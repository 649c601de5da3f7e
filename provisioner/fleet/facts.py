"""A host's facts, as its API reports them (``GET /v1/host``) and the controller checks them.

Host side, :func:`gather` reads the slots filesystem (``statvfs``), the quota committed to
the store's slots, ``/proc/meminfo`` and the load average. Controller side, :meth:`HostFacts.parse`
takes the answer of a host the controller does not control either: every number must be a
non-negative integer (load: a finite float), every slot name a valid username — anything else
refuses the whole answer (the host's facts stay what they were), so no string a host chooses
is trusted into the store unchecked.

>>> HostFacts.parse({"disk_bytes": 10, "disk_free_bytes": 5, "committed_bytes": 4,
...                  "mem_total_bytes": 8, "mem_available_bytes": 2, "load": [0.5, 0.1, 0.0],
...                  "slots": [{"username": "alice", "state": "active", "quota_bytes": 4}]}).slot_count
1
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner.context import Context
from provisioner.errors import BadInput
from provisioner.names import USERNAME_RE, shown

SLOT_STATES = frozenset({"creating", "active", "removing", "suspended"})
MAX_SLOTS = 100_000  # an answer with more is refused rather than stored


@dataclass(frozen=True)
class HostSlot:
    username: str
    state: str
    quota_bytes: int


@dataclass(frozen=True)
class HostFacts:
    """Disk of the slots filesystem, quota committed, memory, load and the slots of one host."""

    disk_bytes: int
    disk_free_bytes: int
    committed_bytes: int
    mem_total_bytes: int
    mem_available_bytes: int
    load: tuple[float, float, float]
    slots: tuple[HostSlot, ...]

    @property
    def slot_count(self) -> int:
        return len(self.slots)

    def as_dict(self) -> dict[str, Any]:
        return {"disk_bytes": self.disk_bytes, "disk_free_bytes": self.disk_free_bytes,
                "committed_bytes": self.committed_bytes, "mem_total_bytes": self.mem_total_bytes,
                "mem_available_bytes": self.mem_available_bytes, "load": list(self.load),
                "slots": [s.__dict__ for s in self.slots]}

    @classmethod
    def parse(cls, data: object) -> HostFacts:
        """Checked facts from a host's JSON answer; BadInput naming the first bad field."""
        if not isinstance(data, dict):
            raise BadInput("facts: expected a JSON object")

        def count(key: str, where: dict[str, Any] = data) -> int:
            v = where.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << 63:
                raise BadInput(f"facts.{key}: expected a non-negative integer, got {shown(v)}")
            return v

        load = data.get("load")
        if (not isinstance(load, list) or len(load) != 3
                or not all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x >= 0
                           for x in load)):
            raise BadInput(f"facts.load: expected three non-negative numbers, got {shown(load)}")
        raw_slots = data.get("slots")
        if not isinstance(raw_slots, list) or len(raw_slots) > MAX_SLOTS:
            raise BadInput("facts.slots: expected a list of at most 100000 slots")
        slots = []
        for s in raw_slots:
            if not isinstance(s, dict):
                raise BadInput("facts.slots: expected objects")
            name, state = s.get("username"), s.get("state")
            if not isinstance(name, str) or not USERNAME_RE.fullmatch(name):
                raise BadInput(f"facts.slots.username: not a slot name: {shown(name)}")
            if state not in SLOT_STATES:
                raise BadInput(f"facts.slots.state: {shown(state)}")
            slots.append(HostSlot(name, str(state), count("quota_bytes", s)))
        return cls(count("disk_bytes"), count("disk_free_bytes"), count("committed_bytes"),
                   count("mem_total_bytes"), count("mem_available_bytes"),
                   (float(load[0]), float(load[1]), float(load[2])), tuple(slots))


def _meminfo(path: Path = Path("/proc/meminfo")) -> tuple[int, int]:
    values: dict[str, int] = {}
    for line in path.read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0]) * 1024
    return values.get("MemTotal", 0), values.get("MemAvailable", 0)


def gather(ctx: Context) -> HostFacts:
    """This host's facts: its slots filesystem, the quota its store commits, memory, load, slots."""
    st = os.statvfs(ctx.settings.slots_root)
    records = ctx.store.list_slots()
    mem_total, mem_available = _meminfo()
    slots = tuple(HostSlot(r.username, r.state, r.quota_bytes or 0) for r in records)
    return HostFacts(
        disk_bytes=st.f_blocks * st.f_frsize,
        disk_free_bytes=st.f_bavail * st.f_frsize,
        committed_bytes=sum(s.quota_bytes for s in slots),
        mem_total_bytes=mem_total,
        mem_available_bytes=mem_available,
        load=os.getloadavg(),
        slots=slots,
    )
