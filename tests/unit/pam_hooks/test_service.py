"""The service's line protocol, driven in-process (no socket): answers, and garbage never crashes it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pam_hooks.config import GuardConfig
from pam_hooks.service import GuardService


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
