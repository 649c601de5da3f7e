"""Placement: which fleet host gets a new slot — a pure function of the hosts' facts.

The rule, in the operator's words (also printed by ``slotctl fleet place --explain`` and returned
by ``POST /v1/slots`` under ``placement``):

1. a host is a candidate if its last contact succeeded and its **room** — the disk of its slots
   filesystem minus the quota already committed there (every slot's quota, placed or being
   placed) — is at least the new slot's quota;
2. the candidate with the most room wins; on a tie, the one with fewer slots, then more
   available memory, then the lower 1-minute load, then the name (so the choice is repeatable).

Quota is what the hosts promise, not what tenants use today: a host whose slots are all empty
is still full once its disk is promised.

>>> a = HostRoom("web1", True, disk_bytes=100, committed_bytes=70, slots=3)
>>> b = HostRoom("web2", True, disk_bytes=80, committed_bytes=20, slots=9)
>>> place([a, b], quota_bytes=10).host
'web2'
>>> place([a, b], quota_bytes=61).host is None
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RULE = ("candidates: hosts whose last contact succeeded and whose room (slots-filesystem disk minus "
        "the quota committed there) is at least the slot's quota; the most room wins; ties: fewer "
        "slots, then more available memory, then lower 1-minute load, then the name")


@dataclass(frozen=True)
class HostRoom:
    """What placement knows of one host."""

    name: str
    up: bool
    disk_bytes: int = 0
    committed_bytes: int = 0
    slots: int = 0
    mem_available_bytes: int = 0
    load1: float = 0.0
    reason_down: str | None = None

    @property
    def room_bytes(self) -> int:
        return self.disk_bytes - self.committed_bytes


@dataclass(frozen=True)
class Placement:
    """The chosen host (None: no host has room) and why, host by host."""

    host: str | None
    quota_bytes: int
    candidates: list[dict[str, Any]] = field(default_factory=list)
    rule: str = RULE

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "quota_bytes": self.quota_bytes, "rule": self.rule,
                "candidates": self.candidates}


def _rank(h: HostRoom) -> tuple[int, int, int, float, str]:
    return (-h.room_bytes, h.slots, -h.mem_available_bytes, h.load1, h.name)


def place(hosts: list[HostRoom], quota_bytes: int) -> Placement:
    """The host the rule picks for a slot of QUOTA_BYTES among HOSTS, with each host's verdict."""
    eligible: list[HostRoom] = []
    verdicts: dict[str, str] = {}
    for h in hosts:
        if not h.up:
            verdicts[h.name] = f"skipped: {h.reason_down or 'unreachable at its last contact'}"
        elif h.room_bytes < quota_bytes:
            verdicts[h.name] = f"skipped: room {h.room_bytes} B is less than the quota {quota_bytes} B"
        else:
            eligible.append(h)
    ranked = sorted(eligible, key=_rank)
    for i, h in enumerate(ranked):
        verdicts[h.name] = "chosen: the most room" if i == 0 else f"candidate, rank {i + 1}"
    rows = [{"host": h.name, "up": h.up, "disk_bytes": h.disk_bytes, "committed_bytes": h.committed_bytes,
             "room_bytes": h.room_bytes, "slots": h.slots, "mem_available_bytes": h.mem_available_bytes,
             "load1": h.load1, "verdict": verdicts[h.name]}
            for h in sorted(hosts, key=lambda h: (h.name not in {r.name for r in ranked}, _rank(h)))]
    return Placement(ranked[0].name if ranked else None, quota_bytes, rows)
