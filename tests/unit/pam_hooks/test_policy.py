"""LockoutPolicy as table tests: one row a case, the expected outcome spelled out."""

from __future__ import annotations

import sqlite3
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pam_hooks import store
from pam_hooks.config import GuardConfig, parse_guard
from pam_hooks.policy import KNOWN_MAX, LockoutPolicy, local_origin

A, B = "198.51.100.7", "198.51.100.8"
BASE = GuardConfig(pair_deny=3, ip_deny=5, user_deny=8, window=900, lock_for=900, lock_max=3600)


class FakeBlocker:
    def __init__(self) -> None:
        self.routes: set[str] = set()
        self.calls: list[str] = []

    def block(self, net: str) -> None:
        self.routes.add(net)
        self.calls.append(f"+{net}")

    def unblock(self, net: str) -> None:
        self.routes.discard(net)
        self.calls.append(f"-{net}")


def policy(cfg: GuardConfig = BASE, blocker: FakeBlocker | None = None) -> LockoutPolicy:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.executescript(store.SCHEMA)
    return LockoutPolicy(cfg, conn, blocker)


def fail(p: LockoutPolicy, user: str, ip: str, now: float) -> bool:
    """One try that is then reported failed; True if the password would have been checked."""
    d = p.reserve("sshd", user, ip, now=now)
    if d.allowed:
        assert d.token is not None
        p.fail(d.token)
    return d.allowed


# (case, config changes, [(user, ip)] failed tries at t=0.., probe (user, ip), allowed?, rule)
CASES = [
    ("pair locks at N", {}, [("bob", A)] * 3, ("bob", A), False, "pair"),
    ("pair below N", {}, [("bob", A)] * 2, ("bob", A), True, None),
    ("same user other ip", {}, [("bob", A)] * 3, ("bob", B), True, None),
    ("same ip other user", {}, [("bob", A)] * 3, ("eve", A), True, None),
    ("ip spraying", {}, [(f"u{i}", A) for i in range(5)], ("new", A), False, "ip"),
    ("user from many ips", {}, [("bob", f"198.51.100.{i}") for i in range(8)], ("bob", "203.0.113.9"), False,
     "user"),
    ("root per pair", {}, [("root", A)] * 3, ("root", A), False, "pair"),
    ("root never per user", {"user_deny": 2}, [("root", f"198.51.100.{i}") for i in range(6)],
     ("root", "203.0.113.9"), True, None),
    ("deny_root false", {"deny_root": False}, [("root", A)] * 6, ("root", A), True, None),
    ("allow list", {"allow": ("198.51.100.0/28",)}, [("bob", A)] * 9, ("bob", A), True, None),
    ("ipv6 per /64", {}, [(f"u{i}", f"2001:db8:1:2::{i + 1}") for i in range(5)], ("x", "2001:db8:1:2::ff"),
     False, "ip"),
    ("ipv6 other /64", {}, [(f"u{i}", f"2001:db8:1:2::{i + 1}") for i in range(5)], ("x", "2001:db8:1:3::1"),
     True, None),
    ("v4-mapped v6 is v4", {}, [(f"u{i}", f"::ffff:{A}") for i in range(5)], ("x", A), False, "ip"),
    ("no rhost: pair only", {}, [(f"u{i}", "") for i in range(9)], ("x", ""), True, None),
    ("hostname rhost counted as is", {}, [(f"u{i}", "evil.example") for i in range(5)], ("x", "evil.example"),
     False, "ip"),
    # local tries are counted by who made them (the C module sends the caller)
    ("tenant su root locks that tenant", {}, [("root", "local:alice")] * 3, ("root", "local:alice"), False, "pair"),
    ("tenant su root: root's console", {}, [("root", "local:alice")] * 3, ("root", "local:root"), True, None),
    ("tenant su root: another tenant", {}, [("root", "local:alice")] * 3, ("root", "local:bob"), True, None),
    ("tenant su many users: own origin", {}, [(f"u{i}", "local:alice") for i in range(5)], ("x", "local:alice"),
     False, "ip"),
    ("console is root's way in", {}, [("root", "local:root")] * 9, ("root", "local:root"), True, None),
    ("console: admin group too", {"admin_group": "nogroup"}, [("nobody", "local:root")] * 9,
     ("nobody", "local:root"), True, None),
    ("root service without a tty is not the console", {}, [("root", "local:root:notty")] * 3,
     ("root", "local:root:notty"), False, "pair"),
    ("console: not for others", {"admin_group": "nogroup"}, [("bob", "local:root")] * 3, ("bob", "local:root"),
     False, "pair"),
]


@pytest.mark.parametrize(("case", "changes", "tries", "probe", "allowed", "rule"), CASES, ids=[c[0] for c in CASES])
def test_policy_table(case: str, changes: dict[str, object], tries: list[tuple[str, str]],
                      probe: tuple[str, str], allowed: bool, rule: str | None) -> None:
    cfg = replace(BASE, **changes)
    if "allow" in changes:
        cfg = replace(cfg, allow=parse_guard({"guard": {"allow": list(changes["allow"])}}).allow)  # type: ignore[arg-type]
    p = policy(cfg)
    for i, (u, ip) in enumerate(tries):
        fail(p, u, ip, now=1000.0 + i)
    # what a key login meets: every rule but the per-username one
    assert p.account("sshd", probe[0], probe[1], now=1100.0).allowed == (allowed or rule == "user")
    d = p.reserve("sshd", probe[0], probe[1], now=1100.0)
    assert (d.allowed, d.rule) == (allowed, rule)


