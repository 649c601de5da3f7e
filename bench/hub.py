"""Benchmark the Hub: page p95 with 500 slots on the host vs a static page on the same stack, and
the cost of a login beyond PAM's own password hash.

Everything runs for real (root): a btrfs loop host, 500 slots (``slot create-many``), the
login guard, ``slotctl hub serve`` (nginx front door, unprivileged web process, root bridge).

- Pages: one client requests, round-robin so both sides see the same machine load,
  ``/robots.txt`` (a constant response: nginx + uvicorn + Starlette, no bridge) and the
  logged-in pages ``/overview`` (metrics + history of the slot through the bridge),
  ``/processes``, ``/apps``; p50/p95 of each and the ratio page/static.
- Login: in this process, alternating, the bridge's ``login`` operation (PAM, guard, session,
  audit) and PAM's check alone with the same arguments; the difference of the medians is what
  the Hub adds to PAM's own hash. Successful logins only (a refusal waits for the fixed floor).

Run: ``sudo .venv/bin/python bench/hub.py [--slots 500] [--requests 300] [--logins 40]``;
JSON in bench/out/hub.json. Everything is made under /tmp and removed at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.system.fixtures.hub import close_hub_lab, make_hub_lab


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return round(s[int(q * (len(s) - 1))] * 1000, 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slots", type=int, default=500)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--logins", type=int, default=40)
    args = ap.parse_args()
    lab = make_hub_lab("hubbench", history_every="5m", size="4G")
    try:
        csv = lab.host.base / "slots.csv"
        names = [lab.host.name() for _ in range(args.slots - 1)]
        csv.write_text("username,email,country,quota\n" + "".join(f"{n},{n}@example.com,DE,16M\n" for n in names))
        t = time.perf_counter()
        r = lab.host.slotctl("slot", "create-many", str(csv), "--json")
        assert r.returncode == 0, r.stderr[-500:]
        made = time.perf_counter() - t
        me = lab.create_slot()
        total = len(lab.host.ctx().store.list_slots())
        out: dict[str, object] = {"slots": total, "create_many_s": round(made, 1)}
        with lab.logged_in(me) as c:
            paths = ["/robots.txt", "/overview", "/processes", "/apps"]
            for p in paths:  # warm up
                assert c.get(p).status_code == 200, p
            lat: dict[str, list[float]] = {p: [] for p in paths}
            for _ in range(args.requests):
                for p in paths:
                    t = time.perf_counter()
                    resp = c.get(p)
                    lat[p].append(time.perf_counter() - t)
                    assert resp.status_code == 200
            static = pct(lat["/robots.txt"], 0.95)
            out["pages"] = {p: {"p50_ms": pct(v, 0.5), "p95_ms": pct(v, 0.95),
                                "p95_ratio_to_static": round(pct(v, 0.95) / static, 1)} for p, v in lat.items()}
        out["login"] = bench_login(lab, me, args.logins)
    finally:
        close_hub_lab(lab)
    Path("bench/out").mkdir(parents=True, exist_ok=True)
    Path("bench/out/hub.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


def bench_login(lab: object, username: str, n: int) -> dict[str, float]:
    from provisioner.config import load_config
    from provisioner.context import Context
    from provisioner.hub.auth import check_password
    from provisioner.hub.bridge import Bridge
    from provisioner.hub.config import hub_config

    config = load_config(lab.host.config_path)  # type: ignore[attr-defined]
    hub = hub_config(config)
    bridge = Bridge(config, hub)
    password = lab.passwords[username]  # type: ignore[attr-defined]
    full, pam_only = [], []
    for _ in range(n):
        t = time.perf_counter()
        assert check_password(hub.pam_service, username, password, "198.51.100.9").ok
        pam_only.append(time.perf_counter() - t)
        ctx = Context(config)
        t = time.perf_counter()
        reply = bridge.login(ctx, {"username": username, "password": password, "address": "198.51.100.9",
                                   "agent": "bench"})
        full.append(time.perf_counter() - t)
        ctx.close()
        assert reply["login"] == "ok", reply
    return {"n": n, "pam_median_ms": round(statistics.median(pam_only) * 1000, 2),
            "login_median_ms": round(statistics.median(full) * 1000, 2),
            "beyond_pam_ms": round((statistics.median(full) - statistics.median(pam_only)) * 1000, 2)}


if __name__ == "__main__":
    main()
