"""Concurrent quota operations on different slots: creates and removals interleaved, many clients.

Each client loops over homes of its own: make the home (subvolume + group), cap it, read its
usage back, write into it, remove it. Meanwhile a few *bystander* homes live through the whole
run; afterwards their groups, memberships and limits must be exactly as they were, and no
qgroup of a removed home may be left. Any failed operation is recorded (the first error per
client stops that client). Used by ``tests/system/test_quota_stress.py`` (bounded) and
``bench/quota_stress.py`` (long).
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from provisioner.quota import QuotaBackend
from provisioner.quota.btrfs_tree import qgroupid, read_facts

LIMIT = 8 << 20


@dataclass
class StressResult:
    """What a stress run did and what went wrong."""

    operations: int = 0
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, n: int = 1) -> None:
        with self.lock:
            self.operations += n


def _cycle(backend: QuotaBackend, home: Path, result: StressResult, write_bytes: int) -> None:
    backend.make_home(home)
    backend.set_limit(home.name, home, LIMIT)
    usage = backend.usage(home.name, home)
    if usage.limit_bytes != LIMIT:
        raise AssertionError(f"{home.name}: limit reads {usage.limit_bytes}, set {LIMIT}")
    with open(home / "f", "wb") as f:
        f.write(os.urandom(write_bytes))
    backend.remove_home(home)
    result.count(4)


def run_stress(backend: QuotaBackend, root: Path, clients: int, cycles: int, bystanders: int = 3,
               write_bytes: int = 64 << 10) -> StressResult:
    """CLIENTS threads, CYCLES create/limit/usage/remove cycles each, next to BYSTANDERS live homes."""
    result = StressResult()
    tag = secrets.token_hex(3)
    keep = [root / f"by-{tag}-{i}" for i in range(bystanders)]
    for home in keep:
        backend.make_home(home)
        backend.set_limit(home.name, home, LIMIT)
    facts = read_facts(root)
    ids = {h: _subvol_id(backend, h) for h in keep}
    before = {h: (facts.max_referenced.get(qgroupid(1, s)), facts.memberships.get(qgroupid(0, s)))
              for h, s in ids.items()}

    def client(c: int) -> None:
        for i in range(cycles):
            home = root / f"st-{tag}-{c}-{i}"
            try:
                _cycle(backend, home, result, write_bytes)
            except Exception as exc:  # record and stop this client: the run must show every failure
                result.errors.append(f"client {c} cycle {i}: {exc}")
                return

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    result.wall_s = time.perf_counter() - start
    facts = read_facts(root)
    for h, s in ids.items():
        now = (facts.max_referenced.get(qgroupid(1, s)), facts.memberships.get(qgroupid(0, s)))
        if now != before[h]:
            result.errors.append(f"bystander {h.name}: limit/membership {before[h]} became {now}")
    for h in keep:
        backend.remove_home(h)
    return result


def _subvol_id(backend: QuotaBackend, home: Path) -> int:
    return int(backend.subvolume_id(home))  # type: ignore[attr-defined]
