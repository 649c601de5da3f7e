"""The fleet without hosts: placement as a table, facts' checks, the controller's tables, the URL
and name validators, and `slotctl fleet status` with the strings a hostile host could send."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioner.cli import cli
from provisioner.errors import BadInput
from provisioner.fleet.client import parse_url, validate_host_name
from provisioner.fleet.facts import HostFacts, HostSlot
from provisioner.fleet.inventory import PLACING_KEPT_S, FleetInventory, NoRoom, UnknownHost
from provisioner.fleet.placement import HostRoom, place
from provisioner.store import Store

G = 1 << 30

# --- placement: one row a case --------------------------------------------------------------------

H = HostRoom
PLACEMENT_CASES = [
    # (hosts, quota, expected host)
    ([H("a", True, 100 * G, 10 * G, 5), H("b", True, 50 * G, 0, 0)], G, "a"),        # most room: 90 G > 50 G
    ([H("a", True, 100 * G, 60 * G, 5), H("b", True, 50 * G, 0, 0)], G, "b"),        # 40 G < 50 G
    ([H("a", False, 500 * G, 0, 0), H("b", True, 10 * G, 0, 0)], G, "b"),            # down hosts are skipped
    ([H("a", True, 10 * G, 9 * G, 1), H("b", True, 10 * G, 9 * G + 1, 1)], 2 * G, None),  # nobody has room
    ([H("a", True, 10 * G, 0, 3), H("b", True, 10 * G, 0, 2)], G, "b"),              # tie: fewer slots
    ([H("a", True, 10 * G, 0, 2, 4 * G), H("b", True, 10 * G, 0, 2, 8 * G)], G, "b"),  # then more memory
    ([H("a", True, 10 * G, 0, 2, G, 0.5), H("b", True, 10 * G, 0, 2, G, 0.1)], G, "b"),  # then lower load
    ([H("b", True, 10 * G, 0), H("a", True, 10 * G, 0)], G, "a"),                   # then the name
    ([H("a", True, 10 * G, 10 * G)], 0, "a"),                                        # no quota fits a full host
    ([], G, None),
]


@pytest.mark.parametrize(("hosts", "quota", "expected"), PLACEMENT_CASES)
def test_placement_rule(hosts: list[HostRoom], quota: int, expected: str | None) -> None:
    p = place(hosts, quota)
    assert p.host == expected
    assert {r["host"] for r in p.candidates} == {h.name for h in hosts}
    verdicts = {r["host"]: r["verdict"] for r in p.candidates}
    if expected:
        assert verdicts[expected] == "chosen: the most room"
        assert p.candidates[0]["host"] == expected  # the pick comes first in --explain
    for h in hosts:
        if not h.up:
            assert verdicts[h.name].startswith("skipped")


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 1 << 50), st.integers(0, 1 << 50), st.integers(0, 10**5)),
                max_size=8), st.integers(0, 1 << 50))
def test_placement_never_picks_a_host_without_room(rows: list[tuple[bool, int, int, int]], quota: int) -> None:
    hosts = [H(f"h{i}", up, disk, committed, n) for i, (up, disk, committed, n) in enumerate(rows)]
    p = place(hosts, quota)
    fits = [h for h in hosts if h.up and h.room_bytes >= quota]
    if not fits:
        assert p.host is None
    else:
        chosen = next(h for h in hosts if h.name == p.host)
        assert chosen.room_bytes == max(h.room_bytes for h in fits)


# --- facts from a host ----------------------------------------------------------------------------

GOOD = {"disk_bytes": 10, "disk_free_bytes": 5, "committed_bytes": 4, "mem_total_bytes": 8,
        "mem_available_bytes": 2, "load": [0.5, 0.1, 0.0],
        "slots": [{"username": "alice", "state": "active", "quota_bytes": 4}]}


@pytest.mark.parametrize(("change", "field"), [
    ({"disk_bytes": -1}, "disk_bytes"), ({"disk_bytes": "10"}, "disk_bytes"), ({"disk_bytes": True}, "disk_bytes"),
    ({"load": [1, 2]}, "load"), ({"load": [float("nan"), 0, 0]}, "load"), ({"load": "1 2 3"}, "load"),
    ({"slots": [{"username": "[red]x\x1b[2J", "state": "active", "quota_bytes": 1}]}, "slots.username"),
    ({"slots": [{"username": "bob", "state": "pwned", "quota_bytes": 1}]}, "slots.state"),
    ({"slots": [{"username": "bob", "state": "active", "quota_bytes": 1.5}]}, "quota_bytes"),
    ({"slots": "alice"}, "slots"),
])
def test_facts_from_a_host_are_checked(change: dict[str, object], field: str) -> None:
    with pytest.raises(BadInput, match=f"facts.{field}"):
        HostFacts.parse({**GOOD, **change})


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(GOOD)), st.none() | st.booleans() | st.integers() | st.floats()
                       | st.text(max_size=20) | st.lists(st.integers(), max_size=4)))
def test_facts_parse_accepts_or_refuses_with_one_line(data: dict[str, object]) -> None:
    try:
        f = HostFacts.parse({**GOOD, **data})
    except BadInput as exc:
        assert "\n" not in str(exc) and str(exc).startswith("facts")
    else:
        assert f.disk_bytes >= 0 and all(x >= 0 for x in f.load)


# --- validators -----------------------------------------------------------------------------------


@given(st.text(max_size=80))
def test_host_names_and_urls_refuse_with_bad_input(text: str) -> None:
    for check in (validate_host_name, parse_url):
        try:
            check(text)
        except BadInput as exc:
            assert "\n" not in str(exc)


@pytest.mark.parametrize("url", ["http://198.51.100.2:8780", "https://u:p@198.51.100.2", "https://h/x",
                                 "https://h:99999", "https://h?q=1", "ftp://h", "https://"])
def test_urls_that_are_not_a_tls_api_are_refused(url: str) -> None:
    with pytest.raises(BadInput):
        parse_url(url)


# --- the controller's tables ----------------------------------------------------------------------


@pytest.fixture
def inv(tmp_path: Path) -> Iterator[FleetInventory]:
    s = Store(tmp_path / "t.db")
    yield FleetInventory(s)
    s.close()


def facts(*slots: HostSlot, disk: int = 100 * G) -> HostFacts:
    return HostFacts(disk, disk, sum(s.quota_bytes for s in slots), 8 * G, 4 * G, (0.1, 0.1, 0.1), slots)


def test_placements_count_each_others_quota_and_names_stay_on_one_host(inv: FleetInventory) -> None:
    for n in ("web1", "web2"):
        inv.put_host(n, f"https://{n}:8780", "PEM", "n", "s")
    inv.record_facts("web1", facts(disk=10 * G))
    inv.record_facts("web2", facts(disk=8 * G))
    picks = [inv.place(f"s{i}", 3 * G, place)[0].host for i in range(5)]
    # room before each pick: (10, 8) -> web1; (7, 8) -> web2; (7, 5) -> web1; (4, 5) -> web2; (4, 2) -> web1
    assert picks == ["web1", "web2", "web1", "web2", "web1"]
    with pytest.raises(NoRoom):
        inv.place("s9", 3 * G, place)
    again, placement, new = inv.place("s0", 3 * G, place)
    assert (again.host, placement, new) == ("web1", None, False)  # a retry goes back to the same host
    with pytest.raises(UnknownHost):
        inv.place("s10", 0, place, host="web9")
    with pytest.raises(NoRoom, match="host web2 has room for"):
        inv.place("s11", 3 * G, place, host="web2")  # the operator's choice must fit too
    assert inv.place("s12", G, place, host="web2")[0].host == "web2"


def test_a_refresh_makes_the_rows_what_the_host_reported(inv: FleetInventory) -> None:
    inv.put_host("web1", "https://web1", "PEM", "n", "s")
    inv.put_host("web2", "https://web2", "PEM", "n", "s")
    inv.record_facts("web1", facts(HostSlot("alice", "active", G), HostSlot("bob", "suspended", 2 * G)))
    inv.place("carol", G, place, host="web1")  # in flight
    conflicts = inv.record_facts("web2", facts(HostSlot("alice", "active", G)))
    assert conflicts == ["alice"]  # alice stays where the controller knows her
    inv.record_facts("web1", facts(HostSlot("alice", "active", G)))  # bob went away on the host
    assert [s.username for s in inv.slots("web1")] == ["alice", "carol"]  # carol is still being created
    slot = inv.slot("carol")
    assert slot is not None
    inv.record_facts("web1", facts(HostSlot("alice", "active", G)), at=slot.placed_at + PLACING_KEPT_S + 1)
    assert [s.username for s in inv.slots("web1")] == ["alice"]  # an abandoned placement is dropped
    with pytest.raises(BadInput, match="still holds 1 slots"):
        inv.remove_host("web1")
    inv.remove_host("web2")
    with pytest.raises(BadInput, match="no fleet host"):
        inv.remove_host("web2")


# --- slotctl fleet status: a hostile host's strings are data ----------------------------------------


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture], deadline=None,
          max_examples=40)
@given(st.text(max_size=120))
def test_a_hosts_error_text_is_kept_printable(inv: FleetInventory, text: str) -> None:
    inv.put_host("web1", "https://web1", "PEM", "n", "s")
    inv.record_failure("web1", f"host web1: answered HTTP 500: {text}")
    rec = inv.host("web1")
    assert rec is not None and rec.last_error is not None and not rec.up
    assert rec.last_error.isprintable() and len(rec.last_error) <= 500


def test_status_shows_what_a_host_said_as_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    monkeypatch.setenv("SLOTWARDEN_CONFIG", str(cfg))
    s = Store(tmp_path / "state" / "slotwarden.db")
    inv = FleetInventory(s)
    inv.put_host("web1", "https://web1", "PEM", "n", "s")
    inv.put_host("web2", "https://web2", "PEM", "n", "s")
    inv.record_facts("web1", facts(HostSlot("alice", "active", G)))
    hostile = "[bold red]pwned[/] \x1b[2J\x1b]0;owned\x07 </td><script>"
    inv.record_failure("web2", f"host web2: answered HTTP 500: {hostile}")
    s.close()
    from provisioner.cli import output

    monkeypatch.setattr(output.console, "width", 400)  # one line a host, so the strings are whole
    r = CliRunner().invoke(cli, ["fleet", "status", "--slots"])
    assert r.exit_code == 0, r.output
    assert "[bold red]pwned[/]" in r.output  # markup shown, not applied
    assert "\x1b[2J" not in r.output and "\x07" not in r.output
    assert "alice" in r.output and "DOWN" in r.output
    r = CliRunner().invoke(cli, ["fleet", "status", "--json", "--slots"])
    data = json.loads(r.output)
    assert data["hosts"][1]["error"].endswith("[bold red]pwned[/] \\x1b[2J\\x1b]0;owned\\x07 </td><script>")
    assert data["totals"] == {"hosts": 2, "up": 1, "slots": 1, "committed_bytes": G, "disk_bytes": 100 * G}
    r = CliRunner().invoke(cli, ["fleet", "place", "--quota", "1G", "--explain", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["host"] == "web1"
    r = CliRunner().invoke(cli, ["fleet", "place", "--quota", "1000G"])
    assert r.exit_code == 1 and "none has room" in r.output
    assert os.stat(tmp_path / "state" / "slotwarden.db").st_mode & 0o077 == 0


def test_concurrent_placements_never_overcommit(tmp_path: Path) -> None:
    """Eight purchases at once, each through its own store connection (as the API's worker threads):
    the write transaction makes each see the others' quota, so exactly the room is handed out."""
    import threading

    path = tmp_path / "c.db"
    setup = Store(path)
    inv = FleetInventory(setup)
    for n in ("web1", "web2"):
        inv.put_host(n, f"https://{n}", "PEM", "n", "s")
        inv.record_facts(n, facts(disk=3 * G))
    setup.close()
    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def buy(i: int) -> None:
        store = Store(path)
        try:
            start.wait()
            try:
                host = FleetInventory(store).place(f"c{i}", G, place)[0].host
            except NoRoom:
                host = "none"
            with lock:
                outcomes.append(host)
        finally:
            store.close()

    threads = [threading.Thread(target=buy, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["none", "none", "web1", "web1", "web1", "web2", "web2", "web2"]


# --- the API's fleet mode, without hosts: every input refused in one line, never a 5xx -------------


@pytest.fixture(scope="module")
def fleet_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, str]]:
    from fastapi.testclient import TestClient

    from provisioner.api.app import create_app
    from provisioner.api.tokens import ApiTokens
    from provisioner.config import load_config_text

    tmp = tmp_path_factory.mktemp("fleetapi")
    config = load_config_text(f'state_dir = "{tmp}"\n')
    s = Store(config.db_path)
    token = ApiTokens(s).create("billing")
    s.close()
    with TestClient(create_app(config, fleet=True)) as c:
        yield c, token


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture], deadline=None,
          max_examples=60)