def test_lock_expires_and_count_starts_again() -> None:
    p = policy()
    for i in range(3):
        fail(p, "bob", A, 1000.0 + i)
    assert not p.reserve("sshd", "bob", A, now=1002.0 + 899).allowed
    assert p.reserve("sshd", "bob", A, now=1002.0 + 901).allowed  # lock over, fresh count
    assert p.reserve("sshd", "bob", A, now=1002.0 + 902).allowed


def test_window_forgets_old_failures() -> None:
    p = policy()
    fail(p, "bob", A, 0.0)
    fail(p, "bob", A, 1.0)
    assert fail(p, "bob", A, 1000.0)  # the first two fell out of the 15 min window
    assert p.reserve("sshd", "bob", A, now=1001.0).allowed


def test_repeat_offender_doubles_up_to_max() -> None:
    p = policy()
    now, lengths = 1000.0, []
    for _ in range(4):
        for _ in range(3):
            fail(p, "bob", A, now)
        d = p.reserve("sshd", "bob", A, now=now)
        assert d.until is not None
        lengths.append(d.until - now)
        now = d.until + 1
    assert lengths == [900, 1800, 3600, 3600]


def test_success_clears_pair_and_undoes_its_own_lock() -> None:
    p = policy()
    t1 = p.reserve("sshd", "bob", A, now=1.0).token
    t2 = p.reserve("sshd", "bob", A, now=2.0).token
    t3 = p.reserve("sshd", "bob", A, now=3.0).token  # the 3rd reservation set the pair lock
    assert t1 and t2 and t3
    assert not p.reserve("sshd", "bob", A, now=4.0).allowed
    p.fail(t1)
    p.fail(t2)
    p.succeed(t3, now=5.0)  # ...but it was the right password
    assert p.reserve("sshd", "bob", A, now=6.0).allowed
    assert p.records(now=6.0)[0]["count"] == 1  # only the pending try after the success


def test_success_does_not_lift_ip_lock_still_earned() -> None:
    p = policy(replace(BASE, ip_deny=3))
    for i in range(2):
        fail(p, f"u{i}", A, float(i))
    tok = p.reserve("sshd", "bob", A, now=3.0).token
    assert tok and not p.reserve("sshd", "eve", A, now=4.0).allowed
    p.succeed(tok, now=5.0)  # 2 failures remain < 3: the ip lock it triggered goes
    assert p.reserve("sshd", "eve", A, now=6.0).allowed


def test_lift_pair_user_ip_and_blackhole() -> None:
    fb = FakeBlocker()
    p = policy(replace(BASE, network_block=True), fb)
    for i in range(5):
        fail(p, f"u{i}", A, float(i))
    assert fb.routes == {A}
    for i in range(3):
        fail(p, "bob", B, float(i))
    assert p.lift(ip=A, now=10.0) == 1 and fb.routes == set()
    assert p.reserve("sshd", "zed", A, now=11.0).allowed
    assert p.lift(user="bob", now=12.0) == 1
    assert p.reserve("sshd", "bob", B, now=13.0).allowed
    assert p.lift(user="nobody-anymore", ip=B, now=14.0) == 0  # names that no longer exist: fine


def test_block_removed_when_lock_ends() -> None:
    fb = FakeBlocker()
    p = policy(replace(BASE, network_block=True), fb)
    for i in range(5):
        fail(p, f"u{i}", "2001:db8:5:6::1", float(i))
    assert fb.routes == {"2001:db8:5:6::/64"}
    p.tick(now=500.0)
    assert fb.routes
    p.tick(now=4.0 + 901)
    assert fb.routes == set() and fb.calls == ["+2001:db8:5:6::/64", "-2001:db8:5:6::/64"]


def test_forget_and_purge() -> None:
    p = policy()
    for i in range(3):
        fail(p, "bob", A, float(i))
    fail(p, "eve", B, 0.0)
    assert p.forget(user="bob") == 3
    assert [r["username"] for r in p.records(now=10.0)] == ["eve"]
    assert p.reserve("sshd", "bob", A, now=11.0).allowed
    assert p.purge(now=86400.0 + 20) == 2  # eve's and bob's newer try
    assert p.records(now=86400.0 + 20) == []


def test_stale_reservation_becomes_failed() -> None:
    p = policy()
    p.reserve("sshd", "bob", A, now=1000.0)
    assert p.records(now=1001.0)[0]["pending"] == 1
    p.tick(now=1500.0)
    r = p.records(now=1500.0)[0]
    assert (r["pending"], r["count"]) == (0, 1)


