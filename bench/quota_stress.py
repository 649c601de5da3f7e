"""Stress the btrfs quota backend: creates and removals of *different* slots interleaved.

Two phases on one fresh btrfs host (a loop image under /tmp/swl-*, removed at the end):

- ``quota``: CLIENTS threads each run CYCLES cycles of make home, cap, read the cap back, write,
  remove (4 quota operations a cycle) next to three bystander homes whose groups and limits
  must come out untouched (``tests/system/quota_stress.py``; the bounded twin is
  ``tests/system/test_quota_stress.py``);
- ``slots``: PAIRS full ``operations.create_slot`` + ``operations.remove_slot`` pairs on CLIENTS threads
  (what ``bench/api.py``'s direct side does), every failure counted.

Each phase runs twice side by side: with the slot-scoped backend (``provisioner.quota.btrfs``)
and, as the baseline, with the backend as it was before (per-home 0/N limit, removal falling
back to the filesystem-wide ``qgroup clear-stale``) on a full-accounting filesystem.
Run: ``sudo .venv/bin/python bench/quota_stress.py [--clients 10] [--cycles 100] [--pairs 150]``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provisioner import operations
from provisioner.errors import CommandFailed, SlotError
from provisioner.quota import Usage, mount_of
from provisioner.quota.btrfs import BtrfsQuota
from provisioner.runner import run
from tests.system.fixtures.hosts import PLANS, app_ports, new_name, slot_host
from tests.system.quota_stress import run_stress


class BaselineBtrfsQuota(BtrfsQuota):
    """The backend as it was: the limit on the home's 0/N, removal ending in ``clear-stale``."""

    def make_home(self, home: Path) -> None:
        if not self.is_subvolume(home):
            run(["btrfs", "subvolume", "create", str(home)])

    def remove_home(self, home: Path) -> None:
        if not home.exists():
            return
        qgroup = f"0/{self.subvolume_id(home)}"
        run(["btrfs", "subvolume", "delete", "--commit-after", str(home)])
        mnt = self.mountpoint
        if run(["btrfs", "qgroup", "destroy", qgroup, mnt], check=False).returncode == 0:
            return
        run(["btrfs", "subvolume", "sync", mnt], check=False)
        run(["btrfs", "qgroup", "clear-stale", mnt], check=False)

    def _limit(self, home: Path, limit: str) -> None:
        run(["btrfs", "qgroup", "limit", limit, f"0/{self.subvolume_id(home)}", self.mountpoint])

    def set_limit(self, username: str, home: Path, limit_bytes: int) -> None:
        self._limit(home, str(limit_bytes))

    def usage(self, username: str, home: Path) -> Usage:
        qgroup = f"0/{self.subvolume_id(home)}"
        out = run(["btrfs", "qgroup", "show", "-reF", "--raw", str(home)]).stdout
        for line in out.splitlines():
            cols = line.split()
            if cols and cols[0] == qgroup:
                return Usage(int(cols[1]), None if cols[3] == "none" else int(cols[3]))
        raise SlotError(f"no qgroup {qgroup}")


def full_accounting(root: Path) -> None:
    """Switch the filesystem to full qgroup accounting (the baseline's world)."""
    mnt = mount_of(root)[0]
    run(["btrfs", "quota", "disable", mnt])
    run(["btrfs", "quota", "enable", mnt])


def slot_pairs(host: Any, pairs: int, clients: int) -> dict[str, Any]:
    errors: list[str] = []
    lock = threading.Lock()

    def one(_i: int) -> None:
        ctx = host.ctx()
        name = new_name("tq")
        try:
            operations.create_slot(ctx, name, "q@example.com", "DE", plan="small")
            operations.remove_slot(ctx, name)
        except (SlotError, CommandFailed) as exc:
            with lock:
                errors.append(f"{name}: {exc}")
            try:
                operations.remove_slot(ctx, name)
            except SlotError:
                pass
        finally:
            ctx.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(pairs)))
    return {"pairs": pairs, "failed": len(errors), "errors": sorted({re.sub(r"tq[0-9a-f]{8}", "NAME", e)
                                                                        for e in errors})[:5],
            "wall_s": round(time.perf_counter() - start, 1)}


def phase(baseline: bool, args: argparse.Namespace) -> dict[str, Any]:
    with slot_host("qstress", size="4G", plans=PLANS, apps=app_ports(2580, 2599)) as host:
        ctx = host.ctx()
        root = ctx.settings.slots_root
        if baseline:
            full_accounting(root)
        backend = (BaselineBtrfsQuota if baseline else BtrfsQuota)(root)
        try:
            r = run_stress(backend, root, clients=args.clients, cycles=args.cycles)
        finally:
            ctx.close()
        quota = {"operations": r.operations, "failed": len(r.errors), "errors": r.errors[:5],
                 "wall_s": round(r.wall_s, 1)}
        if baseline:
            # lifecycle uses the context's backend: make it the baseline's for this phase.
            from provisioner import context

            original = context.Context.quota
            context.Context.quota = property(lambda self: BaselineBtrfsQuota(self.settings.slots_root))  # type: ignore[assignment,method-assign]
            try:
                slots = slot_pairs(host, args.pairs, args.clients)
            finally:
                context.Context.quota = original  # type: ignore[method-assign]
        else:
            slots = slot_pairs(host, args.pairs, args.clients)
    return {"quota": quota, "slots": slots}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--cycles", type=int, default=100, help="quota cycles per client (4 operations each) [100]")
    ap.add_argument("--pairs", type=int, default=150, help="create+terminate slot pairs [150]")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "quota_stress.json")
    args = ap.parse_args()
    if shutil.which("btrfs") is None:
        sys.exit("btrfs-progs missing")
    results = {"slot-scoped": phase(False, args), "baseline": phase(True, args)}
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps({"clients": args.clients, "results": results}, indent=2) + "\n")
    print(f"{'backend':12} {'phase':6} {'ops':>6} {'failed':>7} {'wall s':>7}")
    for side, r in results.items():
        q, s = r["quota"], r["slots"]
        print(f"{side:12} {'quota':6} {q['operations']:>6} {q['failed']:>7} {q['wall_s']:>7}")
        print(f"{side:12} {'slots':6} {2 * s['pairs']:>6} {s['failed']:>7} {s['wall_s']:>7}")
        for e in r["quota"]["errors"][:2] + r["slots"]["errors"][:2]:
            print(f"  {side}: {e}")
    ok = results["slot-scoped"]["quota"]["failed"] == 0 and results["slot-scoped"]["slots"]["failed"] == 0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
