"""The fleet controller for real: three hosts in network namespaces, each a slot host of its own
serving its provisioning API over TLS, and ``slotctl api serve --fleet`` in a fourth.

Placement puts each purchase on the host with the most room (checked in the hosts' own stores),
calls find a slot's host by name, and a host that stops answering is reported for its own slots
while the others go on. From the attacker's side: no token, a forged certificate, a hostile
name in the path, a bad purchase — each refused with nothing placed and nothing created.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.fixtures.api import self_signed_cert
from tests.system.fixtures.fleet import FleetApiLab, fleet_api_lab, password_matches

pytestmark = pytest.mark.timeout(1200)

# Slots filesystems of different sizes, so "most room" has one answer at each step.
SIZES = {"h1": "300M", "h2": "500M", "h3": "400M"}


@pytest.fixture(scope="module")
def lab() -> Iterator[FleetApiLab]:
    with fleet_api_lab(SIZES) as lab:
        yield lab


def _create(lab: FleetApiLab, name: str, quota: str, **extra: object) -> tuple[int, dict[str, object]]:
    body = {"username": name, "email": f"{name}@example.com", "country": "DE", "quota": quota, **extra}
    return lab.controller.call("POST", "/v1/slots", body, key=f"k-{name}")


def test_status_knows_every_host_and_explains_the_placement(lab: FleetApiLab) -> None:
    r = lab.controller.slotctl("fleet", "status", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    hosts = {h["host"]: h for h in data["hosts"]}
    assert set(hosts) == set(SIZES) and all(h["up"] for h in hosts.values())
    assert hosts["h2"]["disk_bytes"] > hosts["h3"]["disk_bytes"] > hosts["h1"]["disk_bytes"]
    assert all(h["mem_total_bytes"] > 0 and len(h["load"]) == 3 for h in hosts.values())
    r = lab.controller.slotctl("fleet", "place", "--quota", "100M", "--explain", "--json")
    p = json.loads(r.stdout)
    assert r.returncode == 0 and p["host"] == "h2" and "most room wins" in p["rule"]
    assert [c["host"] for c in p["candidates"]] == ["h2", "h3", "h1"]
    text = lab.controller.slotctl("fleet", "place", "--quota", "100M", "--explain").stdout
    assert "host: h2" in text and "chosen: the most room" in text


def test_purchases_go_to_the_host_with_most_room(lab: FleetApiLab) -> None:
    # Room before each: h2 ~500M, h3 ~400M, h1 ~300M -> h2; then h3 (400 > 350); then h2 (350 > 250).
    expected = ["h2", "h3", "h2"]
    for want in expected:
        name = lab.slot_name()
        status, out = _create(lab, name, "150M")
        assert status == 201, out
        assert out["host"] == want, out.get("placement")
        placement = out["placement"]
        assert isinstance(placement, dict) and placement["host"] == want
        assert isinstance(out["password"], str) and password_matches(name, out["password"])
        assert lab.host_of(name) == [want]  # in that host's own store, and no other
        # A retried webhook (same key) gets the first answer back from the same host.
        status, again = _create(lab, name, "150M")
        assert (status, again["host"], again.get("replayed")) == (201, want, True)
        assert lab.host_of(name) == [want]
    r = lab.controller.slotctl("fleet", "status", "--json", "--slots")
    data = json.loads(r.stdout)
    by_host = {h["host"]: h for h in data["hosts"]}
    assert by_host["h2"]["committed_bytes"] >= 300 << 20 and by_host["h3"]["committed_bytes"] >= 150 << 20


def test_calls_find_the_slot_by_name(lab: FleetApiLab) -> None:
    name = lab.slot_name()
    status, out = _create(lab, name, "20M", host="h1")  # the operator may name the host
    assert (status, out["host"], out.get("placement")) == (201, "h1", None)
    status, shown = lab.controller.call("GET", f"/v1/slots/{name}")
    assert (status, shown["host"], shown["username"]) == (200, "h1", name)
    status, pw = lab.controller.call("POST", f"/v1/slots/{name}/password", key=f"pw-{name}")
    assert status == 200 and pw["host"] == "h1" and password_matches(name, pw["password"])
    status, sus = lab.controller.call("POST", f"/v1/slots/{name}/suspend", {"reason": "unpaid"}, key=f"s-{name}")
    assert (status, sus["state"], sus["host"]) == (200, "suspended", "h1")
    status, gone = lab.controller.call("DELETE", f"/v1/slots/{name}", key=f"rm-{name}")
    assert (status, gone["removed"], gone["host"]) == (200, True, "h1")
    assert lab.host_of(name) == []
    status, out = lab.controller.call("GET", f"/v1/slots/{name}")
    assert status == 404 and "in the fleet" in str(out["error"])
    r = lab.controller.slotctl("fleet", "status", "--json", "--slots")
    assert name not in {s["username"] for s in json.loads(r.stdout)["slots"]}


def test_a_failing_host_is_reported_for_its_own_slots(lab: FleetApiLab) -> None:
    on_h3, on_h1 = lab.slot_name(), lab.slot_name()
    assert _create(lab, on_h3, "10M", host="h3")[0] == 201
    assert _create(lab, on_h1, "10M", host="h1")[0] == 201
    h3 = lab.hosts["h3"]
    h3.stop()
    try:
        status, out = lab.controller.call("GET", f"/v1/slots/{on_h3}")
        assert status == 502 and out["host"] == "h3" and "h3" in str(out["error"]), out
        status, out = lab.controller.call("GET", f"/v1/slots/{on_h1}")
        assert (status, out["host"]) == (200, "h1")
        r = lab.controller.slotctl("fleet", "refresh", "--json")
        assert r.returncode == 1
        results = {x["host"]: x for x in json.loads(r.stdout)["results"]}
        assert results["h1"]["ok"] and results["h2"]["ok"] and not results["h3"]["ok"]
        text = lab.controller.slotctl("fleet", "status").stdout
        assert "DOWN" in text
        # h3 has the second most room, but is down: the purchase goes elsewhere.
        name = lab.slot_name()
        status, out = _create(lab, name, "10M")
        assert status == 201 and out["host"] != "h3", out
        verdicts = {c["host"]: c["verdict"] for c in out["placement"]["candidates"]}  # type: ignore[index]
        assert verdicts["h3"].startswith("skipped")
    finally:
        h3.start()
    r = lab.controller.slotctl("fleet", "refresh", "h3")
    assert r.returncode == 0, r.stdout + r.stderr
    status, out = lab.controller.call("GET", f"/v1/slots/{on_h3}")
    assert (status, out["host"]) == (200, "h3")


def test_attackers_are_refused_and_nothing_is_placed(lab: FleetApiLab, tmp_path: Path) -> None:
    name = lab.slot_name()
    # No token, a wrong token.
    for token in (None, "swt_" + "A" * 43):
        status, _ = lab.controller.call("POST", "/v1/slots", {"username": name, "email": "x@example.com",
                                                               "country": "DE"}, token=token)
        assert status in (401, 429)
    # A bad purchase: refused before placement, no host asked.
    status, out = _create(lab, name, "10M", email="not-an-email")
    assert (status, out["field"]) == (400, "email")
    # No host has room for it.
    status, out = _create(lab, name, "100G")
    assert status == 409 and "room" in str(out["error"])
    # A host that does not exist, a hostile name in the path.
    assert _create(lab, name, "10M", host="h9")[0] == 400
    for path in ("/v1/slots/%2e%2e%2fhost", "/v1/slots/x%0a"):
        assert lab.controller.call("GET", path)[0] in (400, 404, 422)
    r = lab.controller.slotctl("fleet", "status", "--json", "--slots")
    assert name not in {s["username"] for s in json.loads(r.stdout)["slots"]} and lab.host_of(name) == []

    # A man in the middle: h1's address, but a certificate from a CA the controller never trusted.
    h1 = lab.hosts["h1"]
    rogue_cert, _ = self_signed_cert(tmp_path, h1.net.addr)
    r = lab.controller.slotctl("fleet", "host", "add", "rogue", "--url", h1.url, "--ca", str(rogue_cert),
                               "--token-file", str(h1.token_file))
    assert r.returncode == 1 and "TLS refused" in r.stdout + r.stderr, r.stdout + r.stderr
    # (the real h1 serves a certificate of its own; the one the controller got for "rogue" is another)
    assert lab.controller.slotctl("fleet", "host", "remove", "rogue").returncode == 0

    # A token file others can read is refused; the tokens never sit in the store in clear.
    loose = tmp_path / "loose.token"
    loose.write_text(h1.token_file.read_text())
    loose.chmod(0o644)
    r = lab.controller.slotctl("fleet", "host", "add", "loose", "--url", h1.url, "--ca", str(h1.cert),
                               "--token-file", str(loose))
    assert r.returncode == 2 and "mode 0600" in r.stderr
    db = (lab.controller.base / "state" / "slotwarden.db").read_bytes()
    wal = lab.controller.base / "state" / "slotwarden.db-wal"
    blob = db + (wal.read_bytes() if wal.exists() else b"")
    for h in lab.hosts.values():
        token = h.token_file.read_text().strip()
        assert token.encode() not in blob
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert token not in ps
