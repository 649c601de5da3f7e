"""The Hub's pure parts: its config section, session store timeouts, the bridge's validators."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner.config import load_config_text, validate_section
from provisioner.errors import ConfigError
from provisioner.hub.bridge import Bridge, BridgeRefused, parse_address
from provisioner.hub.config import HubConfig
from provisioner.hub.sessions import SessionStore
from provisioner.store import Store

STATE = Path("/var/lib/sw")


@pytest.mark.parametrize(("table", "key"), [
    ({"nope": 1}, "hub.nope"),
    ({"cert": "relative.pem"}, "hub.cert"),
    ({"user": "Root!"}, "hub.user"),
    ({"pam_service": "../sshd"}, "hub.pam_service"),
    ({"idle_timeout": "soon"}, "hub.idle_timeout"),
    ({"idle_timeout": 0}, "hub.idle_timeout"),
    ({"fail_floor_ms": True}, "hub.fail_floor_ms"),
    ({"fail_floor_ms": 10**9}, "hub.fail_floor_ms"),
    ({"listen": "0.0.0.0:1\n"}, "hub.listen"),
    ({"public_url": "https://x/<script>"}, "hub.public_url"),
])
def test_bad_hub_values_name_their_key(table: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}"):
        validate_section(HubConfig, table)


def test_hub_defaults_follow_the_state_dir() -> None:
    cfg = load_config_text(f'state_dir = "{STATE}"\n').hub
    assert cfg.cert == STATE / "hub" / "hub.crt" and cfg.user == "slotwarden-hub"
    assert cfg.pam_service == "slotwarden-hub" and cfg.idle_timeout < cfg.absolute_timeout


@settings(deadline=None)  # a loaded CI machine: no per-example timing
@given(st.dictionaries(st.sampled_from(["listen", "cert", "user", "pam_service", "idle_timeout", "fail_floor_ms",
                                        "x"]), st.one_of(st.text(max_size=30), st.integers(), st.booleans())))
def test_hub_section_either_loads_or_names_a_key(table: dict[str, object]) -> None:
    try:
        validate_section(HubConfig, table)
    except ConfigError as exc:
        assert str(exc).startswith("hub.")


@settings(deadline=None)
@given(st.one_of(st.text(max_size=80), st.integers(), st.none()))
def test_parse_address_accepts_only_ip_addresses(value: object) -> None:
    try:
        out = parse_address(value)
    except BridgeRefused:
        return
    assert isinstance(value, str) and ("." in out or ":" in out) and "\n" not in out


def test_sessions_expire_idle_and_absolute(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    s = SessionStore(store, idle=60, absolute=300)
    token, first = s.create("alice", "198.51.100.1", "agent\x1b[31m", now=1000)
    assert first.agent == "agent[31m"  # control characters never reach a page
    assert s.resolve(token, now=1059) is not None
    assert s.resolve(token, now=1200) is None  # idle for more than 60 s (last seen 1059)
    token, _ = s.create("alice", "198.51.100.1", "", now=2000)
    for t in range(2050, 2300, 50):
        assert s.resolve(token, now=t) is not None
    assert s.resolve(token, now=2301) is None  # absolute timeout, however busy
    assert s.resolve("A" * 43, now=2301) is None and s.resolve(None) is None


def test_log_out_everywhere_ends_only_that_users_sessions(tmp_path: Path) -> None:
    s = SessionStore(Store(tmp_path / "db"), idle=60, absolute=300)
    a1, _ = s.create("alice", "198.51.100.1", "", now=10)
    a2, _ = s.create("alice", "198.51.100.2", "", now=10)
    b, _ = s.create("bob", "198.51.100.3", "", now=10)
    assert a1 != a2 and s.end_all("alice") == 2
    assert s.resolve(a1, now=11) is None and s.resolve(a2, now=11) is None
    assert s.resolve(b, now=11) is not None
    assert "token" not in str(s.of_user("bob", now=11)[0].public())


def test_bridge_refuses_malformed_requests() -> None:
    from provisioner.config import Config

    b = Bridge(Config(state_dir=Path("/nonexistent-state")), HubConfig())
    assert b.handle("x") == {"ok": False, "error": 'expected {"op": ...}'}
    assert b.handle({"op": "rm -rf"}) == {"ok": False, "error": "unknown operation"}


@pytest.mark.parametrize(("password", "problem"), [
    ("Short-1", "shorter than 12"),
    ("aaaaaaaaaaaaaaaaaaaaaaaa", "repeats too few"),
    ("alllowercaseletters", "use three of"),
    ("Has-alice-In-It-1", "contains the username"),
    ("Tab\tInside-12345", "control characters"),
    ("x" * 300, "longer than 256"),
])
def test_password_rule_table(password: str, problem: str) -> None:
    from provisioner.hub.passwords import password_problem

    assert problem in (password_problem(password, "alice") or "")


@settings(deadline=None)
@given(st.text(max_size=40), st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True))
def test_password_rule_never_passes_the_username_or_short_ones(password: str, username: str) -> None:
    from provisioner.hub.passwords import password_problem

    if password_problem(password, username) is None:
        assert len(password) >= 12 and username not in password.lower() and password.isprintable()


def test_history_is_bounded_and_downsampled(tmp_path: Path) -> None:
    from provisioner.hub.history import MetricsHistory, charts

    h = MetricsHistory(Store(tmp_path / "db"))
    t0 = 1_700_000_000 - 1_700_000_000 % 7200
    for i in range(40 * 24 * 3):  # 40 days, a sample every 20 minutes
        h.record("alice", t0 + i * 1200, {"ram_bytes": 100 + (i % 6) * 10, "cpu_seconds": i * 60.0,
                                          "processes": 3, "disk_used_bytes": i, "io_read_bytes": None})
    assert h.rows_of("alice") == 72 + 360 <= 288 + 360  # every 4th 5-min bucket, every 2-h one
    now = t0 + (40 * 24 * 3 - 1) * 1200  # the last sample
    day, month = h.series("alice", "24h", now), h.series("alice", "30d", now)
    assert len(day) == 72 and len(month) == 360  # one sample per 5-min bucket: 72 a day
    assert all(p["ram_bytes"] == 125 for p in month)  # the mean of 100..150 in each 2-hour bucket
    cpu = next(c for c in charts(month) if c["title"] == "CPU")
    assert cpu["n"] == 359 and abs(cpu["max"] - 5.0) < 1e-6  # 60 CPU-s per 1200 s = 5 %
    assert next(c for c in charts(month) if c["title"] == "I/O read")["n"] == 0
    h.forget("alice")
    assert h.rows_of("alice") == 0


TCP_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def _row(addr: str, port: int, uid: int, st: str = "0A", inode: int = 7) -> str:
    return f"   0: {addr}:{port:04X} 00000000:0000 {st} 00000000:00000000 00:00000000 00000000 {uid:5d} 0 {inode} 1\n"


def test_listener_owner_check_refuses_strangers_and_silence(tmp_path: Path) -> None:
    from provisioner.apps.listeners import ListenerRefused, check_owner

    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "tcp").write_text(TCP_HEADER + _row("0100007F", 40001, 1001)
                                          + _row("00000000", 40002, 1002) + _row("0100007F", 40003, 1001, st="01"))
    (tmp_path / "net" / "tcp6").write_text(TCP_HEADER + _row("00000000000000000000000000000000", 40001, 1666))
    with pytest.raises(ListenerRefused, match="uid 1666"):
        check_owner(40001, 1001, tmp_path)  # a second, dual-stack listener of a stranger on the same port
    check_owner(40002, 1002, tmp_path)
    with pytest.raises(ListenerRefused, match="squatted"):
        check_owner(40002, 1001, tmp_path)
    with pytest.raises(ListenerRefused, match="nothing listens"):
        check_owner(40003, 1001, tmp_path)  # an established connection is no listener


@settings(deadline=None)
@given(st.text(max_size=300))
def test_socket_table_parser_never_raises(text: str) -> None:
    from provisioner.apps.listeners import parse_socket_table

    rows = parse_socket_table(TCP_HEADER + text)  # malformed lines are skipped, never an exception
    assert all(isinstance(r.uid, int) and isinstance(r.address, str) for r in rows)


@settings(deadline=None)
@given(st.text(max_size=80))
def test_front_door_paths_name_a_slot_and_an_app_or_nothing(uri: str) -> None:
    from provisioner.hub.frontdoor import parse_app_path

    got = parse_app_path(uri)
    if got is not None:
        assert uri.startswith("/apps/") and all(c.isascii() and (c.isalnum() or c in "_-") for c in got[0] + got[1])
        assert got[0][0].isalpha() and len(got[0]) <= 31


def test_fence_script_lists_each_port_with_its_slot_and_resets_the_rest() -> None:
    from provisioner.hub.appfence import fence_script

    script = fence_script("t", {(40002, 1002), (40001, 1001), (40003, 1001)}, hub_uid=998)
    assert "elements = { 40001, 40002, 40003 }" in script
    assert "elements = { 40001 . 1001, 40002 . 1002, 40003 . 1001 }" in script
    assert "meta skuid { 0, 998 } accept" in script and script.index("accept") < script.index("reject")
    assert script.startswith("table inet t {}\ndelete table inet t\n")  # one transaction replaces the table
    assert "elements" not in fence_script("t", set(), 998)  # nft refuses an empty element list


def test_totp_codes_are_single_use_and_guessing_is_capped(tmp_path: Path) -> None:
    import pyotp

    from provisioner.apps.vault import Vault
    from provisioner.hub.totp import FAILURE_WINDOW, MAX_FAILURES, TotpStore

    t = TotpStore(Store(tmp_path / "db"), Vault(tmp_path / "key"))
    e = t.begin("alice")
    now = 1_800_000_000.0
    codes = t.confirm("alice", pyotp.TOTP(e.secret).at(now), now=now)
    assert codes is not None and len(set(codes)) == 10
    assert not t.verify("alice", pyotp.TOTP(e.secret).at(now), now=now + 1)  # replay of the same step
    nxt = pyotp.TOTP(e.secret).at(now + 30)
    for _ in range(MAX_FAILURES):
        assert not t.verify("alice", "000000" if nxt != "000000" else "111111", now=now + 31)
    assert not t.verify("alice", nxt, now=now + 32)  # capped: even the right code waits
    assert not t.verify("alice", codes[0], now=now + 33)
    later = now + 32 + FAILURE_WINDOW
    assert t.verify("alice", pyotp.TOTP(e.secret).at(later), now=later)
    assert t.verify("alice", codes[0], now=later + 1) and not t.verify("alice", codes[0], now=later + 2)
    assert t.recovery_left("alice") == 9


def _bridge_at(tmp_path: Path, now: list[float]) -> Bridge:
    from provisioner.config import Config

    return Bridge(Config(state_dir=tmp_path), HubConfig(responses_every=60), clock=lambda: now[0])


def _response_rows(tmp_path: Path) -> list[dict[str, object]]:
    import json

    from provisioner.config import Config
    from provisioner.context import Context

    ctx = Context(Config(state_dir=tmp_path))
    try:
        rows = ctx.store.db.execute("SELECT action, detail FROM audit WHERE action = 'hub.responses'").fetchall()
    finally:
        ctx.close()
    return [json.loads(r["detail"]) for r in rows]


def test_hub_response_counts_make_at_most_one_audit_row_per_half_window(tmp_path: Path) -> None:
    from provisioner.metrics.health import response_statuses

    now = [1000.0]
    b = _bridge_at(tmp_path, now)
    for i in range(300):  # a web process (or an attacker holding it) calling as fast as it can
        now[0] = 1000.0 + i * 0.1
        assert b.handle({"op": "responses", "statuses": {"200": 2, "503": 1}})["ok"]
    rows = _response_rows(tmp_path)
    assert len(rows) == 1  # 30 s of calls, half a window: the first one only
    now[0] = 1031.0
    assert b.handle({"op": "responses", "statuses": {"500": 1}}) == {"ok": True, "written": True}
    rows = _response_rows(tmp_path)
    assert len(rows) == 2
    total: dict[int, int] = {}
    for r in rows:
        for status, n in response_statuses(__import__("json").dumps(r)):
            total[status] = total.get(status, 0) + n
    assert total == {200: 600, 503: 300, 500: 1}  # nothing lost between the rows


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.none(), st.integers(), st.text(max_size=5),
                 st.dictionaries(st.one_of(st.text(max_size=4), st.sampled_from(["200", "503", "099", "600"])),
                                 st.one_of(st.integers(-5, 10**10), st.booleans(), st.text(max_size=3)),
                                 max_size=70)))
def test_hub_response_counts_are_validated_or_refused(tmp_path_factory: pytest.TempPathFactory,
                                                      statuses: object) -> None:
    b = _bridge_at(tmp_path_factory.mktemp("resp"), [0.0])
    reply = b.handle({"op": "responses", "statuses": statuses})
    ok = isinstance(statuses, dict) and len(statuses) <= 64 and all(
        isinstance(k, str) and k.isascii() and k.isdigit() and len(k) == 3 and 100 <= int(k) <= 599
        and isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 10**9 for k, v in statuses.items())
    assert reply["ok"] is ok
    if not ok:
        assert reply["error"].startswith("statuses: ")


def test_counted_tallies_every_status_and_an_exception_as_500() -> None:
    import asyncio

    from provisioner.hub.responses import ResponseTally, counted

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        if scope["path"] == "/boom":
            raise RuntimeError("boom")
        await send({"type": "http.response.start", "status": int(str(scope["path"])[1:]), "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    async def sink(message: object) -> None:
        return None

    tally = ResponseTally()
    wrapped = counted(app, tally)
    for path in ("/200", "/303", "/503", "/boom", "/200"):
        try:
            asyncio.run(wrapped({"type": "http", "path": path}, None, sink))
        except RuntimeError:
            pass
    asyncio.run(wrapped({"type": "lifespan", "path": "/200"}, None, sink))  # not a response
    assert tally.take() == {"200": 2, "303": 1, "500": 1, "503": 1}
