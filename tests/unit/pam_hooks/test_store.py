"""The guard's stores: numbered migrations (SQLite here; PostgreSQL in tests/system/test_guard_shared.py),
the retention API (forget/purge), the shared store's URL and password file."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pam_hooks import pgstore, store
from pam_hooks.config import GuardConfig, GuardConfigError, StoreURL, parse_guard, parse_store_url
from pam_hooks.policy import LockoutPolicy
from pam_hooks.protocol import escape

A, B = "198.51.100.7", "198.51.100.8"


def mem() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.row_factory = sqlite3.Row
    return conn


def version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def test_fresh_store_gets_every_migration() -> None:
    conn = mem()
    assert store.migrate(conn) == 0
    assert version(conn) == store.SQLITE_VERSION
    assert store.migrate(conn) == store.SQLITE_VERSION  # again: nothing to do
    cols = {r[1] for r in conn.execute("PRAGMA table_info(attempts)")}
    assert "remote_id" in cols


def test_store_from_before_versions_is_taken_up_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "guard.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript(store.SQLITE_MIGRATIONS[0][1])  # what the guard created before versions
    old.execute("INSERT INTO attempts (ts, username, ip, ipkey, service, state) VALUES (1, 'bob', ?, ?, 'sshd',"
                " 'failed')", (A, A))
    old.close()
    conn = store.open_store(path)
    assert version(conn) == store.SQLITE_VERSION
    assert [tuple(r) for r in conn.execute("SELECT username, state, remote_id FROM attempts")] == \
        [("bob", "failed", None)]


def test_newer_store_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "guard.db"
    conn = store.open_store(path)
    conn.execute(f"PRAGMA user_version = {store.SQLITE_VERSION + 1}")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(store.StoreTooNew, match="newer"):
        store.open_store(path)
    assert path.read_bytes() == before


def test_schema_constant_is_the_migrations() -> None:
    a, b = mem(), mem()
    a.executescript(store.SCHEMA)
    store.migrate(b)
    dump = lambda c: sorted(tuple(r) for r in c.execute("SELECT type, name, sql FROM sqlite_master"))  # noqa: E731
    assert dump(a) == dump(b) and version(a) == version(b)


def test_pg_advisory_lock_id_in_the_migration_is_the_fleet_lock() -> None:
    assert str(pgstore._FLEET_LOCK) in store.PG_MIGRATIONS[0][1]
    assert pgstore.key_lock_id("pair", "bob\t" + A) == pgstore.key_lock_id("pair", "bob\t" + A)
    assert pgstore.key_lock_id("pair", "bob\t" + A) != pgstore.key_lock_id("ip", A)


# -- retention's API ------------------------------------------------------------------------


def locked_policy(user: str) -> LockoutPolicy:
    conn = mem()
    store.migrate(conn)
    p = LockoutPolicy(GuardConfig(pair_deny=2, user_deny=3, ip_deny=100), conn)
    for i, ip in enumerate((A, A, B, B)):
        d = p.reserve("sshd", user, ip, now=100.0 + i)
        if d.token:
            p.fail(d.token)
    d = p.reserve("sshd", user, "198.51.100.9", now=110.0)
    if d.token:
        p.succeed(d.token, now=110.0)
    d = p.reserve("sshd", "other", A, now=111.0)
    assert d.token
    p.fail(d.token)
    return p


@pytest.mark.parametrize("raw", [b"bob", b"bob smith", b"o'brien%", b"\xff\tx", b"%41"])
def test_forget_removes_every_trace_of_the_user(raw: bytes) -> None:
    user = escape(raw)  # what the hook records
    p = locked_policy(user)
    c = p.conn
    assert c.execute("SELECT COUNT(*) FROM locks WHERE kind IN ('pair', 'user')").fetchone()[0] >= 2
    # retention passes the name as typed; guard list shows it escaped: both work
    typed = raw.decode("utf-8", "surrogateescape")
    assert store.forget_attempts(c, typed if "%" not in typed else user) > 0
    assert c.execute("SELECT COUNT(*) FROM attempts WHERE username = ?", (user,)).fetchone()[0] == 0
    assert c.execute("SELECT COUNT(*) FROM known_origins WHERE username = ?", (user,)).fetchone()[0] == 0
    left = [r[0] for r in c.execute("SELECT key FROM locks WHERE kind IN ('pair', 'user')")]
    assert not [k for k in left if k == user or k.startswith(user + "\t")], left
    assert c.execute("SELECT COUNT(*) FROM attempts WHERE username = 'other'").fetchone()[0] == 1


def test_purge_drops_old_rows_and_idle_counters() -> None:
    p = locked_policy("bob")
    c = p.conn
    assert store.purge_attempts(c, 105.0, known_before=0.0) == 4  # the tries at 100..103
    assert store.purge_attempts(c, 10_000_000.0, known_before=10_000_000.0) > 0
    assert c.execute("SELECT COUNT(*) FROM attempts").fetchone()[0] == 0
    assert c.execute("SELECT COUNT(*) FROM locks").fetchone()[0] == 0
    assert c.execute("SELECT COUNT(*) FROM known_origins").fetchone()[0] == 0


# -- [guard] store ------------------------------------------------------------------------------

NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
HOSTS = st.one_of(st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,8}){0,3}", fullmatch=True),
                  st.ip_addresses(v=4).map(str))


@given(NAMES, HOSTS, st.integers(1, 65535), NAMES)
def test_store_url_round_trips(user: str, host: str, port: int, db: str) -> None:
    url = parse_store_url(f"postgresql://{user}@{host}:{port}/{db}")
    assert url == StoreURL(user, host, port, db)
    assert parse_store_url(str(url)) == url


@settings(max_examples=300)
@given(st.text(max_size=80))
def test_store_url_any_text_is_a_value_or_one_error(text: str) -> None:
    try:
        url = parse_store_url(text)
    except GuardConfigError as exc:
        assert str(exc).startswith("guard.store:") and "\n" not in str(exc)
        return
    assert ":" not in url.user and url.port > 0 and "@" not in str(url).split("@", 1)[1]


@pytest.mark.parametrize("value, error", [
    ("postgresql://guard:secret@db/fleet", "no password in the URL"),
    ("postgres://guard@db/fleet", "expected postgresql://"),
    ("postgresql://db/fleet", "expected postgresql://"),
    ("postgresql://guard@db/fleet?sslmode=disable", "expected postgresql://"),
    ("postgresql://guard@db:99999/fleet", "expected postgresql://"),
    ("postgresql://guard@db/", "expected postgresql://"),
    ("postgresql://gu ard@db/fleet", "expected postgresql://"),
    (5432, "expected a postgresql://"),
])
def test_bad_store_urls(value: object, error: str) -> None:
    with pytest.raises(GuardConfigError, match=error):
        parse_guard({"guard": {"store": value}})


def test_store_keys() -> None:
    cfg = parse_guard({"guard": {"store": "postgresql://guard@198.51.100.5:5433/fleet",
                                 "store_password_file": "/etc/slotwarden/pw", "store_host": "web-1.example"}})
    assert (str(cfg.store), str(cfg.store_password_file), cfg.store_host) == (
        "postgresql://guard@198.51.100.5:5433/fleet", "/etc/slotwarden/pw", "web-1.example")
    assert parse_guard({}).store is None
    with pytest.raises(GuardConfigError, match="store_password_file"):
        parse_guard({"guard": {"store_password_file": "relative/pw"}})
    with pytest.raises(GuardConfigError, match="store_host"):
        parse_guard({"guard": {"store_host": "web 1; rm"}})


def test_password_file_must_be_root_only(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\nignored\n")
    os.chmod(pw, 0o644)
    with pytest.raises(pgstore.SharedStoreError, match="mode 0600") as exc:
        pgstore.read_password(pw)
    assert "s3cret" not in str(exc.value)
    os.chmod(pw, 0o600)
    if os.geteuid() == 0:
        assert pgstore.read_password(pw) == "s3cret"
    else:  # a file a non-root user owns is not root-only either
        with pytest.raises(pgstore.SharedStoreError, match="owned by root"):
            pgstore.read_password(pw)
    link = tmp_path / "link"
    link.symlink_to(pw)
    with pytest.raises(pgstore.SharedStoreError):
        pgstore.read_password(link)
    with pytest.raises(pgstore.SharedStoreError, match="missing"):
        pgstore.read_password(tmp_path / "missing")