def test_records_shape() -> None:
    p = policy()
    for i in range(4):
        fail(p, "bob", A, 1_700_000_000.0 + i)
    (r,) = p.records(now=1_700_000_010.0)
    assert r["username"] == "bob" and r["ip"] == A and r["service"] == "sshd"
    assert (r["count"], r["refused"]) == (3, 1)
    assert r["first_attempt"] == "2023-11-14T22:13:20Z" and r["last_attempt"] == "2023-11-14T22:13:23Z"
    assert r["locked_until"] == "2023-11-14T22:28:22Z" and r["rule"] == "pair"
    assert p.records(locked=True, now=1_700_000_010.0 + 901) == []


def test_explain() -> None:
    p = policy()
    for i in range(3):
        fail(p, "bob", A, 1000.0 + i)
    e = p.explain("bob", A, now=1010.0)
    assert (e["allowed"], e["rule"], e["counts"]["pair"]["count"]) == (False, "pair", 3)
    assert p.explain("bob", B, now=1010.0)["allowed"] is True


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["reserve", "fail", "succeed"]), max_size=60), st.integers(1, 5))
def test_never_more_than_n_checks_between_successes(ops: list[str], n: int) -> None:
    """Whatever the interleaving, at most N reservations are granted per pair without a success."""
    p = policy(replace(BASE, pair_deny=n, ip_deny=10**6, user_deny=10**6))
    open_tokens: list[int] = []
    granted_since_success = 0
    for i, op in enumerate(ops):
        now = float(i)
        if op == "reserve":
            d = p.reserve("sshd", "bob", A, now=now)
            if d.allowed:
                assert d.token is not None
                open_tokens.append(d.token)
                granted_since_success += 1
            assert granted_since_success <= n
        elif open_tokens:
            tok = open_tokens.pop(0)
            if op == "fail":
                p.fail(tok)
            else:
                p.succeed(tok, now=now)
                granted_since_success = len(open_tokens)


def test_store_functions_for_retention() -> None:
    p = policy()
    for i in range(2):
        fail(p, "bob%20smith", A, 1000.0 + i)  # the hook sends names escaped
    fail(p, "eve", B, 1000.0)
    (row,) = store.list_attempts(p.conn, "bob smith")
    assert (row["ip"], row["count"], row["first"], row["last"]) == (A, 2, 1000.0, 1001.0)
    assert store.forget_attempts(p.conn, "bob smith") == 2
    assert store.list_attempts(p.conn, "bob smith") == []
    assert store.purge_attempts(p.conn, 2000.0) == 1


def succeed(p: LockoutPolicy, user: str, ip: str, now: float) -> None:
    d = p.reserve("sshd", user, ip, now=now)
    assert d.allowed and d.token is not None
    p.succeed(d.token, now=now)


@pytest.mark.parametrize("home", [A, "2001:db8:7:7::1"])
def test_user_rule_spares_known_origins(home: str) -> None:
    """A distributed attack on bob's name: his usual address (or /64) and his keys still get in."""
    p = policy()
    succeed(p, "bob", home, 10.0)
    for i in range(8):
        fail(p, "bob", f"203.0.113.{i + 1}", 100.0 + i)
        fail(p, "bob", f"2001:db8:{i + 100:x}::1", 100.0 + i)
    assert p.reserve("sshd", "bob", "198.51.100.99", now=200.0).rule == "user"  # a new address: refused
    same_net = home.replace("::1", "::abcd") if ":" in home else home
    assert p.reserve("sshd", "bob", same_net, now=200.0).allowed  # his address or /64: password checked
    assert p.account("sshd", "bob", "198.51.100.99", now=200.0).allowed  # a key login anywhere
    e = p.explain("bob", same_net, now=200.0)
    assert e["allowed"] and "known origin" in e["note"]


def test_known_origins_bounded_and_expire() -> None:
    p = policy(replace(BASE, known_for=1000.0))
    for i in range(KNOWN_MAX + 5):
        succeed(p, "bob", f"198.51.100.{i + 1}", float(i))
    rows = store.list_known_origins(p.conn, "bob")
    assert len(rows) == KNOWN_MAX and rows[0]["origin"] == f"198.51.100.{KNOWN_MAX + 5}"
    org = p.origin(f"198.51.100.{KNOWN_MAX + 5}")
    assert p.known("bob", org, now=500.0) and not p.known("bob", org, now=5000.0)
    p.purge(now=5000.0)
    assert store.list_known_origins(p.conn, "bob") == []
    succeed(p, "bob", A, 6000.0)
    store.forget_attempts(p.conn, "bob")
    assert store.list_known_origins(p.conn, "bob") == []


def test_local_origin_cannot_be_forged_by_rhost() -> None:
    assert local_origin("local:root", None) == "local%3Aroot"
    assert local_origin("", "alice") == "local:alice" and local_origin("", None) == ""
    p = policy()
    for i in range(9):
        fail(p, "root", local_origin("local:root", None), float(i))
    assert not p.reserve("sshd", "root", local_origin("local:root", None), now=20.0).allowed
    assert p.reserve("su", "root", local_origin("", "root"), now=20.0).allowed
