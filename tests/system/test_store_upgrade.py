"""A host whose store slotwarden 0.1 made: refused until upgraded, and `slotctl host init` upgrades it (root)."""

from __future__ import annotations

import secrets
import sqlite3
import tempfile
from pathlib import Path

import pytest

from provisioner.db import LATEST, SchemaError, connect, current_version, upgrade
from tests.system.fixtures.hosts import SlotHost, make_slot_host, teardown_slot_host

pytestmark = pytest.mark.root

FIXTURE = Path(__file__).parents[1] / "data" / "store-v0.1.sql"


def test_host_init_upgrades_a_0_1_store_keeping_its_rows() -> None:
    base = Path(tempfile.mkdtemp(prefix="swsu-"))
    prefix = f"swsu{secrets.token_hex(2)}"
    (base / "state").mkdir(mode=0o700)
    conn = sqlite3.connect(base / "state" / "slotwarden.db")
    conn.executescript(FIXTURE.read_text())
    conn.close()
    host = SlotHost(base, prefix, base / "slots")
    try:
        # The library path refuses the old store before touching anything (no image made).
        with pytest.raises(SchemaError, match="run 'slotctl db upgrade'"):
            make_slot_host(base, prefix)
        assert not (base / "slots.img").exists()
        r = host.slotctl("host", "init", "--slots-root", str(base / "slots"), "--quota-backend", "btrfs",
                         "--loopback-image", str(base / "slots.img"), "--loopback-size", "1G", "--no-persist")
        assert r.returncode == 0, r.stderr
        db = connect(str(base / "state" / "slotwarden.db"))
        assert current_version(db) == LATEST
        assert [r[0] for r in db.execute("SELECT username FROM slots ORDER BY username")] == ["alice", "bob"]
        assert db.execute("SELECT COUNT(*) FROM audit WHERE action = 'slot.create'").fetchone()[0] == 1
        db.close()
    finally:
        # The 0.1 slots are rows only (no such users here): drop them so teardown removes only ours.
        db = connect(str(base / "state" / "slotwarden.db"))
        upgrade(db)
        db.execute("DELETE FROM slots")
        db.close()
        teardown_slot_host(host)
