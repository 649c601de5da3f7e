"""The store engine's own cost: the same statements through raw sqlite3 and through provisioner.db.

For N rounds, each side runs, on its own fresh WAL store with the same pragmas: one audit
insert, one slot read by primary key, one upsert (``host_settings``) and one short write
transaction (``BEGIN IMMEDIATE`` … ``COMMIT``). The two sides alternate in R rounds so a noisy
neighbour hits both alike; the figure is the ratio engine / raw of this process's CPU time
(wall time on a shared disk is mostly other people's I/O), per round and in total. The stores
live in ``--dir`` (default /dev/shm: the engine's cost, not the disk's).

    .venv/bin/python bench/store.py --n 2000 --rounds 10
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provisioner.db import connect, upgrade

SLOT = ("alice", 70001, "alice@example.com", "DE", None, 2**30, "/srv/slots/alice", "active", 1.0)


def raw(path: Path) -> Any:
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    conn.row_factory = sqlite3.Row
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
        conn.execute(f"PRAGMA {pragma}")
    return conn


def work(db: Any, n: int) -> float:
    """N rounds of the four statements on DB (a sqlite3 connection or a Database); CPU seconds."""
    t0 = time.process_time()
    for i in range(n):
        db.execute("INSERT INTO audit (at, actor, action, username, detail) VALUES (?, ?, ?, ?, ?)",
                   (time.time(), "root", "bench", "alice", "{}"))
        db.execute("SELECT * FROM slots WHERE username = ?", ("alice",)).fetchone()
        db.execute("INSERT INTO host_settings (key, value) VALUES (?, ?) "
                   "ON CONFLICT(key) DO UPDATE SET value = excluded.value", ("k", str(i)))
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE slots SET quota_bytes = ? WHERE username = ?", (i, "alice"))
        db.execute("COMMIT")
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--dir", default="/dev/shm")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        base = connect(str(Path(tmp) / "engine.db"))
        upgrade(base)
        base.execute("INSERT INTO slots VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", SLOT)
        plain = raw(Path(tmp) / "raw.db")
        upgrade(connect(str(Path(tmp) / "raw.db")))
        plain.execute("INSERT INTO slots VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", SLOT)
        totals = {"raw": 0.0, "engine": 0.0}
        for r in range(args.rounds):
            t_raw = work(plain, args.n)
            t_engine = work(base, args.n)
            totals["raw"] += t_raw
            totals["engine"] += t_engine
            print(f"round {r + 1}: raw {t_raw:.3f} s CPU, engine {t_engine:.3f} s, ratio {t_engine / t_raw:.3f}")
        print(f"total: raw {totals['raw']:.3f} s, engine {totals['engine']:.3f} s, "
              f"ratio {totals['engine'] / totals['raw']:.3f} ({args.n * args.rounds} rounds of 6 statements)")


if __name__ == "__main__":
    main()
