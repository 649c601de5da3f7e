"""The guard's shared store: decision latency local vs shared, and lock propagation over 3 lab hosts.

Lab (root): the lab PostgreSQL 15 in its own network namespace (tests/system/fixtures/postgres.py),
three lab hosts each with its own guard service sharing it (``[guard] store``), and a fourth
host whose guard has no shared store (its SQLite store only) - the baseline, same machine, same
run. Each attempt is what the PAM module sends over the guard's socket:

- ``fail``    - a wrong password: ``AUTH`` (the reservation) then ``FAIL``;
- ``success`` - the right one: ``AUTH``, ``SUCC``, then ``ACCT`` (the account phase).

Attempts are interleaved round-robin (local, shared, shared, local, ...), each for a new
(user, address) pair so no limit is reached; wall time per attempt around the socket calls.
*Added* is the median (p95) over rounds of (shared - local of the same round).

Propagation: ``pair_deny`` wrong passwords on host 1 lock a pair; the clock starts when the
locking request returns there, and stops at the first refusal on host 2 and host 3 (asked at
once and then every 5 ms) - for a password try (``AUTH``), a key login (``ACCT``), and in the
host's own SQLite copy (pulled every tick: what it would refuse with while the store is down).

    sudo .venv/bin/python bench/guard_shared.py --attempts 1000 --locks 20
    sudo PSYCOPG_IMPL=python .venv/bin/python bench/guard_shared.py ...   # psycopg as Debian ships it
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg

from pam_hooks.client import request
from tests.system.fixtures.guard import GuardEnv
from tests.system.fixtures.guard_fleet import GuardFleet, guard_fleet

PAIR_DENY = 3
SETTINGS = {"pair_deny": PAIR_DENY, "ip_deny": 1_000_000, "user_deny": 1_000_000}


def attempt(sock: Path, kind: str, user: str, ip: str) -> float:
    t0 = time.perf_counter()
    r = request(sock, f"AUTH\tsshd\t{user}\t{ip}")
    assert r.startswith("ALLOW "), r
    token = r.split()[1]
    if kind == "fail":
        assert request(sock, f"FAIL\t{token}") == "OK"
    else:
        assert request(sock, f"SUCC\t{token}") == "OK"
        assert request(sock, f"ACCT\tsshd\t{user}\t{ip}") == "ALLOW"
    return (time.perf_counter() - t0) * 1000


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))]


def latency(fleet: GuardFleet, local: GuardEnv, n: int) -> None:
    shared_sock, local_sock = fleet.guards[0].cfg.socket, local.cfg.socket
    for kind in ("fail", "success"):
        loc: list[float] = []
        sh: list[float] = []
        for i in range(n):
            user, ip = f"b{kind[0]}{i}", f"198.51.100.{200 + i % 50}"
            order = [(loc, local_sock), (sh, shared_sock)]
            for out, sock in (order if i % 2 == 0 else order[::-1]):
                out.append(attempt(sock, kind, user + ("s" if sock == shared_sock else "l"), ip))
        added = [s - x for s, x in zip(sh, loc, strict=True)]
        print(f"| {kind} ({n} attempts) | {statistics.median(loc):.3f} / {pct(loc, .95):.3f} ms |"
              f" {statistics.median(sh):.3f} / {pct(sh, .95):.3f} ms |"
              f" **{statistics.median(added):+.3f} ms** ({pct(added, .95):+.3f}) |")


def local_copy_has(g: GuardEnv, key: str) -> bool:
    conn = sqlite3.connect(f"file:{g.cfg.db_path}?mode=ro", uri=True, timeout=5)
    try:
        row = conn.execute("SELECT locked_until FROM locks WHERE kind = 'pair' AND key = ?", (key,)).fetchone()
        return row is not None and row[0] > time.time()
    finally:
        conn.close()


def refused(fleet: GuardFleet, probe: str, i: int, user: str, ip: str) -> bool:
    if probe == "AUTH":
        return fleet.auth(i, user, ip).startswith("DENY")
    if probe == "ACCT":
        return fleet.send(i, f"ACCT\tsshd\t{user}\t{ip}").startswith("DENY")
    return local_copy_has(fleet.guards[i], f"{user}\t{ip}")


def propagation(fleet: GuardFleet, rounds: int) -> None:
    """Each round locks a new pair on host 1 and times one kind of probe on hosts 2 and 3."""
    res: dict[str, list[float]] = {"AUTH": [], "ACCT": [], "local copy": []}
    for r in range(rounds * len(res)):
        probe = list(res)[r % len(res)]
        user, ip = f"p{r}", f"198.51.100.{150 + r % 40}"
        for _ in range(PAIR_DENY):
            fleet.fail(0, user, ip)  # the last check sets the lock
        t0 = time.perf_counter()
        for i in (1, 2):
            while not refused(fleet, probe, i, user, ip):
                if time.perf_counter() - t0 > 10:
                    raise SystemExit(f"no refusal on host {i + 1} ({probe}) after 10 s")
                time.sleep(0.005)
            res[probe].append((time.perf_counter() - t0) * 1000)
    for name, xs in res.items():
        print(f"| {name} | {statistics.median(xs):.1f} ms | {pct(xs, .95):.1f} ms | {max(xs):.1f} ms |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attempts", type=int, default=1000)
    ap.add_argument("--locks", type=int, default=20)
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (lab network namespaces, PostgreSQL as postgres)")
    with guard_fleet(3, SETTINGS) as fleet:
        solo = fleet.pg.net.host("solo", "198.51.100.30")
        local = GuardEnv(SETTINGS, netns=solo.netns)
        try:
            local.start()
            print(f"load {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%MZ', time.gmtime())},"
                  f" psycopg {psycopg.__version__} ({os.environ.get('PSYCOPG_IMPL') or psycopg.pq.__impl__})")
            print("| attempt | local p50 / p95 | shared p50 / p95 | added p50 (p95) |\n|---|---|---|---|")
            latency(fleet, local, a.attempts)
            print(f"\n| lock on host 1 refused on hosts 2 and 3 ({a.locks} locks x 2 hosts) | median | p95 | max |"
                  "\n|---|---|---|---|")
            propagation(fleet, a.locks)
            for i, g in enumerate(fleet.guards):
                st = g.json("stats")
                print(f"host {i + 1}: {st['requests']} requests, slow (>100 ms) {st['slow']}")
        finally:
            local.close()


if __name__ == "__main__":
    main()
