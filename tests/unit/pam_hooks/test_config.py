"""[guard] parsing: defaults, durations, errors that name the key."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pam_hooks.config import GuardConfig, GuardConfigError, load_guard_config, parse_duration, parse_guard


def test_defaults_match_the_issue() -> None:
    c = parse_guard({})
    assert (c.pair_deny, c.window, c.ip_deny, c.ipv6_prefix, c.user_deny) == (5, 900, 20, 64, 50)
    assert (c.lock_for, c.lock_max, c.retention, c.fail_mode, c.deny_root) == (900, 86400, 86400, "open", True)
    assert c.network_block is False and c.allow == ()


@pytest.mark.parametrize(("doc", "key"), [
    ({"guard": {"pair_deny": 0}}, "guard.pair_deny"),
    ({"guard": {"pair_deny": "5"}}, "guard.pair_deny"),
    ({"guard": {"pair_deny": True}}, "guard.pair_deny"),
    ({"guard": {"window": "15 minutes"}}, "guard.window"),
    ({"guard": {"window": -1}}, "guard.window"),
    ({"guard": {"ipv6_prefix": 129}}, "guard.ipv6_prefix"),
    ({"guard": {"fail_mode": "maybe"}}, "guard.fail_mode"),
    ({"guard": {"socket": "relative.sock"}}, "guard.socket"),
    ({"guard": {"allow": ["10.0.0.0/8", "nope"]}}, "guard.allow"),
    ({"guard": {"allow": "10.0.0.0/8"}}, "guard.allow"),
    ({"guard": {"deny_root": "yes"}}, "guard.deny_root"),
    ({"guard": {"lock_for": "2h", "lock_max": "1h"}}, "guard.lock_max"),
    ({"guard": {"pair_dney": 3}}, "guard.pair_dney"),
    ({"state_dir": "var/lib"}, "state_dir"),
    ({"guard": []}, "guard"),
])
def test_errors_name_the_key(doc: dict[str, object], key: str) -> None:
    with pytest.raises(GuardConfigError, match=rf"^{key}\b"):
        parse_guard(doc)


def test_all_keys(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text(
        'state_dir = "/srv/sw"\n[guard]\npair_deny = 3\nwindow = "10m"\nip_deny = 7\nipv6_prefix = 56\n'
        'user_deny = 9\nlock_for = 60\nlock_max = "2h"\nallow = ["198.51.100.0/28", "2001:db8::1"]\n'
        'deny_root = false\nfail_mode = "closed"\nsocket = "/run/x.sock"\nnetwork_block = true\n'
        '[retention]\nattempts = "1d"\n'
    )
    c = load_guard_config(f)
    assert c == GuardConfig(pair_deny=3, window=600, ip_deny=7, ipv6_prefix=56, user_deny=9, lock_for=60,
                            lock_max=7200, allow=(ipaddress.ip_network("198.51.100.0/28"),
                                                  ipaddress.ip_network("2001:db8::1/128")),
                            deny_root=False, fail_mode="closed", socket=Path("/run/x.sock"), network_block=True,
                            retention=86400, state_dir=Path("/srv/sw"))
    assert c.db_path == Path("/srv/sw/guard.db")


def test_missing_explicit_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(GuardConfigError, match="does not exist"):
        load_guard_config(tmp_path / "none.toml")
    (tmp_path / "bad.toml").write_text("[guard\n")
    with pytest.raises(GuardConfigError, match="not valid TOML"):
        load_guard_config(tmp_path / "bad.toml")


@given(st.integers(1, 36500), st.sampled_from(["", "s", "m", "h", "d"]))
def test_duration_units(n: int, unit: str) -> None:
    mult = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    assert parse_duration("window", f"{n}{unit}") == n * mult


@given(st.text(max_size=12))
def test_duration_never_crashes(s: str) -> None:
    try:
        assert parse_duration("window", s) > 0
    except GuardConfigError as exc:
        assert str(exc).startswith("guard.window:")
