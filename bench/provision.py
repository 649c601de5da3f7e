"""Provisioning throughput against the floor of the bare commands, side by side in one script.

For N slots (quota included), time:
- floor: ``useradd`` + ``chpasswd`` + ``btrfs subvolume create`` + ``btrfs qgroup limit`` +
  ``chown``/``chmod`` for the same N, run as bare subprocesses;
- slotwarden: :func:`provisioner.create_slot` (validation, plan, store, audit, skeleton, all of it).
The two alternate in rounds on the same fresh btrfs loop filesystem, so a noisy neighbour hits
both alike. Then both sets are removed (slotwarden through :func:`remove_slot`, timed).

    sudo .venv/bin/python bench/provision.py --n 200 --rounds 4 --bulk 1000

``--bulk M`` then times ``create_many`` (the ``slot create-many`` path: one ``newusers`` run per
chunk) for M slots, and their removal with ``remove_many`` (the ``slot remove-many`` path).
Side by side, ``--one-by-one K`` bulk-creates K more slots and removes them one by one with
``remove_slot`` (what ``slot remove`` does), the baseline of the batch removal.

    sudo .venv/bin/python bench/provision.py --n 200 --rounds 4 --bulk 1000 --one-by-one 100

``--front-door M`` prices the front door itself: M slots through :func:`provisioner.create_many`
(a lock per slot) against M through ``slots.apply_create_many`` (the same work, no lock), in two
alternating rounds.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provisioner import slots
from provisioner.accounts import generate_password
from provisioner.config import load_config
from provisioner.context import Context
from provisioner.host import host_init, parse_host_request
from provisioner.operations import BatchRow, Created, Removed, create_many, create_slot, remove_many, remove_slot


def sh(*argv: str, stdin: str | None = None) -> None:
    subprocess.run(argv, input=stdin, text=True, check=True, capture_output=True)


def floor_create(root: Path, name: str) -> None:
    home = root / name
    sh("useradd", "--user-group", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/bash", name)
    sh("chpasswd", stdin=f"{name}:{generate_password()}\n")
    sh("btrfs", "subvolume", "create", str(home))
    sh("btrfs", "qgroup", "limit", "64M", str(home))
    sh("chown", f"{name}:{name}", str(home))
    sh("chmod", "0700", str(home))


def floor_remove(root: Path, name: str) -> None:
    sh("btrfs", "subvolume", "delete", str(root / name))
    sh("userdel", name)


def front_door(ctx: Context, tag: str, m: int, made: list[str]) -> dict[str, Any]:
    """The front door's own cost: create_many (locks) against the unlocked apply_create_many, side by side."""
    times: dict[str, list[float]] = {"front_door": [], "unlocked": []}
    half = m // 2
    for r in range(2):
        for side in (("front_door", "unlocked") if r == 0 else ("unlocked", "front_door")):
            prefix = "bd" if side == "front_door" else "bu"
            rows = [BatchRow(f"{prefix}{tag}{r}{i:05d}", "bench@example.com", "DE", "64M") for i in range(half)]
            t0 = time.perf_counter()
            out = create_many(ctx, rows) if side == "front_door" else slots.apply_create_many(ctx, rows)
            times[side].append(time.perf_counter() - t0)
            made += [row.username for row in rows]
            assert all(isinstance(o, Created) for o in out)
        gone = remove_many(ctx, list(made))
        assert all(isinstance(o, Removed) for o in gone)
        made.clear()
    return {"n": 2 * half, **{k: round(sum(v), 2) for k, v in times.items()},
            "ratio": round(sum(times["front_door"]) / sum(times["unlocked"]), 3),
            "ratio_per_round": [round(a / b, 3) for a, b in zip(times["front_door"], times["unlocked"], strict=True)]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="slots per side")
    ap.add_argument("--rounds", type=int, default=4, help="alternations of floor and slotwarden")
    ap.add_argument("--size", default="8G", help="loop image size")
    ap.add_argument("--bulk", type=int, default=0, help="then create this many slots with create_many")
    ap.add_argument("--one-by-one", type=int, default=0, help="bulk-create this many and remove them one by one")
    ap.add_argument("--front-door", type=int, default=0,
                    help="create this many through the front door (create_many, a lock per slot) and as many "
                         "through slots.apply_create_many (no locks), alternating in 2 rounds")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="slotwarden-bench-", dir="/tmp"))
    base.chmod(0o755)
    cfg_path = base / "c.toml"
    cfg_path.write_text(f'state_dir = "{base / "state"}"\n')
    ctx = Context(load_config(cfg_path))
    host_init(ctx, parse_host_request(ctx, str(base / "slots"), "btrfs", str(base / "img"), args.size, None, False))
    root = base / "slots"
    tag = secrets.token_hex(2)
    per_round = args.n // args.rounds
    floor_names: list[str] = []
    ours_names: list[str] = []
    t_floor: list[float] = []
    t_ours: list[float] = []
    try:
        for r in range(args.rounds):
            names = [f"bf{tag}{r:02d}{i:04d}" for i in range(per_round)]
            t0 = time.perf_counter()
            for n in names:
                floor_create(root, n)
            t_floor.append(time.perf_counter() - t0)
            floor_names += names
            names = [f"bs{tag}{r:02d}{i:04d}" for i in range(per_round)]
            t0 = time.perf_counter()
            for n in names:
                create_slot(ctx, n, "bench@example.com", "DE", "64M")
            t_ours.append(time.perf_counter() - t0)
            ours_names += names
        t0 = time.perf_counter()
        removed = remove_many(ctx, ours_names)
        t_remove = time.perf_counter() - t0
        assert all(isinstance(o, Removed) for o in removed)
        ours_names = []
        bulk: dict[str, float] = {}
        if args.bulk:
            rows = [BatchRow(f"bm{tag}{i:05d}", "bench@example.com", "DE", "64M") for i in range(args.bulk)]
            t0 = time.perf_counter()
            out = create_many(ctx, rows)
            bulk["create_s"] = round(time.perf_counter() - t0, 2)
            ours_names = [r.username for r in rows]
            assert all(isinstance(o, Created) for o in out), [o for o in out if not isinstance(o, Created)][:3]
            t0 = time.perf_counter()
            gone = remove_many(ctx, list(ours_names))
            bulk["remove_many_s"] = round(time.perf_counter() - t0, 2)
            assert all(isinstance(o, Removed) for o in gone), [o for o in gone if not isinstance(o, Removed)][:3]
            ours_names = []
        if args.one_by_one:
            rows = [BatchRow(f"bo{tag}{i:05d}", "bench@example.com", "DE", "64M") for i in range(args.one_by_one)]
            out = create_many(ctx, rows)
            assert all(isinstance(o, Created) for o in out)
            ours_names = [r.username for r in rows]
            t0 = time.perf_counter()
            for n in list(ours_names):
                remove_slot(ctx, n)
                ours_names.remove(n)
            one = time.perf_counter() - t0
            bulk["one_by_one"] = {"n": args.one_by_one, "remove_s": round(one, 2),
                                  "per_slot_ms": round(1000 * one / args.one_by_one, 1)}
        if args.front_door:
            bulk["front_door"] = front_door(ctx, tag, args.front_door, ours_names)
    finally:
        for n in ours_names:
            try:
                remove_slot(ctx, n)
            except Exception as exc:
                print(f"cleanup {n}: {exc}", file=sys.stderr)
        for n in floor_names:
            subprocess.run(["btrfs", "subvolume", "delete", str(root / n)], capture_output=True)
            subprocess.run(["userdel", n], capture_output=True)
        ctx.close()
        subprocess.run(["umount", str(root)], check=False)
        subprocess.run(["rm", "-rf", str(base)], check=False)
    n_total = per_round * args.rounds
    floor_s, ours_s = sum(t_floor), sum(t_ours)
    ratios = [o / f for o, f in zip(t_ours, t_floor, strict=True)]
    result = {
        "n": n_total,
        "floor_slots_per_s": round(n_total / floor_s, 1),
        "slotwarden_slots_per_s": round(n_total / ours_s, 1),
        "ratio_total": round(ours_s / floor_s, 3),
        "ratio_per_round_median": round(statistics.median(ratios), 3),
        "ratio_per_round": [round(x, 3) for x in ratios],
        "slotwarden_create_s": round(ours_s, 2),
        "slotwarden_remove_many_slots_per_s": round(n_total / t_remove, 1),
    }
    if "create_s" in bulk:
        bulk["slots_per_s"] = round(args.bulk / bulk["create_s"], 1)
    if "remove_many_s" in bulk and "one_by_one" in bulk:
        per_many = bulk["remove_many_s"] / args.bulk
        per_one = bulk["one_by_one"]["remove_s"] / args.one_by_one
        bulk["remove_many_speedup_per_slot"] = round(per_one / per_many, 1)
    if bulk:
        result["bulk"] = {"n": args.bulk, **bulk}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