@given(name=st.text(max_size=40), host=st.none() | st.text(max_size=70), quota=st.none() | st.text(max_size=12))
def test_fleet_api_refuses_bad_purchases_and_names(fleet_api: tuple[object, str], name: str, host: str | None,
                                                   quota: str | None) -> None:
    from fastapi.testclient import TestClient

    client, token = fleet_api
    assert isinstance(client, TestClient)
    auth = {"Authorization": f"Bearer {token}"}
    body: dict[str, object] = {"username": name, "email": "a@example.com", "country": "DE"}
    if host is not None:
        body["host"] = host
    if quota is not None:
        body["quota"] = quota
    r = client.post("/v1/slots", json=body, headers=auth)
    # No host is registered: a valid purchase has nowhere to go (409); anything else is refused.
    assert r.status_code in (400, 409, 422), r.text
    out = r.json()
    assert out["ok"] is False and "\n" not in out["error"]
    from urllib.parse import quote

    r = client.get(f"/v1/slots/{quote(name, safe='')}", headers=auth)
    assert r.status_code in (400, 404, 405, 422), r.text  # known to no host: never forwarded, never a 5xx


def test_fleet_api_status_and_placement_without_hosts(fleet_api: tuple[object, str]) -> None:
    from fastapi.testclient import TestClient

    client, token = fleet_api
    assert isinstance(client, TestClient)
    auth = {"Authorization": f"Bearer {token}"}
    assert client.get("/v1/fleet", headers=auth).json()["totals"]["hosts"] == 0
    r = client.get("/v1/fleet/placement", params={"quota": "1G"}, headers=auth)
    assert r.status_code == 200 and r.json()["host"] is None and "most room wins" in r.json()["rule"]
    assert client.get("/v1/fleet/placement", params={"quota": "lots"}, headers=auth).status_code == 400
    assert client.get("/v1/fleet").status_code == 401
