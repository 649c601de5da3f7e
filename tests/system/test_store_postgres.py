"""The provisioner's store on SQLite and on a real PostgreSQL 15 (the lab's, in a network namespace).

The same repository tests run on both engines; the 0.1 store is upgraded and copied into
PostgreSQL with every row kept (counts and contents per table) and back again; ``slotctl``
runs on a PostgreSQL store configured by ``[store] url`` + a root-only password file.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provisioner.api.idempotency import IdempotencyKeys
from provisioner.api.tokens import ApiTokens
from provisioner.apps.registry import AppRegistry
from provisioner.apps.vault import Vault
from provisioner.config import ResourceLimits, load_config_text
from provisioner.context import Context
from provisioner.db import LATEST, Database, SchemaError, connect, current_version, upgrade
from provisioner.db.copy import copy_store, data_tables
from provisioner.errors import SlotError
from provisioner.hub.history import MetricsHistory
from provisioner.hub.sessions import SessionStore
from provisioner.hub.totp import TotpStore
from provisioner.lifecycle_records import LifecycleRecord, LifecycleRecords
from provisioner.limits.steps import LimitRecords
from provisioner.metrics.health import store_writable
from provisioner.notices import Notices
from provisioner.store import SlotRecord, Store
from provisioner.support import SupportGrants
from tests.system.fixtures.netns import LabNet
from tests.system.fixtures.postgres import PG_ADDR, LabPostgres, PgDatabase

pytestmark = pytest.mark.root

FIXTURE = Path(__file__).parents[1] / "data" / "store-v0.1.sql"
SLOTCTL = str(Path(sys.executable).parent / "slotctl")


@pytest.fixture(scope="module")
def pg_server() -> Iterator[LabPostgres]:
    """One lab PostgreSQL for the module (databases are per test)."""
    with LabNet("sws-") as net, LabPostgres(net.host("pg", PG_ADDR)) as server:
        yield server


def local_url(server: LabPostgres, db: PgDatabase) -> str:
    """The database's URL from the test process (root netns): the server's Unix socket, no password."""
    return f"postgresql://{db.role}@/{db.name}?host={server.socket_dir}&port={server.port}"


@pytest.fixture
def pg_db(pg_server: LabPostgres) -> Iterator[PgDatabase]:
    db = pg_server.database("swsch_")
    try:
        yield db
    finally:
        pg_server.drop(db)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path | None]]:
    """(url, password file) of an empty store on each engine."""
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'slotwarden.db'}", None
        return
    server: LabPostgres = request.getfixturevalue("pg_server")
    db = server.database("swsch_")
    try:
        yield local_url(server, db), db.password_file
    finally:
        server.drop(db)


@pytest.fixture
def store(engine: tuple[str, Path | None], tmp_path: Path) -> Iterator[Store]:
    url, pw = engine
    s = Store(tmp_path / "slotwarden.db", connect(url, pw))
    try:
        yield s
    finally:
        s.close()


def _slot(name: str, **kw: Any) -> SlotRecord:
    values: dict[str, Any] = {"username": name, "uid": 70001, "email": f"{name}@example.com", "country": "DE",
                              "payment_ref": None, "quota_bytes": 5 * 2**40, "home": f"/srv/slots/{name}",
                              "state": "active", "created_at": 1795000000.123456}
    return SlotRecord(**{**values, **kw})


# --- the same repository tests on both engines --------------------------------------------


def test_store_slots_audit_settings_ids_kept_homes(store: Store) -> None:
    assert current_version(store.db) == LATEST
    store.insert_slot(_slot("alice"))
    with pytest.raises(SlotError, match="already exists"):
        store.insert_slot(_slot("alice"))
    store.update_slot("alice", state="suspended", quota_bytes=2**41)
    rec = store.get_slot("alice")
    assert rec is not None and rec.state == "suspended" and rec.quota_bytes == 2**41
    assert rec.created_at == 1795000000.123456  # double precision on PostgreSQL, not REAL's float4
    store.audit("root", "slot.create", "alice", {"q": "it's \"quoted\" 100%"})
    store.audit("root", "api.request", None, {"status": 201})
    assert [e["detail"] for e in store.audit_entries("alice")] == [{"q": "it's \"quoted\" 100%"}]
    assert [e["action"] for e in store.audit_after(0, ("api.",))] == ["api.request"]
    assert store.recent_audit(1)[0]["action"] == "api.request"
    store.set_host_settings({"slots_root": "/srv/slots"})
    store.set_host_settings({"slots_root": "/srv/other", "quota_backend": "btrfs"})
    assert store.host_settings() == {"slots_root": "/srv/other", "quota_backend": "btrfs"}
    ids = store.allocate_ids(["alice", "bob"], 70000, 70010, lambda uid: uid == 70001)
    assert ids == {"alice": 70000, "bob": 70002}
    assert store.allocate_ids(["alice"], 70000, 70010, lambda uid: False) == {"alice": 70000}
    store.retire_ids(["alice"])
    store.retire_id(70002, "bob")
    store.retire_id(60000, "old")  # never allocated here: recorded (ON CONFLICT DO NOTHING path)
    store.retire_id(60000, "old")
    assert [(r["id"], r["retired_at"] is not None) for r in store.slot_ids()] == \
        [(60000, True), (70000, True), (70002, True)]
    store.add_kept_home("/srv/slots/.kept/a-1", "alice")
    store.add_kept_home("/srv/slots/.kept/a-1", "alice2")
    assert [k["username"] for k in store.kept_homes()] == ["alice2"]
    store.delete_kept_home("/srv/slots/.kept/a-1")
    assert store.kept_homes() == []


def test_fleet_inventory(store: Store) -> None:
    from provisioner.fleet.facts import HostFacts, HostSlot
    from provisioner.fleet.inventory import FleetInventory, NoRoom
    from provisioner.fleet.placement import place

    inv = FleetInventory(store)
    g = 2**30
    for n in ("web1", "web2"):
        assert inv.put_host(n, f"https://{n}:8780", "PEM", "bm9uY2U=", "c2VhbGVk") == "added"
    assert inv.put_host("web1", "https://web1:8781", "PEM", "n", "s") == "updated"

    def facts(*slots: HostSlot, disk: int) -> HostFacts:
        return HostFacts(disk, disk, 0, 8 * g, 4 * g, (0.1, 0.2, 0.3), slots)

    assert inv.record_facts("web1", facts(HostSlot("alice", "active", 3 * g), disk=10 * g)) == []
    assert inv.record_facts("web2", facts(HostSlot("alice", "active", g), disk=8 * g)) == ["alice"]
    picks = [inv.place(f"s{i}", 3 * g, place)[0].host for i in range(3)]
    assert picks == ["web2", "web1", "web2"]  # room (7, 8) -> web2; (7, 5) -> web1; (4, 5) -> web2
    with pytest.raises(NoRoom):
        inv.place("s9", 5 * g, place)  # room now (4, 2)
    inv.set_slot("s0", "active", 2 * g)
    assert {r.name: r.committed_bytes for r in inv.rooms()} == {"web1": 6 * g, "web2": 5 * g}
    h = inv.host("web1")
    assert h is not None and h.up and h.facts is not None and h.facts["load"] == [0.1, 0.2, 0.3]
    inv.record_failure("web2", "host web2: unreachable \x1b[2J")
    h = inv.host("web2")
    assert h is not None and not h.up and h.last_error == "host web2: unreachable \\x1b[2J"
    inv.forget_slot("s1")
    assert [s.username for s in inv.slots("web1")] == ["alice"]


def test_app_registry(store: Store, tmp_path: Path) -> None:
    reg = AppRegistry(store, Vault(tmp_path / "app.key"))
    store.insert_slot(_slot("alice"))
    reg.begin_install("alice", "jupyterlab", "4.2")
    with pytest.raises(SlotError, match="already installed"):
        reg.begin_install("alice", "jupyterlab", "4.2")
    reg.set_state("alice", "jupyterlab", "installed")
    assert [(r.app, r.state) for r in reg.installs("alice")] == [("jupyterlab", "installed")]
    port = reg.allocate_port("alice", "jupyterlab", "http", range(41000, 41010))
    assert reg.allocate_port("alice", "jupyterlab", "http", range(41000, 41010)) == port
    assert reg.ports("alice", "jupyterlab") == {"http": port}
    reg.put_credentials("alice", "jupyterlab", {"password": "one"})
    reg.put_credentials("alice", "jupyterlab", {"password": "two"})
    assert reg.credentials("alice", "jupyterlab") == {"password": "two"}
    reg.put_credentials("alice", "gone", {"password": "x"})
    assert reg.credential_apps("alice") == ["gone", "jupyterlab"]
    assert reg.orphaned_credentials({"alice"}) == [("alice", "gone")]
    assert reg.orphaned_credentials(set()) == [("alice", "gone"), ("alice", "jupyterlab")]  # the slot is gone
    reg.delete_credentials("alice", "gone")
    reg.release_ports("alice", "jupyterlab")
    reg.forget_install("alice", "jupyterlab")
    assert reg.installs() == [] and reg.ports("alice", "jupyterlab") == {}


def test_api_tokens_and_idempotency(store: Store) -> None:
    keys = IdempotencyKeys(store)
    tokens = ApiTokens(store)
    token = tokens.create("billing")
    assert tokens.verify(token) == "billing"
    tokens.revoke("billing")
    assert tokens.verify(token) is None
    again = tokens.create("billing")  # a revoked name is taken again (upsert)
    assert tokens.verify(again) == "billing" and tokens.verify(token) is None
    assert keys.begin("billing", "k1", "h1", now=1000.0) is None
    keys.finish("billing", "k1", 201, {"username": "alice", "password": "never-kept"})
    replay = keys.begin("billing", "k1", "h1", now=1001.0)
    assert replay is not None and replay.status == 201 and replay.body["password"] is None
    assert keys.begin("billing", "k2", "h2", now=1000.0) is None
    keys.abandon("billing", "k2")
    assert keys.begin("billing", "k2", "h3", now=1000.0) is None


def test_hub_sessions_history_totp(store: Store, tmp_path: Path) -> None:
    sessions = SessionStore(store, 3600, 86400)
    token, _ = sessions.create("alice", "198.51.100.7", "Mozilla", now=1000.0)
    sessions.create("alice", "198.51.100.8", "curl", now=1000.0)
    assert sessions.resolve(token, now=1001.0) is not None
    sessions.record_login("alice", "198.51.100.7", True, "ok", now=1000.0)
    sessions.record_login("alice", "198.51.100.7", False, "bad password", now=1001.0)
    assert [e["ok"] for e in sessions.logins("alice")] in ([0, 1], [False, True], [1, 0])
    assert sessions.end_others("alice", token) == 1
    assert sessions.end_all("alice") == 1
    history = MetricsHistory(store)
    history.record("alice", 1000.0, {"ram_bytes": 10, "processes": 2})
    history.record("alice", 1001.0, {"ram_bytes": 30, "processes": 4})  # same buckets: merged (upsert)
    assert history.rows_of("alice") == 2  # one bucket in each of the two rings
    assert [(r["ram_bytes"], r["processes"]) for r in history.series("alice", "24h", 1002.0)] == [(20.0, 3.0)]
    totp = TotpStore(store, Vault(tmp_path / "hub.key"))
    totp.begin("alice")
    totp.begin("alice")  # a second enrolment replaces the first (upsert)
    assert not totp.enabled("alice")


def test_support_notices_lifecycle_limits(store: Store) -> None:
    records = LifecycleRecords(store)
    grants = SupportGrants(store)
    g1 = grants.add("alice", "staff1", "ticket #42", True, 3600, 1000.0)
    g2 = grants.add("alice", "staff1", "again", False, 60, 1001.0)
    assert g2 == g1 + 1  # RETURNING id on both engines
    grants.activate(g1, True, 1002.0, 4602.0, "/run/x")
    grant = grants.get(g1)
    assert grant is not None and grant.state == "active" and grant.write
    notices = Notices(store)
    n1 = notices.add("alice", "caf\u00e9/x.mp4", "DMCA-7", 1000.0, 87400.0)
    notices.update(n1, state="quarantined", size=2**33, sha256="aa" * 32)
    notice = notices.get(n1)
    assert notice is not None and notice.size == 2**33 and notice.path == "caf\u00e9/x.mp4"
    records.put(LifecycleRecord("alice", "one"))
    records.put(LifecycleRecord("alice", "two", 1000.0, "unpaid", "billing", {"shell": "/bin/bash"}))
    life = records.get("alice")
    assert life is not None and life.plan == "two" and life.saved == {"shell": "/bin/bash"}
    records.delete("alice")
    assert records.get("alice") is None
    limits = LimitRecords(store)
    limits.put("alice", ResourceLimits(cpu_cores=1.5), "cgroup_v1")
    limits.put("alice", ResourceLimits(cpu_cores=0.5), "systemd")
    applied = limits.get("alice")
    assert applied is not None and applied.limits.cpu_cores == 0.5 and applied.backend == "systemd"


def test_writers_serialize_ids_never_handed_out_twice(engine: tuple[str, Path | None], tmp_path: Path) -> None:
    url, pw = engine
    Store(tmp_path / "slotwarden.db", connect(url, pw)).close()
    got: list[dict[str, int]] = []
    errors: list[BaseException] = []

    def allocate(i: int) -> None:
        try:
            s = Store(tmp_path / "slotwarden.db", connect(url, pw))
            try:
                for j in range(5):
                    got.append(s.allocate_ids([f"u{i}x{j}"], 70000, 79999, lambda uid: False))
            finally:
                s.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=allocate, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ids = [v for d in got for v in d.values()]
    assert len(ids) == 20 and len(set(ids)) == 20


def test_the_health_probe_writes_through_the_configured_store(engine: tuple[str, Path | None],
                                                               tmp_path: Path) -> None:
    url, pw = engine
    toml = f'state_dir = "{tmp_path}"\n[store]\nurl = "{url}"\n' + (f'password_file = "{pw}"\n' if pw else "")
    ctx = Context(load_config_text(toml))
    try:
        assert ctx.store.db.dialect == url.split(":")[0]
        assert store_writable(ctx).value == 1
    finally:
        ctx.close()


# --- PostgreSQL: upgrade, refusal, copy ---------------------------------------------------


def test_upgrade_on_postgresql_and_a_newer_store_refused(pg_server: LabPostgres, pg_db: PgDatabase) -> None:
    db = connect(local_url(pg_server, pg_db), pg_db.password_file)
    assert current_version(db) is None
    assert upgrade(db) == (None, LATEST)
    assert upgrade(db) == (LATEST, LATEST)
    db.execute("INSERT INTO schema_version VALUES (?, 'v9999_future', 0)", (LATEST + 3,))
    with pytest.raises(SchemaError, match=f"schema version {LATEST + 3}, newer than this slotwarden's {LATEST}"):
        Store(Path("/nonexistent/slotwarden.db"), db)


def _pg_contents(db: Database) -> dict[str, list[tuple[object, ...]]]:
    return {t: sorted((tuple(r) for r in db.execute(f"SELECT * FROM {t}")), key=repr)
            for t in data_tables(db)}


def _sqlite_contents(path: Path) -> dict[str, list[tuple[object, ...]]]:
    return _pg_contents(connect(str(path)))


def _slotctl(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "SLOTWARDEN_CONFIG": str(config)}
    return subprocess.run([SLOTCTL, *args], capture_output=True, text=True, env=env, timeout=120, check=False)


def test_the_0_1_store_moves_into_postgresql_with_every_row_and_back(pg_server: LabPostgres, pg_db: PgDatabase,
                                                                    tmp_path: Path) -> None:
    config = tmp_path / "slotwarden.toml"
    config.write_text(f'state_dir = "{tmp_path}"\n')
    conn = sqlite3.connect(tmp_path / "slotwarden.db")
    conn.executescript(FIXTURE.read_text())
    made_by_0_1 = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                              "AND name <> 'sqlite_sequence'")}
    conn.close()
    assert _slotctl(config, "db", "upgrade").returncode == 0
    original = _sqlite_contents(tmp_path / "slotwarden.db")
    # Every table of the 0.1 store holds rows; tables a later migration added (the fleet's) may be empty.
    assert len(made_by_0_1) >= 19 and made_by_0_1 <= set(original) and all(original[t] for t in made_by_0_1)

    url = local_url(pg_server, pg_db)
    r = _slotctl(config, "--json", "db", "copy", "--to", url, "--password-file", str(pg_db.password_file))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tables"] == {t: len(v) for t, v in original.items()}
    assert pg_db.password not in r.stdout + r.stderr
    pg = connect(url, pg_db.password_file)
    assert _pg_contents(pg) == original  # every row, every value (blobs, big ints, float timestamps, NULLs)
    assert current_version(pg) == LATEST

    # Point [store] at PostgreSQL: slotctl runs on it; new rows continue after the copied ids.
    config.write_text(f'state_dir = "{tmp_path}"\n[store]\nurl = "{url}"\npassword_file = "{pg_db.password_file}"\n')
    r = _slotctl(config, "--json", "db", "status")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["engine"] == "postgresql" and json.loads(r.stdout)["version"] == LATEST
    r = _slotctl(config, "--json", "slot", "list")
    assert r.returncode == 0, r.stderr
    assert {s["username"] for s in json.loads(r.stdout)} == {"alice", "bob"}
    store = Store(tmp_path / "slotwarden.db", pg)
    store.audit("root", "after.copy", None, {})
    assert [e["id"] for e in store.audit_entries()][-1] == max(r[0] for r in original["audit"]) + 1
    n = Notices(store).add("bob", "p", "r", 1.0, 2.0)
    assert n == max(r[0] for r in original["notices"]) + 1

    # A second copy into it is refused and changes nothing; a copy back into a fresh SQLite is equal.
    config.write_text(f'state_dir = "{tmp_path}"\n')
    r = _slotctl(config, "db", "copy", "--to", url, "--password-file", str(pg_db.password_file))
    assert r.returncode == 1 and "not empty" in r.stderr and r.stderr.count("\n") == 1
    back = tmp_path / "back.db"
    copy_store(pg, connect(str(back)))
    got = _sqlite_contents(back)
    assert {t: v for t, v in got.items() if t not in ("audit", "notices")} == \
        {t: v for t, v in original.items() if t not in ("audit", "notices")}
    assert len(got["audit"]) == len(original["audit"]) + 1
    store.close()


def test_a_wrong_or_public_password_file_is_refused_without_echo(pg_server: LabPostgres, pg_db: PgDatabase,
                                                                 tmp_path: Path) -> None:
    url = local_url(pg_server, pg_db)
    public = tmp_path / "pw"
    public.write_text(pg_db.password + "\n")
    os.chmod(public, 0o644)
    with pytest.raises(SlotError, match="mode 0600") as err:
        connect(url, public)
    assert pg_db.password not in str(err.value)
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    os.chmod(wrong, 0o600)
    with pytest.raises(SlotError, match="cannot open the store") as err:
        connect(url, wrong)
    assert "not-the-password" not in str(err.value)
