"""Benchmark: N slots on one host through the fleet path vs. the local path, in one script.

    sudo .venv/bin/python bench/fleet.py            # N=100
    sudo .venv/bin/python bench/fleet.py --count 20
    sudo .venv/bin/python bench/fleet.py --placement --count 1000 --hosts 5 --clients 4 [--inventory-first]

``--placement`` (bench/fleet_placement.py) measures the controller instead: N slots across
HOSTS lab hosts (network namespaces, each serving its API over TLS), first through the
controller's API (``POST /v1/slots`` without a host, CLIENTS connections at once: each
purchase placed by the rule), then the same N through ``slotctl --inventory ... slot
create-many --host H`` once per host (round robin, ansible-runner, ``ansible_connection=local``
with the host's own config), slots removed on the hosts in between (not timed). Writes
bench/out/fleet_placement.json.

Prepares a throw-away lab host with playbooks/site.yml (ansible_connection=local, every path
in a temp dir: venv, config, state, a btrfs loopback image), then creates and removes the same
N slots twice with each path, in ABBA order (local, fleet, fleet, local) with btrfs's cleaner
drained in between: the local executor (the provisioner in-process, as ``slotctl slot
create-many`` does) and the fleet executor (ansible-runner running slot.yml: one
slotwarden_slot call for the whole batch). Prints the mean wall times and the ratio (goal:
fleet within 2x of local) and writes them to bench/out/fleet.json.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provisioner.config import load_config
from provisioner.context import Context
from provisioner.executors import SlotChange
from provisioner.executors.ansible import AnsibleExecutor
from provisioner.executors.local import LocalExecutor
from provisioner.operations import remove_slot

TOP = Path(__file__).resolve().parents[1]


def lab_inventory(root: Path) -> Path:
    v = {
        "slotwarden_prefix": root / "opt", "slotwarden_config": root / "etc/slotwarden.toml",
        "slotwarden_state_dir": root / "state", "slotwarden_loopback_image": root / "slots.img",
        "slotwarden_loopback_size": "2G", "slotwarden_loopback_root": root / "slots",
        "slotwarden_persist": "false", "slotwarden_link_slotctl": "false",
        "slotwarden_sshd_dropin": root / "sshd/50-slotwarden.conf", "slotwarden_sshd_reload": "false",
        # a venv under root/opt: a package would install host-wide
        "slotwarden_install": "wheelhouse", "slotwarden_wheelhouse": root / "wheelhouse",
        # this machine's own PAM stack and guard are not the bench's to change
        "slotwarden_guard": "false",
    }
    (root / "sshd").mkdir()
    inv = root / "inventory.ini"
    inv.write_text("[slotwarden]\nbench ansible_connection=local\n[slotwarden:vars]\n"
                   + "".join(f"{k}={val}\n" for k, val in v.items()))
    return inv


def cleanup(root: Path) -> None:
    cfg = root / "etc/slotwarden.toml"
    if cfg.exists():
        ctx = Context(load_config(cfg))
        for rec in ctx.store.list_slots():
            try:
                remove_slot(ctx, rec.username)
            except Exception as exc:  # keep going: the rest must go too
                print(f"cleanup: {rec.username}: {exc}", file=sys.stderr)
    if os.path.ismount(root / "slots"):
        subprocess.run(["umount", str(root / "slots")], check=False)
    shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--placement", action="store_true", help="controller API vs slotctl --inventory, many hosts")
    ap.add_argument("--hosts", type=int, default=5, help="with --placement: lab hosts")
    ap.add_argument("--clients", type=int, default=4, help="with --placement: concurrent API connections")
    ap.add_argument("--inventory-first", action="store_true", help="with --placement: the inventory path first")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/fleet.py needs root (it creates real users)", file=sys.stderr)
        return 2
    if args.placement:
        sys.path.insert(0, str(TOP))
        from bench.fleet_placement import run

        result = run(args.count, args.hosts, args.clients, args.inventory_first)
        (TOP / "bench/out").mkdir(parents=True, exist_ok=True)
        (TOP / "bench/out/fleet_placement.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return 0
    root = Path(tempfile.mkdtemp(prefix="swf-bench-", dir="/tmp"))
    os.chmod(root, 0o755)
    try:
        inv = lab_inventory(root)
        t = time.monotonic()
        prep = AnsibleExecutor(inv, ["bench"]).prepare()
        if prep.status != "successful":
            print(f"site.yml failed: {prep.hosts}", file=sys.stderr)
            return 1
        site_s = time.monotonic() - t
        tag = secrets.token_hex(2)
        names = [f"tf{tag}{i:03d}" for i in range(args.count)]
        create = [SlotChange(n, email=f"{n}@example.com", country="DE", quota="16M") for n in names]
        remove = [SlotChange(n, "absent") for n in names]
        ctx = Context(load_config(root / "etc/slotwarden.toml"))
        local = LocalExecutor(ctx, "bench")

        fleet = AnsibleExecutor(inv, ["bench"])
        paths = {"local": local, "fleet": fleet}
        times: dict[str, list[float]] = {"local": [], "fleet": []}
        rm_times: dict[str, list[float]] = {"local": [], "fleet": []}
        # ABBA order, and btrfs's cleaner drained between phases, so neither path pays for
        # the other's deleted subvolumes or gains from running first.
        for which in ("local", "fleet", "fleet", "local"):
            ex = paths[which]
            subprocess.run(["btrfs", "subvolume", "sync", str(root / "slots")], check=True, capture_output=True)
            t = time.monotonic()
            out = ex.apply(create)
            times[which].append(time.monotonic() - t)
            assert all(o.action == "created" and o.password for o in out), [o for o in out if not o.ok][:3]
            t = time.monotonic()
            assert all(o.action == "removed" for o in ex.apply(remove))
            rm_times[which].append(time.monotonic() - t)

        local_s, fleet_s = (sum(times[k]) / len(times[k]) for k in ("local", "fleet"))
        local_rm_s, fleet_rm_s = (sum(rm_times[k]) / len(rm_times[k]) for k in ("local", "fleet"))
        result = {
            "count": args.count, "site_yml_first_run_s": round(site_s, 2),
            "local_create_s": [round(x, 2) for x in times["local"]],
            "fleet_create_s": [round(x, 2) for x in times["fleet"]],
            "create_ratio": round(fleet_s / local_s, 2),
            "local_remove_s": [round(x, 2) for x in rm_times["local"]],
            "fleet_remove_s": [round(x, 2) for x in rm_times["fleet"]],
            "remove_ratio": round(fleet_rm_s / local_rm_s, 2),
            "command": f"sudo .venv/bin/python bench/fleet.py --count {args.count}",
        }
        (TOP / "bench/out").mkdir(parents=True, exist_ok=True)
        (TOP / "bench/out/fleet.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"{args.count} slots, one host (mean of 2): local {local_s:.1f} s, fleet {fleet_s:.1f} s, "
              f"ratio {fleet_s / local_s:.2f}x (goal <= 2x)")
        print(f"remove: local {local_rm_s:.1f} s, fleet {fleet_rm_s:.1f} s, ratio {fleet_rm_s / local_rm_s:.2f}x")
        return 0
    finally:
        cleanup(root)


if __name__ == "__main__":
    sys.exit(main())
