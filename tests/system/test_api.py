"""The provisioning API for real: ``slotctl api serve`` on loopback, real slots behind it."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from provisioner import accounts, loginstate
from tests.system.fixtures.api import ApiServer, api_server, make_token, self_signed_cert
from tests.system.fixtures.doors import su_from_root, su_password
from tests.system.fixtures.hosts import PLANS, SLOTCTL, SlotHost, app_ports, new_name, slot_host
from tests.system.fixtures.netns import LabNet
from tests.system.fixtures.processes import stop_process

pytestmark = pytest.mark.root  # not root: the session fixture in conftest.py fails the run


@pytest.fixture(scope="module")
def host() -> Iterator[SlotHost]:
    with slot_host("api", size="2G", plans=PLANS, apps=app_ports(2580, 2599)) as h:
        yield h


@pytest.fixture(scope="module")
def api(host: SlotHost) -> Iterator[ApiServer]:
    with api_server(host) as server:
        yield server


def _purchase(name: str, **extra: object) -> dict[str, object]:
    return {"username": name, "email": f"{name}@example.com", "country": "de", **extra}


def _terminate(api: ApiServer, name: str) -> None:
    with api.client() as c:
        c.delete(f"/v1/slots/{name}")


def test_purchase_suspend_unsuspend_change_plan_terminate(api: ApiServer) -> None:
    name = new_name()
    try:
        with api.client() as c:
            r = c.post("/v1/slots", json=_purchase(name, plan="small", payment_ref="PAYID-42"),
                       headers={"Idempotency-Key": str(uuid.uuid4())})
            assert r.status_code == 201, r.text
            created = r.json()
            password = created["password"]
            assert created["username"] == name and created["plan"] == "small" and created["quota_bytes"] == 64 << 20
            assert su_password(name, password)

            r = c.post(f"/v1/slots/{name}/suspend", json={"reason": "invoice 7 unpaid"})
            assert r.status_code == 200 and r.json()["changed"] is True
            assert not su_password(name, password) and not su_from_root(name)
            shown = c.get(f"/v1/slots/{name}").json()
            assert shown["state"] == "suspended" and shown["suspended_reason"] == "invoice 7 unpaid"
            assert shown["suspended_by"].startswith("api:tests-")

            r = c.post(f"/v1/slots/{name}/unsuspend")
            assert r.status_code == 200 and r.json()["changed"] is True
            assert su_password(name, password)

            r = c.post(f"/v1/slots/{name}/plan", json={"plan": "large"})
            assert r.status_code == 200, r.text
            usage = c.get(f"/v1/slots/{name}/usage").json()
            assert usage["plan"] == "large" and usage["quota_bytes"] == 256 << 20
            assert usage["enforced_limit_bytes"] == 256 << 20 and usage["used_bytes"] is not None

            r = c.post(f"/v1/slots/{name}/password")
            assert r.status_code == 200
            new_password = r.json()["password"]
            assert new_password != password and su_password(name, new_password)

            r = c.delete(f"/v1/slots/{name}")
            assert r.status_code == 200 and r.json()["removed"] is True
            assert accounts.lookup_user(name) is None
            assert c.get(f"/v1/slots/{name}").status_code == 404
    finally:
        _terminate(api, name)
    ctx = api.host.ctx()
    try:
        entries = [e for e in ctx.store.audit_entries(name) if e["action"].startswith("api.")]
        assert [(e["action"], e["detail"]["status"]) for e in entries] == [
            ("api.create", 201), ("api.suspend", 200), ("api.show", 200), ("api.unsuspend", 200),
            ("api.change_plan", 200), ("api.usage", 200), ("api.password", 200), ("api.terminate", 200),
            ("api.show", 404), ("api.terminate", 404)]
        assert {e["actor"] for e in entries} == {f"api:{api_token_name(api)}"}
        assert entries[0]["detail"]["idempotency_key"]
    finally:
        ctx.close()


def api_token_name(api: ApiServer) -> str:
    ctx = api.host.ctx()
    try:
        from provisioner.api.tokens import ApiTokens

        name = ApiTokens(ctx.store).verify(api.token)
        assert name is not None
        return name
    finally:
        ctx.close()


def test_missing_wrong_or_revoked_token_gets_401(api: ApiServer) -> None:
    with api.client(token=None) as c:
        r = c.get("/v1/plans")
        assert r.status_code == 401 and r.json()["field"] == "Authorization"
        assert r.headers["www-authenticate"] == "Bearer"
        assert c.post("/v1/slots", json=_purchase(new_name())).status_code == 401
    with api.client(token="swt_not-a-token") as c:
        assert c.get("/v1/plans").status_code == 401
    with api.client(token="Basic abc") as c:
        assert c.get("/v1/plans").status_code == 401
    name = f"revoked-{uuid.uuid4().hex[:6]}"
    token = make_token(api.host, name)
    with api.client(token=token) as c:
        assert c.get("/v1/plans").status_code == 200
        assert api.host.slotctl("api", "token", "revoke", name).returncode == 0
        assert c.get("/v1/plans").status_code == 401
        created = c.post("/v1/slots", json=_purchase(new_name()))
        assert created.status_code == 401
    listed = api.host.slotctl("--json", "api", "token", "list").stdout
    assert name in listed and "swt_" not in listed  # tokens are never shown again
    ctx = api.host.ctx()
    try:
        # Requests without a valid token are summarised (one row a window, the flood test counts
        # them), never written one row each.
        anonymous = [e for e in ctx.store.audit_entries() if e["actor"] == "api:anonymous"]
        assert all(e["action"] == "api.unauthenticated" and "requests" in e["detail"] for e in anonymous)
    finally:
        ctx.close()


def test_replayed_idempotency_key_creates_nothing_new_and_hides_the_password(api: ApiServer) -> None:
    name = new_name()
    key = str(uuid.uuid4())
    try:
        with api.client() as c:
            first = c.post("/v1/slots", json=_purchase(name, plan="small"), headers={"Idempotency-Key": key})
            assert first.status_code == 201, first.text
            uid = first.json()["uid"]
            again = c.post("/v1/slots", json=_purchase(name, plan="small"), headers={"Idempotency-Key": key})
            assert again.status_code == 201
            assert again.headers["idempotent-replayed"] == "true"
            body = again.json()
            assert body["replayed"] is True and body["password"] is None and body["uid"] == uid
            assert first.json()["password"] not in again.text
            # Same key, another request: refused, nothing done.
            other = c.post("/v1/slots", json=_purchase(new_name()), headers={"Idempotency-Key": key})
            assert other.status_code == 422 and other.json()["field"] == "Idempotency-Key"
            # Without a key, a second purchase of the same name is a conflict.
            assert c.post("/v1/slots", json=_purchase(name)).status_code == 409
            # Replays of a change operation too.
            k2 = {"Idempotency-Key": str(uuid.uuid4())}
            assert c.post(f"/v1/slots/{name}/suspend", json={"reason": "x"}, headers=k2).json()["changed"] is True
            assert c.post(f"/v1/slots/{name}/unsuspend").status_code == 200
            replay = c.post(f"/v1/slots/{name}/suspend", json={"reason": "x"}, headers=k2)
            assert replay.json()["replayed"] is True
            assert c.get(f"/v1/slots/{name}").json()["state"] == "active"  # the replay suspended nothing
        ctx = api.host.ctx()
        try:
            creates = [e for e in ctx.store.audit_entries(name) if e["action"] == "slot.create"]
            assert len(creates) == 1
            assert [r.username for r in ctx.store.list_slots()].count(name) == 1
        finally:
            ctx.close()
    finally:
        _terminate(api, name)


def test_twenty_parallel_creates_of_different_slots_all_succeed(api: ApiServer) -> None:
    names = [new_name() for _ in range(20)]

    def create(name: str) -> httpx.Response:
        with api.client() as c:
            return c.post("/v1/slots", json=_purchase(name, plan="small"), headers={"Idempotency-Key": name})

    def terminate(name: str) -> httpx.Response:
        with api.client() as c:
            return c.delete(f"/v1/slots/{name}")

    try:
        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(create, names))
        assert [r.status_code for r in results] == [201] * 20, [r.text for r in results if r.status_code != 201]
        assert len({r.json()["uid"] for r in results}) == 20
        for name in names:
            assert accounts.lookup_user(name) is not None
        with ThreadPoolExecutor(20) as pool:
            removed = list(pool.map(terminate, names))
        refused = [r.text for r in removed if r.status_code != 200]
        assert [r.status_code for r in removed] == [200] * 20, refused
        assert all(accounts.lookup_user(n) is None for n in names)
    finally:
        for name in names:
            _terminate(api, name)


def test_concurrent_requests_on_one_slot_are_serialized(api: ApiServer) -> None:
    name = new_name()
    try:
        with api.client() as c:
            assert c.post("/v1/slots", json=_purchase(name, plan="small")).status_code == 201

        def suspend(_i: int) -> httpx.Response:
            with api.client() as c:
                return c.post(f"/v1/slots/{name}/suspend", json={"reason": "parallel"})

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(suspend, range(8)))
        assert [r.status_code for r in results] == [200] * 8
        # One request did the work; the others, serialized behind it, found it done.
        assert sorted(r.json()["changed"] for r in results) == [False] * 7 + [True]
        assert loginstate.login_state(name).suspended
    finally:
        _terminate(api, name)


BAD_CREATES = [
    # (body, status, field)
    ({"username": "Root!", "email": "a@example.com", "country": "DE"}, 400, "username"),
    ({"username": "root", "email": "a@example.com", "country": "DE"}, 400, "username"),
    ({"username": "{n}", "email": "not-an-email", "country": "DE"}, 400, "email"),
    ({"username": "{n}", "email": "a@example.com", "country": "XX"}, 400, "country"),
    ({"username": "{n}", "email": "a@example.com", "country": "DE", "plan": "gold"}, 400, "plan"),
    ({"username": "{n}", "email": "a@example.com", "country": "DE", "quota": "5 lots"}, 400, "quota"),
    ({"username": "{n}", "email": "a@example.com", "country": "DE", "quota": True}, 422, "quota"),
    ({"username": "{n}", "email": "a@example.com", "country": "DE", "payment_ref": "a b"}, 400, "payment_ref"),
    ({"username": "{n}", "email": "a@example.com"}, 422, "country"),
    ({"username": "{n}", "email": "a@example.com", "country": "DE", "shell": "/bin/sh"}, 422, "shell"),
    ({"username": "{n}", "email": "a@example.com", "country": "DE"}, 400, "Idempotency-Key"),
]


@pytest.mark.parametrize(("body", "status", "field"), BAD_CREATES,
                         ids=[f"{f}-{s}-{i}" for i, (_b, s, f) in enumerate(BAD_CREATES)])
def test_bad_input_gets_4xx_naming_the_field_and_changes_nothing(
    api: ApiServer, body: dict[str, object], status: int, field: str
) -> None:
    name = new_name()
    body = {k: (name if v == "{n}" else v) for k, v in body.items()}
    headers = {"Idempotency-Key": "bad\tkey"} if field == "Idempotency-Key" else {}
    with api.client() as c:
        r = c.post("/v1/slots", json=body, headers=headers)
        assert (r.status_code, r.json()["field"]) == (status, field), r.text
        assert r.json()["ok"] is False and r.json()["error"]
    assert accounts.lookup_user(name) is None
    ctx = api.host.ctx()
    try:
        assert ctx.store.get_slot(name) is None
    finally:
        ctx.close()


def test_bad_input_on_slot_operations(api: ApiServer) -> None:
    name = new_name()
    try:
        with api.client() as c:
            assert c.post("/v1/slots", json=_purchase(name, plan="small")).status_code == 201
            cases = [
                (c.post(f"/v1/slots/{name}/suspend", json={"reason": ""}), 422, "reason"),
                (c.post(f"/v1/slots/{name}/suspend", json={"reason": "a\nb"}), 400, "reason"),
                (c.post(f"/v1/slots/{name}/plan", json={"plan": "gold"}), 400, "plan"),
                (c.post("/v1/slots/NOPE/suspend", json={"reason": "x"}), 400, "username"),
                (c.post(f"/v1/slots/{new_name()}/unsuspend"), 404, "username"),
                (c.get(f"/v1/slots/{new_name()}/usage"), 404, "username"),
                (c.post(f"/v1/slots/{name}/plan", content=b"{", headers={"content-type": "application/json"}),
                 422, "body"),
            ]
            for r, status, field in cases:
                assert (r.status_code, r.json()["field"]) == (status, field), r.text
            shown = c.get(f"/v1/slots/{name}").json()
            assert shown["state"] == "active" and shown["plan"] == "small"
    finally:
        _terminate(api, name)


def test_change_plan_below_the_data_is_refused_with_the_figures(api: ApiServer) -> None:
    name = new_name()
    try:
        with api.client() as c:
            assert c.post("/v1/slots", json=_purchase(name, plan="large")).status_code == 201
            acct = accounts.lookup_user(name)
            assert acct is not None
            big = Path(acct.home) / "big.bin"
            with open(big, "wb") as f:
                f.write(os.urandom(1 << 20) * 80)
            os.chown(big, acct.uid, acct.gid)
            os.sync()
            r = c.post(f"/v1/slots/{name}/plan", json={"plan": "small"})
            assert r.status_code == 409
            assert "67108864 bytes (64M) of plan small" in r.json()["error"]
            assert c.get(f"/v1/slots/{name}/usage").json()["plan"] == "large"
    finally:
        _terminate(api, name)


def test_serve_refuses_a_public_address_without_tls(host: SlotHost) -> None:
    out = host.slotctl("api", "serve", "--listen", "198.51.100.9:2599")
    assert out.returncode == 2 and "needs TLS (--cert and --key)" in out.stderr
    out = host.slotctl("api", "serve", "--listen", "127.0.0.1:2599", "--cert", "/nonexistent")
    assert out.returncode == 2 and "--cert and --key go together" in out.stderr


def test_serve_on_a_lab_address_with_tls(host: SlotHost) -> None:
    """A non-loopback address (in a lab netns) is served, over TLS only."""
    with LabNet("swl-") as net:
        ns = net.host("api", f"198.51.100.{secrets.randbelow(200) + 20}")
        cert, key = self_signed_cert(host.base, ns.addr)
        port = 2540 + secrets.randbelow(10)
        token = make_token(host, f"tls-{secrets.token_hex(3)}")
        log = open(host.base / "api-tls.log", "wb")  # closed in finally
        proc = subprocess.Popen(ns.cmd([SLOTCTL, "api", "serve", "--listen", f"{ns.addr}:{port}",
                                        "--cert", str(cert), "--key", str(key)]),
                                env=host.env(), stdout=log, stderr=subprocess.STDOUT)
        probe = (
            "import sys, httpx\n"
            "url, cert, token = sys.argv[1:]\n"
            "for _ in range(150):\n"
            "    try:\n"
            "        httpx.get(url + '/healthz', verify=cert, timeout=2); break\n"
            "    except httpx.HTTPError:\n"
            "        import time; time.sleep(0.2)\n"
            "ok = httpx.get(url + '/v1/plans', verify=cert, headers={'Authorization': 'Bearer ' + token})\n"
            "anon = httpx.get(url + '/v1/plans', verify=cert)\n"
            "try:\n"
            "    plain = httpx.get(url.replace('https:', 'http:') + '/healthz', timeout=5).status_code\n"
            "except httpx.HTTPError:\n"
            "    plain = 'refused'\n"
            "print(ok.status_code, anon.status_code, plain)\n"
        )
        try:
            out = subprocess.run(ns.cmd([sys.executable, "-c", probe, f"https://{ns.addr}:{port}", str(cert), token]),
                                 capture_output=True, text=True, timeout=120)
        finally:
            stop_process(proc, 15)
            log.close()
        status, anon, plain = out.stdout.split()
        assert (status, anon) == ("200", "401"), out.stderr
        assert plain != "200"  # no plain HTTP on a public address


def test_anonymous_flood_is_bounded_and_billing_still_served(host: SlotHost) -> None:
    """As a remote client without a token: 200 requests with a 150-character Idempotency-Key.

    Before, each wrote one audit row (200 rows, the key in each); now the source gets 429 after
    its burst, the audit grows by summary rows only, and the billing system's token still works."""
    with api_server(host) as server:
        ctx = host.ctx()
        try:
            before = len(ctx.store.audit_entries())
        finally:
            ctx.close()
        key = "k" * 150
        with server.client(token=None) as c:
            statuses = [c.post("/v1/slots", json=_purchase(new_name()), headers={"Idempotency-Key": key}).status_code
                        for _ in range(200)]
        with server.client() as c:
            assert c.get("/v1/plans").status_code == 200
    ctx = host.ctx()  # the server has stopped: its last window is written
    try:
        rows = ctx.store.audit_entries()[before:]
    finally:
        ctx.close()
    assert statuses.count(401) <= 12 and statuses.count(429) >= 188, statuses
    anonymous = [e for e in rows if e["actor"] == "api:anonymous"]
    assert 1 <= len(anonymous) <= 2, anonymous  # one summary row per window (60 s), the last at shutdown
    refused = sum(e["detail"]["statuses"].get(code, 0) for e in anonymous for code in ("401", "429"))
    assert refused == 200  # every request counted (the fixture's /healthz probes are the 200s)
    assert key not in str(rows)
