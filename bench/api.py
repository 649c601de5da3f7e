"""Benchmark the provisioning API: requests/s and p95 latency with 10 concurrent clients on loopback.

Two workloads, each measured through HTTP (``slotctl api serve`` on 127.0.0.1) and, as the
baseline in the same run, by calling the same provisioner functions directly in 10 threads:

- ``usage``: ``GET /v1/slots/{username}/usage`` over a pool of existing slots (read);
- ``create+terminate``: ``POST /v1/slots`` then ``DELETE /v1/slots/{username}`` (a pair).

The ratio API/direct is the cost of the HTTP layer (auth, audit, JSON, a store connection per
request). Needs root (real users, a btrfs loop image); everything is made under /tmp/swl-* and
removed at the end. Run: ``sudo .venv/bin/python bench/api.py [--usage N] [--pairs N]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provisioner import operations
from provisioner.slots import Created
from tests.system.fixtures.api import ApiServer, api_server
from tests.system.fixtures.hosts import PLANS, SlotHost, app_ports, new_name, slot_host

CLIENTS = 10


def measure(n: int, op: Callable[[int], None], clients: int = CLIENTS) -> dict[str, float]:
    """Run OP(i) for i in range(N) on CLIENTS threads; requests/s and latency percentiles (ms)."""
    latencies: list[float] = []

    def one(i: int) -> None:
        t = time.perf_counter()
        op(i)
        latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(n)))
    wall = time.perf_counter() - start
    latencies.sort()
    return {"n": n, "per_s": round(n / wall, 1), "p50_ms": round(statistics.median(latencies) * 1000, 1),
            "p95_ms": round(latencies[int(0.95 * (n - 1))] * 1000, 1), "wall_s": round(wall, 2)}


def bench_usage(host: SlotHost, api: ApiServer, names: list[str], n: int) -> dict[str, dict[str, float]]:
    clients = [api.client() for _ in range(CLIENTS)]

    def via_api(i: int) -> None:
        r = clients[i % CLIENTS].get(f"/v1/slots/{names[i % len(names)]}/usage")
        assert r.status_code == 200, r.text

    def direct(i: int) -> None:
        ctx = host.ctx()
        try:
            operations.slot_status(ctx, names[i % len(names)])
        finally:
            ctx.close()

    measure(CLIENTS * 2, via_api)  # warm the connections
    out = {"api": measure(n, via_api), "direct": measure(n, direct)}
    for c in clients:
        c.close()
    return out


def bench_pairs(host: SlotHost, api: ApiServer, n: int) -> dict[str, dict[str, float]]:
    clients = [api.client() for _ in range(CLIENTS)]

    def via_api(i: int) -> None:
        c = clients[i % CLIENTS]
        name = new_name()
        r = c.post("/v1/slots", json={"username": name, "email": "b@example.com", "country": "DE", "plan": "small"})
        assert r.status_code == 201, r.text
        r = c.delete(f"/v1/slots/{name}")
        assert r.status_code == 200, r.text

    def direct(i: int) -> None:
        ctx = host.ctx()
        try:
            name = new_name()
            assert isinstance(operations.create_slot(ctx, name, "b@example.com", "DE", plan="small"), Created)
            operations.remove_slot(ctx, name)
        finally:
            ctx.close()

    out = {"api": measure(n, via_api), "direct": measure(n, direct)}
    for c in clients:
        c.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--usage", type=int, default=2000, help="usage requests per side [2000]")
    ap.add_argument("--pairs", type=int, default=100, help="create+terminate pairs per side [100]")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "api.json")
    args = ap.parse_args()
    with slot_host("apibench", size="4G", plans=PLANS, apps=app_ports(2580, 2599)) as host, api_server(host) as api:
        names = [new_name() for _ in range(20)]
        with api.client() as c:
            for name in names:
                assert c.post("/v1/slots", json={"username": name, "email": "b@example.com", "country": "DE",
                                                 "plan": "small"}).status_code == 201
        results = {"usage": bench_usage(host, api, names, args.usage),
                   "create+terminate": bench_pairs(host, api, args.pairs)}
    for sides in results.values():
        sides["ratio"] = {"per_s": round(sides["api"]["per_s"] / sides["direct"]["per_s"], 2),
                          "p95": round(sides["api"]["p95_ms"] / sides["direct"]["p95_ms"], 2)}
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps({"clients": CLIENTS, "results": results}, indent=2) + "\n")
    print(f"{'workload':18} {'side':7} {'n':>5} {'per s':>8} {'p50 ms':>8} {'p95 ms':>8}")
    for workload, sides in results.items():
        for side in ("api", "direct"):
            r = sides[side]
            print(f"{workload:18} {side:7} {r['n']:>5} {r['per_s']:>8} {r['p50_ms']:>8} {r['p95_ms']:>8}")
        print(f"{workload:18} ratio api/direct: throughput {sides['ratio']['per_s']}, p95 {sides['ratio']['p95']}")


if __name__ == "__main__":
    main()
