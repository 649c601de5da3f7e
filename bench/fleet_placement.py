"""The placement half of bench/fleet.py: N slots across H lab hosts, controller API vs. slotctl --inventory.

Run through ``bench/fleet.py --placement``; see that file and BENCHMARKS.md.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.system.fixtures.fleet import FleetApiLab, fleet_api_lab
from tests.system.fixtures.hosts import SLOTCTL

TOP = Path(__file__).resolve().parents[1]


def _remove_all(lab: FleetApiLab) -> None:
    """Remove every slot of every host, on the host (not timed), then let the controller learn it."""
    for h in lab.hosts.values():
        names = sorted(h.store_names())
        if names:
            listing = h.slot_host.base / "remove.txt"
            listing.write_text("\n".join(names) + "\n")
            r = h.slot_host.slotctl("slot", "remove-many", str(listing))
            assert r.returncode == 0, r.stderr[-2000:]
        subprocess.run(["btrfs", "subvolume", "sync", str(h.slot_host.slots_root)], check=True, capture_output=True)
    assert lab.controller.slotctl("fleet", "refresh").returncode == 0


def through_api(lab: FleetApiLab, names: list[str], clients: int) -> dict[str, Any]:
    """POST /v1/slots for every name, without a host, from CLIENTS keep-alive connections at once."""
    todo = list(names)
    lock = threading.Lock()
    placed: Counter[str] = Counter()
    failures: list[str] = []
    conns = [lab.controller.connect() for _ in range(clients)]

    def worker(i: int) -> None:
        conn = conns[i]
        while True:
            with lock:
                if not todo:
                    return
                name = todo.pop()
            body = {"username": name, "email": f"{name}@example.com", "country": "DE", "quota": "1M"}
            try:
                status, out = lab.controller.call("POST", "/v1/slots", body, key=f"b-{name}", conn=conn)
            except Exception as exc:  # a dropped connection: a new one, and the same key again
                conn.close()
                conn = lab.controller.connect()
                status, out = lab.controller.call("POST", "/v1/slots", body, key=f"b-{name}", conn=conn)
                failures.append(f"{name}: retried after {type(exc).__name__}")
            with lock:
                if status == 201:
                    placed[str(out["host"])] += 1
                else:
                    failures.append(f"{name}: {status} {out.get('error')}")

    t = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.monotonic() - t
    for c in conns:
        c.close()
    return {"seconds": round(elapsed, 1), "per_host": dict(sorted(placed.items())), "failures": failures[:5],
            "failed": sum(1 for f in failures if "retried" not in f)}


def through_inventory(lab: FleetApiLab, names: list[str], root: Path) -> dict[str, Any]:
    """``slotctl --inventory INV slot create-many HOST.csv --host HOST`` once per host (round robin)."""
    inv = root / "bench-inventory.ini"
    venv = Path(SLOTCTL).parent.parent
    inv.write_text("[slotwarden]\n" + "".join(
        f"{n} ansible_connection=local slotwarden_venv={venv} slotwarden_config={h.slot_host.config_path}\n"
        for n, h in lab.hosts.items()))
    hosts = list(lab.hosts)
    batches: dict[str, list[str]] = {n: [] for n in hosts}
    for i, name in enumerate(names):
        batches[hosts[i % len(hosts)]].append(name)
    env = {**os.environ, "SLOTWARDEN_CONFIG": str(lab.controller.config)}
    per_host: dict[str, float] = {}
    failed = 0
    t = time.monotonic()
    for host, batch in batches.items():
        path = root / f"{host}.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["username", "email", "country", "quota"])
            for n in batch:
                w.writerow([n, f"{n}@example.com", "DE", "1M"])
        h0 = time.monotonic()
        r = subprocess.run([SLOTCTL, "--inventory", str(inv), "slot", "create-many", str(path), "--host", host,
                            "--json"], env=env, capture_output=True, text=True, timeout=3600)
        per_host[host] = round(time.monotonic() - h0, 1)
        try:
            results = json.loads(r.stdout)["results"]
            failed += sum(1 for x in results if not x["ok"])
        except (ValueError, KeyError):
            raise RuntimeError(f"slotctl --inventory failed on {host}: {r.stderr[-2000:]}") from None
    return {"seconds": round(time.monotonic() - t, 1), "per_host_s": per_host, "failed": failed}


def run(count: int, host_count: int, clients: int, inventory_first: bool = False) -> dict[str, Any]:
    sizes = {f"h{i + 1}": "1G" for i in range(host_count)}
    with fleet_api_lab(sizes) as lab:
        root = lab.controller.base
        tag = secrets.token_hex(2)
        api_names = [f"{lab.prefix}s{tag}a{i:04d}" for i in range(count)]
        inv_names = [f"{lab.prefix}s{tag}b{i:04d}" for i in range(count)]
        if inventory_first:  # the second sample runs the other way round (neither gains from going first)
            ansible = through_inventory(lab, inv_names, root)
            _remove_all(lab)
            api = through_api(lab, api_names, clients)
            _remove_all(lab)
        else:
            api = through_api(lab, api_names, clients)
            _remove_all(lab)
            ansible = through_inventory(lab, inv_names, root)
            _remove_all(lab)
        return {
            "count": count, "hosts": host_count, "api_clients": clients,
            "api": api, "inventory": ansible,
            "api_per_slot_ms": round(api["seconds"] * 1000 / count, 1),
            "inventory_per_slot_ms": round(ansible["seconds"] * 1000 / count, 1),
            "ratio_api_over_inventory": round(api["seconds"] / ansible["seconds"], 2),
            "order": "inventory, api" if inventory_first else "api, inventory",
            "command": f"sudo .venv/bin/python bench/fleet.py --placement --count {count} --hosts {host_count} "
                       f"--clients {clients}" + (" --inventory-first" if inventory_first else ""),
        }
