"""The service's line protocol, driven in-process (no socket): answers, and garbage never crashes it."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pam_hooks import store
from pam_hooks.config import GuardConfig
from pam_hooks.service import GuardService, listen_fds


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuardService]:
    d = tmp_path_factory.mktemp("guard")
    s = GuardService(GuardConfig(state_dir=d, socket=Path(d / "g.sock"), pair_deny=2))
    yield s
    s.close()


def test_reserve_fail_lock_account(svc: GuardService) -> None:
    a = svc.handle_line(b"AUTH\tsshd\tbob\t198.51.100.7")
    assert a.startswith("ALLOW ")
    b = svc.handle_line(f"AUTH\tsshd\tbob\t198.51.100.7\t{a.split()[1]}".encode())  # prev try failed
    assert b.startswith("ALLOW ")
    assert svc.handle_line(f"FAIL\t{b.split()[1]}".encode()) == "OK"
    assert svc.handle_line(b"AUTH\tsshd\tbob\t198.51.100.7").startswith("DENY pair ")
    assert svc.handle_line(b"ACCT\tsshd\tbob\t198.51.100.7").startswith("DENY pair ")
    assert svc.handle_line(b"ACCT\tsshd\tbob\t198.51.100.8") == "ALLOW"
    rows = json.loads(svc.handle_line(b'JSON\t{"op": "list", "user": "bob"}'))["result"]
    assert [(r["count"], r["pending"], r["refused"]) for r in rows] == [(2, 0, 1)]


def test_success_releases(svc: GuardService) -> None:
    a = svc.handle_line(b"AUTH\tsshd\teve\t198.51.100.9").split()[1]
    assert svc.handle_line(f"SUCC\t{a}".encode()) == "OK"
    assert svc.handle_line(f"SUCC\t{a}".encode()) == "OK"  # twice: harmless
    ex = json.loads(svc.handle_line(b'JSON\t{"op": "explain", "user": "eve", "ip": "198.51.100.9"}'))
    assert ex["result"]["allowed"] is True and ex["result"]["counts"]["pair"]["count"] == 0


@pytest.mark.parametrize("line", [
    b"", b"AUTH", b"AUTH\tsshd\tbob", b"AUTH\tsshd\tbo b\t1.2.3.4", b"AUTH\tsshd\tb\xffob\t1.2.3.4",
    b"SUCC\tabc", b"FAIL\t-1", b"NOPE\tx", b"JSON\t{not json", b'JSON\t{"op": "explain"}', b'JSON\t{"op": "rm"}',
    b"AUTH\tsshd\t" + b"a" * 5000 + b"\t1.2.3.4",
])
def test_garbage_gets_an_error_not_a_crash(svc: GuardService, line: bytes) -> None:
    out = svc.handle_line(line)
    assert out.startswith("ERR") or '"ok": false' in out


@settings(max_examples=200, deadline=None)
@given(line=st.binary(max_size=300))
def test_any_bytes(svc: GuardService, line: bytes) -> None:
    out = svc.handle_line(line.replace(b"\n", b""))
    assert "\n" not in out


def test_local_tries_counted_by_caller(svc: GuardService) -> None:
    """The module sends the caller of a try without rhost (AUTH field 5, ACCT field 4)."""
    for _ in range(2):
        tok = svc.handle_line(b"AUTH\tsu\troot\t\t0\talice").split()[1]
        assert svc.handle_line(f"FAIL\t{tok}".encode()) == "OK"
    assert svc.handle_line(b"AUTH\tsu\troot\t\t0\talice").startswith("DENY pair ")
    assert svc.handle_line(b"ACCT\tsu\troot\t\talice").startswith("DENY pair ")
    assert svc.handle_line(b"AUTH\tsu\troot\t\t0\tcarol").startswith("ALLOW ")  # another tenant
    assert svc.handle_line(b"AUTH\tlogin\troot\t\t0\troot").startswith("ALLOW ")  # the console
    assert svc.handle_line(b"ACCT\tsu\troot\t\tcarol") == "ALLOW"
    rows = json.loads(svc.handle_line(b'JSON\t{"op": "list", "user": "root"}'))["result"]
    assert {r["ip"] for r in rows} >= {"local:alice", "local:carol", "local:root"}
    stats = json.loads(svc.handle_line(b'JSON\t{"op": "stats"}'))["result"]
    assert stats["refused"] >= 2 and stats["allowed"] >= 3 and stats["active_locks"] >= 1


@pytest.mark.parametrize("line", [b"JSON\t[1]", b"JSON\t\"x\"", b"AUTH\ts\tu\t\t0\ta\tb", b"ACCT\ts\tu\t\ta\tb",
                                  b"AUTH\ts\tu\t\t0\ta b"])
def test_more_garbage(svc: GuardService, line: bytes) -> None:
    out = svc.handle_line(line)
    assert out.startswith("ERR") or '"ok": false' in out


def test_damaged_store_replaced_while_serving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = GuardService(GuardConfig(state_dir=tmp_path, socket=tmp_path / "g.sock"))
    try:
        real = s.policy.reserve
        calls = []

        def broken(*a: object, **kw: object) -> object:
            if not calls:
                calls.append(1)
                raise sqlite3.DatabaseError("database disk image is malformed")
            return real(*a, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(s.policy, "reserve", broken)
        assert s.handle_line(b"AUTH\tsshd\tbob\t198.51.100.7").startswith("ALLOW ")  # retried on the fresh store
        assert len(s.recoveries) == 1 and "set aside as" in s.recoveries[0]["note"]
        assert [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name and p.name.endswith("Z")]
        st = json.loads(s.handle_line(b'JSON\t{"op": "status"}'))["result"]
        assert st["service"]["degraded"] and st["attempts"] == 1
    finally:
        s.close()


def test_damaged_file_at_start_is_set_aside(tmp_path: Path) -> None:
    db = tmp_path / "guard.db"
    db.write_bytes(b"garbage" * 500)
    conn, note = store.open_checked(db)
    try:
        assert note is not None and "set aside as" in note
        assert conn.execute("SELECT COUNT(*) FROM attempts").fetchone()[0] == 0
        kept = [p for p in tmp_path.iterdir() if p.name.startswith("guard.db.corrupt-")]
        assert [p.read_bytes() for p in kept] == [b"garbage" * 500]
    finally:
        conn.close()
    conn, note = store.open_checked(db)  # healthy now: nothing set aside
    conn.close()
    assert note is None


@pytest.mark.parametrize(("exc", "corrupt"), [
    (sqlite3.DatabaseError("database disk image is malformed"), True),
    (sqlite3.OperationalError("database is locked"), False),
    (sqlite3.ProgrammingError("Cannot operate on a closed database."), False),
    (sqlite3.IntegrityError("UNIQUE constraint failed"), False),
    (ValueError("x"), False),
])
def test_what_counts_as_corruption(exc: Exception, corrupt: bool) -> None:
    assert store.is_corruption(exc) is corrupt


def test_listen_fds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "2")
    assert listen_fds() == [3, 4] and "LISTEN_PID" not in os.environ  # read once, then unset
    monkeypatch.setenv("LISTEN_PID", "1")  # meant for another process
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert listen_fds() == []


def test_log_lines_are_printable() -> None:
    import logging

    from pam_hooks.service import _PrintableFormatter

    rec = logging.LogRecord("x", logging.INFO, "f", 1, "user=%s", ("a\nb\x1b[2J\u00e9",), None)
    assert _PrintableFormatter("%(message)s").format(rec) == "user=a%0Ab%1B[2J%C3%A9"


def test_unusable_store_decides_from_memory(tmp_path: Path) -> None:
    """A state dir that cannot hold the store (here: a file in its place) must not stop the guard."""
    (tmp_path / "state").write_text("not a directory")
    s = GuardService(GuardConfig(state_dir=tmp_path / "state", socket=tmp_path / "g.sock", pair_deny=1))
    try:
        assert "in memory" in s.recoveries[0]["note"]
        tok = s.handle_line(b"AUTH\tsshd\tbob\t198.51.100.7").split()[1]
        assert s.handle_line(f"FAIL\t{tok}".encode()) == "OK"
        assert s.handle_line(b"AUTH\tsshd\tbob\t198.51.100.7").startswith("DENY pair ")  # still deciding
    finally:
        s.close()
