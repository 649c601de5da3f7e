"""Build the 0.1 store fixture: a store made by slotwarden 0.1 (main at 5d4827e) with rows in every table.

Run once with the 0.1 code (``git worktree add /tmp/v01 5d4827e && cd /tmp/v01 &&
python tests/data/make_store_v0_1.py tests/data/store-v0.1.sql``); the SQL dump it writes is
what ``tests/unit/provisioner/test_db_upgrade.py`` loads. It needs the 0.1 modules' ``SCHEMA``
strings, so it does not run against later code: the dump is the fixture, this is how it was made.
Rows carry awkward values on purpose (quotes, NUL-free control bytes, non-ASCII, blobs, NULLs,
big integers, float timestamps) so that a lossy copy shows.
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
from pathlib import Path

from provisioner import lifecycle, notices, support
from provisioner.api import idempotency, tokens
from provisioner.apps import registry
from provisioner.hub import history, sessions, totp
from provisioner.limits import steps
from provisioner.store import Store

T = 1_795_000_000.123456
ROWS: dict[str, list[tuple[object, ...]]] = {
    "slots": [("alice", 60001, "alice@example.com", "DE", "PAYPAL-1'x", 5 * 2**40, "/srv/slots/alice", "active", T),
              ("bob", None, "b\u00f6b@example.com", "FR", None, None, "/srv/slots/bob", "suspended", T + 1)],
    "audit": [(1, T, "root (via sudo)", "slot.create", "alice", '{"quota": 1073741824}'),
              (2, T + 2, "root", "host.init", None, '{"note": "tab\\there \\"q\\""}')],
    "host_settings": [("quota_backend", "btrfs"), ("slot_root", "/srv/slots")],
    "slot_ids": [(60001, "alice", T, None), (60002, "carol", T, T + 5)],
    "kept_homes": [("/srv/kept/carol-1", "carol", T + 5)],
    "slot_lifecycle": [("alice", "two", None, None, None, None),
                       ("bob", "one", T + 3, "unpaid; \u2014 invoice 7", "billing", '{"shell": "/bin/bash"}')],
    "app_installs": [("alice", "jupyterlab", "installed", "4.2.1", T), ("alice", "wordpress", "installing", None, T)],
    "app_ports": [(20001, "alice", "jupyterlab", "http"), (65535, "alice", "wordpress", "http")],
    "app_credentials": [("alice", "jupyterlab", b"\x00\x01nonce\xff", b"\xde\xad\xbe\xef" * 8, T)],
    "api_tokens": [("billing", "ab" * 32, T, None), ("old", "cd" * 32, T, T + 9)],
    "api_idempotency": [("billing", "k-1", "ef" * 32, "done", 201, '{"username": "alice"}', T),
                        ("billing", "k-2", "01" * 32, "pending", None, None, T)],
    "hub_sessions": [("12" * 32, "alice", "tenant", T, T + 60, "198.51.100.7", "Mozilla/5.0 \"x\"", "csrf-1")],
    "hub_logins": [(1, T, "alice", "198.51.100.7", 1, "ok"), (2, T + 1, "al<b>ice", "2001:db8::1", 0, "bad password")],
    "hub_history": [("alice", "minute", 0, T, 3, 1.5e9, 0.0, 12.0, 3.25, 4.0e10, None, 7.0)],
    "hub_totp": [("alice", b"n" * 12, b"sealed\x00bytes", 1, T, 59833333, '["h1", "h2"]', 2, T + 4)],
    "support_grants": [(1, "alice", "staff1", "ticket #42", 0, 3600, "active", T, T + 1, T + 3601, None, None,
                        "/run/slotwarden/support/1"),
                       (2, "bob", "staff2", "look", 1, 600, "refused", T, T + 2, None, T + 2, "bob", None)],
    "notices": [(1, "alice", "public_html/x.mp4", "DMCA-7", "quarantined", T, T + 86400, T + 86401, "aa" * 32,
                 2**33, "/var/lib/slotwarden/quarantine/1", None, None, None),
                (2, "bob", "caf\u00e9/\u65e5\u672c.txt", "ref", "closed", T, T + 86400, None, None, None, None, T + 9,
                 "root", "withdrawn")],
    "slot_limits": [("alice", '{"cpu": 1.5, "memory": 1073741824}', "cgroup_v1", T)],
    "health_probe": [(1, T)],
}


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "slotwarden.db")
        for mod in (lifecycle, registry, tokens, idempotency, sessions, history, totp, support, notices, steps):
            store.ensure_schema(mod.SCHEMA)
        store.ensure_schema("CREATE TABLE IF NOT EXISTS health_probe (id INTEGER PRIMARY KEY, at REAL NOT NULL)")
        for table, rows in ROWS.items():
            marks = ", ".join("?" * len(rows[0]))
            store.db.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
        tables = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = tables - set(ROWS) - {"sqlite_sequence"}
        if missing:
            raise SystemExit(f"tables without rows: {sorted(missing)}")
        dump = "\n".join(sqlite3.connect(str(store.path)).iterdump()) + "\n"
        store.close()
    out.write_text(dump)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
