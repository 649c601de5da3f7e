"""The Hub for real: `slotctl hub serve` over TLS, PAM with the guard, the bridge, attacks from outside.

One lab for the module (a btrfs slot host, its guard service, a PAM service
``slotwarden-hub-test-<rand>``, the Hub on a free loopback port); each test makes its own slots.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.system.fixtures.hosts import SLOTCTL
from tests.system.fixtures.hub import CSRF, PAIR_DENY, HubLab, close_hub_lab, make_hub_lab
from tests.system.fixtures.processes import as_user, wait_for

pytestmark = [pytest.mark.root]


@pytest.fixture(scope="module")
def hub() -> Iterator[HubLab]:
    lab = make_hub_lab()
    try:
        yield lab
    finally:
        close_hub_lab(lab)


def status_uids(pid: int) -> list[int]:
    line = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("Uid:"))
    return [int(x) for x in line.split()[1:]]


def test_host_init_made_the_hub_user_and_a_self_signed_certificate(hub: HubLab) -> None:
    out = subprocess.run(["id", "-u", hub.hub_user], capture_output=True, text=True)
    assert out.returncode == 0
    key = hub.cert.with_name("hub.key")
    assert oct(key.stat().st_mode & 0o777) == "0o600" and key.stat().st_uid == 0
    text = subprocess.run(["openssl", "x509", "-noout", "-text", "-in", str(hub.cert)], capture_output=True,
                          text=True, check=True).stdout
    assert "IP Address:127.0.0.1" in text


def test_the_web_process_is_not_root_and_the_bridge_socket_is_private(hub: HubLab) -> None:
    uid = int(subprocess.run(["id", "-u", hub.hub_user], capture_output=True, text=True).stdout)
    assert status_uids(hub.web_pid()) == [uid] * 4
    groups = next(ln for ln in Path(f"/proc/{hub.web_pid()}/status").read_text().splitlines()
                  if ln.startswith("Groups:"))
    assert groups.split()[1:] == []
    st = hub.bridge_socket.stat()
    assert st.st_uid == uid and oct(st.st_mode & 0o777) == "0o600"


def test_login_then_overview_then_logout(hub: HubLab) -> None:
    name = hub.create_slot()
    with hub.logged_in(name) as c:
        cookie = c.cookies.get("__Host-sw_session")
        assert cookie
        r = c.get("/overview")
        assert r.status_code == 200 and f'id="slot-name">{name}<' in r.text
        assert 'id="m-quota" data-bytes="67108864"' in r.text
        raw = r.headers.get_list("set-cookie")
        assert raw == []
        token = CSRF.search(r.text).group(1)
        r = c.post("/logout", data={"csrf": token})
        assert r.status_code == 303 and r.headers["location"] == "/login"
        # the stolen cookie is worthless once its owner logged out
    with hub.client() as thief:
        thief.cookies.set("__Host-sw_session", cookie, domain="127.0.0.1")
        r = thief.get("/overview")
        assert r.status_code == 303 and r.headers["location"] == "/login"


def test_session_cookie_flags(hub: HubLab) -> None:
    name = hub.create_slot()
    with hub.client() as c:
        r = hub.login(c, name)
        header = next(h for h in r.headers.get_list("set-cookie") if h.startswith("__Host-sw_session="))
        flags = {f.strip().lower() for f in header.split(";")[1:]}
        assert {"secure", "httponly", "samesite=strict", "path=/"} <= flags
        assert not any(f.startswith("domain") for f in flags)


def test_wrong_passwords_lock_with_the_same_page_for_an_unknown_name(hub: HubLab) -> None:
    name = hub.create_slot()
    unknown = hub.host.name()  # never created
    pages = {}
    for who in (name, unknown):
        with hub.client() as c:
            for _ in range(PAIR_DENY - 1):
                r = hub.login(c, who, "wrong-password")
                assert r.status_code == 401 and "Wrong username or password." in r.text
            assert hub.login(c, who, "wrong-password").status_code == 429  # the failure that locks
            r = hub.login(c, who, hub.passwords.get(who, "whatever"))  # even the right password now
            assert r.status_code == 429 and 'id="locked-until"' in r.text
            until = re.search(r'id="locked-until">([^<]+)<', r.text).group(1)
            assert re.match(r"\d{4}-\d\d-\d\dT", until), until
            pages[who] = r.text.replace(until, "UNTIL")
    assert pages[name] == pages[unknown]
    # the guard recorded the Hub's failures like any other PAM service's
    rows = hub.slotctl_json("guard", "list", "--user", name)
    assert rows and rows[0]["ip"] == "127.0.0.1"


def test_hub_logins_lock_the_client_address_never_a_local_origin(hub: HubLab) -> None:
    """PAM_RHOST is the client's address: wrong passwords from 127.0.0.2 lock (user, 127.0.0.2) only.

    A root service calling PAM with no rhost and no tty is counted by the guard as
    ``local:root:notty``; a web login must never be (it would lock the user's console origin).
    """
    name = hub.create_slot()
    transport = httpx.HTTPTransport(local_address="127.0.0.2", verify=ssl.create_default_context(cafile=str(hub.cert)))
    with httpx.Client(base_url=hub.url, transport=transport, timeout=60) as attacker:
        for _ in range(PAIR_DENY):
            hub.login(attacker, name, "wrong-password")
        assert hub.login(attacker, name).status_code == 429  # the right password, locked from there
    rows = hub.slotctl_json("guard", "list", "--user", name)
    assert {r["ip"] for r in rows} == {"127.0.0.2"}, rows
    assert not any(str(r["ip"]).startswith("local:") for r in rows)
    locked = hub.slotctl_json("guard", "list", "--user", name, "--locked")
    assert [r["ip"] for r in locked] == ["127.0.0.2"]
    with hub.client() as c:  # the same user from another address is not locked
        r = hub.login(c, name)
        assert r.status_code == 303 and r.headers["location"] == "/overview"


def test_hub_server_errors_reach_the_health_counter(hub: HubLab) -> None:
    """A 503 (the bridge gone) is tallied by the web process and audited as hub.responses once it is back."""
    from provisioner.metrics.health import ResponseCounter

    name = hub.create_slot()
    ctx = hub.host.ctx()
    try:
        counter = ResponseCounter()
        counter.update(ctx)
        before = counter.counts.get(("hub", "5xx"), 0)
        away = hub.bridge_socket.with_name("bridge-away.sock")
        with hub.logged_in(name) as c:
            os.rename(hub.bridge_socket, away)
            try:
                for _ in range(3):
                    assert c.get("/overview").status_code == 503
            finally:
                os.rename(away, hub.bridge_socket)

            def counted() -> bool:
                counter.update(ctx)
                return counter.counts.get(("hub", "5xx"), 0) >= before + 3

            wait_for(counted, timeout=30)
        rows = ctx.store.db.execute("SELECT actor, detail FROM audit WHERE action = 'hub.responses'").fetchall()
        assert rows and {r["actor"] for r in rows} == {"hub"}
        assert all(set(json.loads(r["detail"])) == {"statuses", "requests", "since", "until"} for r in rows)
    finally:
        ctx.close()


def test_login_without_the_form_token_is_refused(hub: HubLab) -> None:
    name = hub.create_slot()
    with hub.client() as c:
        r = c.post("/login", data={"username": name, "password": hub.passwords[name]})
        assert r.status_code == 403 and "__Host-sw_session" not in r.headers.get("set-cookie", "")


def test_csrf_without_token_changes_nothing(hub: HubLab) -> None:
    name = hub.create_slot()
    with hub.logged_in(name) as c:
        for data in ({}, {"csrf": "x" * 43}):
            r = c.post("/sessions/logout-all", data=data)
            assert r.status_code == 403
        assert c.get("/overview").status_code == 200  # still logged in


def test_session_fixation_is_not_possible(hub: HubLab) -> None:
    name = hub.create_slot()
    planted = "A" * 43
    with hub.client() as c:
        c.cookies.set("__Host-sw_session", planted, domain="127.0.0.1")
        assert c.get("/overview").status_code == 303  # an unknown token is no session
        r = hub.login(c, name)
        assert r.status_code == 303
        issued = r.cookies.get("__Host-sw_session")
        assert issued and issued != planted
    with hub.client() as attacker:
        attacker.cookies.set("__Host-sw_session", planted, domain="127.0.0.1")
        assert attacker.get("/overview").status_code == 303


def test_log_out_everywhere_ends_the_other_sessions(hub: HubLab) -> None:
    name = hub.create_slot()
    with hub.logged_in(name) as a, hub.logged_in(name) as b:
        page = a.get("/sessions")
        assert page.text.count("<tr><td>") == 2
        r = a.post("/sessions/logout-all", data={"csrf": CSRF.search(page.text).group(1)})
        assert r.status_code == 303
        assert b.get("/overview").status_code == 303
        assert a.get("/overview").status_code == 303


def test_hostile_typed_username_is_escaped(hub: HubLab) -> None:
    evil = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
    with hub.client() as c:
        r = hub.login(c, evil, "x")
        assert r.status_code == 401
        assert "<script>alert(1)" not in r.text and "<img src=x" not in r.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text
        assert "script-src" not in r.headers["content-security-policy"]  # no script source at all


def test_processes_are_only_my_own_and_command_lines_are_escaped(hub: HubLab) -> None:
    mine, other = hub.create_slot(), hub.create_slot()
    marker = "<b>x</b><script>alert(3)</script>"
    procs = [subprocess.Popen(["runuser", "-u", who, "--", "/bin/bash", "-c", f'exec -a "{marker}{who}" sleep 300'],
                              start_new_session=True) for who in (mine, other)]
    try:
        for who in (mine, other):
            wait_for(lambda w=who: subprocess.run(["pgrep", "-u", w, "sleep"],
                                                  capture_output=True).returncode == 0)
        with hub.logged_in(mine) as c:
            r = c.get("/processes")
            assert r.status_code == 200
            assert f"&lt;b&gt;x&lt;/b&gt;&lt;script&gt;alert(3)&lt;/script&gt;{mine}" in r.text
            assert other not in r.text and "<script>alert(3)" not in r.text
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def test_overview_agrees_with_slotwarden_me(hub: HubLab) -> None:
    name = hub.create_slot()
    as_user(name, "head -c 3000000 /dev/urandom > ~/blob && sync")
    me = json.loads(as_user(name, f"{hub.host.base}/bin/slotwarden-me --json --sample 0").stdout)
    with hub.logged_in(name) as c:
        text = c.get("/overview").text
    figures = {k: int(v) for k, v in re.findall(r'id="m-(\w+)" data-bytes="(\d+)"', text)}
    assert figures["quota"] == me["quota_bytes"]
    assert abs(figures["disk"] - me["disk_used_bytes"]) <= 256 * 1024


def test_data_report_downloads_as_json(hub: HubLab) -> None:
    name = hub.create_slot()
    with hub.logged_in(name) as c:
        r = c.get("/data-report.json")
        assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
        report = r.json()
        assert report["username"] == name and report["is_slot"] is True
        assert hub.passwords[name] not in r.text


def test_login_activity_lists_my_failures_and_successes(hub: HubLab) -> None:
    name = hub.create_slot()
    with hub.client() as c:
        assert hub.login(c, name, "nope").status_code == 401
    with hub.logged_in(name) as c:
        text = c.get("/activity").text
    assert "failed (password)" in text and "success" in text and "127.0.0.1" in text


def test_suspended_slot_cannot_log_in(hub: HubLab) -> None:
    name = hub.create_slot()
    with hub.logged_in(name) as c:
        hub.slotctl_json("slot", "suspend", name, "--reason", "test")
        assert c.get("/overview").status_code == 303  # the open session ends with the suspension
    with hub.client() as c:
        r = hub.login(c, name)  # the right password: refused (suspend also locks the hash)
        assert r.status_code in (401, 403) and "__Host-sw_session" not in r.headers.get("set-cookie", "")


def test_a_tenant_cannot_talk_to_the_bridge(hub: HubLab) -> None:
    name = hub.create_slot()
    script = hub.host.base / "bridge-probe.py"
    script.write_text("import socket, sys\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect(sys.argv[1])\n"
                      "except OSError as e:\n    print('refused', e.errno)\nelse:\n"
                      "    s.sendall(b'{\"op\": \"whoami\"}\\n')\n    print(s.recv(200))\n")
    script.chmod(0o644)
    out = as_user(name, f"/usr/bin/python3 {script} {hub.bridge_socket}")
    assert out.stdout.startswith("refused"), out
    # and the credentials check stands even for a process that can open the socket (root here)
    from provisioner.hub.client import BridgeClient

    reply = BridgeClient(hub.bridge_socket).call("whoami", token="x")
    assert reply == {"ok": False, "error": "not the hub"}


def test_plain_http_gets_no_page(hub: HubLab) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{hub.port}/login", timeout=5).raise_for_status()


def _form_token(text: str) -> str:
    return CSRF.search(text).group(1)


def test_totp_enrolment_then_login_needs_the_code(hub: HubLab) -> None:
    import pyotp

    name = hub.create_slot()
    with hub.logged_in(name) as c:
        page = c.get("/security")
        assert page.status_code == 200, page.text
        r = c.post("/security/totp/begin", data={"csrf": _form_token(page.text)})
        assert r.status_code == 200 and 'id="totp-qr" src="data:image/svg+xml;base64,' in r.text
        secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', r.text).group(1)
        bad = c.post("/security/totp/confirm", data={"csrf": _form_token(r.text), "code": "000000"})
        assert bad.status_code == 400
        r = c.post("/security/totp/confirm", data={"csrf": _form_token(r.text), "code": pyotp.TOTP(secret).now()})
        assert r.status_code == 200
        codes = re.findall(r'class="recovery-code">([a-z0-9-]+)<', r.text)
        assert len(codes) == 10
    # at rest: neither the secret nor a recovery code in clear
    db = (hub.host.base / "state" / "slotwarden.db").read_bytes()
    assert secret.encode() not in db and codes[0].encode() not in db
    with hub.client() as c:
        r = hub.login(c, name)
        assert r.status_code == 303 and r.headers["location"] == "/login/second-factor"
        assert c.get("/overview").status_code == 303  # the password alone opens nothing
        form = c.get("/login/second-factor")
        r = c.post("/login/second-factor", data={"csrf": _form_token(form.text), "code": "123456"})
        assert r.status_code == 401
        pending = c.cookies.get("__Host-sw_session")
        code = pyotp.TOTP(secret).at(time.time() + 30)  # the next step: the current one was spent on enrolment
        r = c.post("/login/second-factor", data={"csrf": _form_token(form.text), "code": code})
        assert r.status_code == 303 and r.headers["location"] == "/overview"
        assert r.cookies.get("__Host-sw_session") != pending
        assert c.get("/overview").status_code == 200
        # the same code again (replay) is refused
        c2 = hub.client()
        with c2:
            hub.login(c2, name)
            form = c2.get("/login/second-factor")
            r = c2.post("/login/second-factor", data={"csrf": _form_token(form.text), "code": code})
            assert r.status_code == 401
            r = c2.post("/login/second-factor", data={"csrf": _form_token(form.text), "code": codes[0]})
            assert r.status_code == 303  # a recovery code works once
    with hub.client() as c3:
        hub.login(c3, name)
        form = c3.get("/login/second-factor")
        r = c3.post("/login/second-factor", data={"csrf": _form_token(form.text), "code": codes[0]})
        assert r.status_code == 401


@pytest.fixture
def staff(hub: HubLab) -> Iterator[tuple[str, str]]:
    name, password = f"{hub.host.prefix}st{secrets.token_hex(2)}", f"St-{secrets.token_hex(10)}"
    subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", "-G", "slotwarden-admin", name], check=True)
    try:
        subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True)
        yield name, password
    finally:
        subprocess.run(["userdel", name], check=False)


def test_staff_need_a_second_factor_then_see_every_slot(hub: HubLab, staff: tuple[str, str]) -> None:
    import pyotp

    name, password = staff
    slot = hub.create_slot()
    hub.passwords[name] = password
    with hub.client() as c:
        r = hub.login(c, name)  # right password, no second factor enrolled: refused like a wrong one
        assert r.status_code == 401 and "Wrong username or password." in r.text
    enrol = subprocess.Popen([SLOTCTL, "hub", "totp-enrol", name, "--json"], env=hub.host.env(), text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = enrol.stderr.readline()
    secret = re.search(r"key for \S+: ([A-Z2-7]+)", line).group(1)
    out, _ = enrol.communicate(pyotp.TOTP(secret).now() + "\n", timeout=60)
    assert enrol.returncode == 0 and len(json.loads(out)["recovery_codes"]) == 10
    with hub.client() as c:
        r = hub.login(c, name)
        assert r.headers["location"] == "/login/second-factor"
        assert c.get("/admin").status_code == 303
        form = c.get("/login/second-factor")
        r = c.post("/login/second-factor", data={"csrf": _form_token(form.text),
                                                 "code": pyotp.TOTP(secret).at(time.time() + 30)})
        assert r.headers["location"] == "/admin"
        page = c.get("/admin")
        assert page.status_code == 200 and f"<td>{slot}</td>" in page.text and "hub.login" in page.text
        assert c.get("/overview").status_code == 303  # staff are no tenant
        # lock an address, then lift it from the staff page; a hostile typed name stays text there
        evil = '<script>alert("staff")</script><img src=x onerror=alert(1)>'
        with hub.client() as t:
            for _ in range(PAIR_DENY):
                hub.login(t, slot, "wrong")
                hub.login(t, evil, "wrong")
        staff_page = c.get("/admin").text
        assert "<script>alert(" not in staff_page and "<img src=x" not in staff_page
        assert "&lt;script&gt;alert(" in staff_page
        assert hub.slotctl_json("guard", "list", "--user", slot, "--locked")
        r = c.post("/admin/lock", data={"csrf": _form_token(page.text), "action": "lift", "user": slot,
                                        "ip": "127.0.0.1"})
        assert r.status_code == 200 and "lift: done" in r.text
        assert not hub.slotctl_json("guard", "list", "--user", slot, "--locked")
    # a tenant's session never reaches the staff page
    with hub.logged_in(slot) as t:
        assert t.get("/admin").status_code == 303


def test_change_password_then_pam_logins_use_the_new_one(hub: HubLab) -> None:
    import pam

    name = hub.create_slot()
    old = hub.passwords[name]
    with hub.logged_in(name) as c, hub.logged_in(name) as other:
        form = c.get("/password")
        token = _form_token(form.text)
        weak = c.post("/password", data={"csrf": token, "current": old, "new": "short", "repeat": "short"})
        assert weak.status_code == 400 and "shorter than 12" in weak.text
        new = f"New-{secrets.token_hex(6)}-pw"
        wrong = c.post("/password", data={"csrf": token, "current": "not-it", "new": new, "repeat": new})
        assert wrong.status_code == 400 and "current password is wrong" in wrong.text
        r = c.post("/password", data={"csrf": token, "current": old, "new": new, "repeat": new})
        assert r.status_code == 200 and 'id="password-done"' in r.text
        assert c.get("/overview").status_code == 200  # this session stays
        assert other.get("/overview").status_code == 303  # the others end
    assert pam.authenticate(name, new, service="sshd", resetcreds=False)  # Debian's sshd stack, pam_unix
    hub.passwords[name] = new
    with hub.logged_in(name):
        pass
    with hub.client() as c:
        assert hub.login(c, name, old).status_code == 401
    entries = hub.slotctl_json("slot", "show", name)
    assert entries["username"] == name


def test_apps_install_reveal_rotate_uninstall(hub: HubLab) -> None:
    name = hub.create_slot()
    with hub.logged_in(name) as c:
        page = c.get("/apps")
        assert page.status_code == 200 and '<option value="transmission">' in page.text
        r = c.post("/apps/install", data={"csrf": _form_token(page.text), "app": "transmission"})
        assert r.status_code == 200, r.text
        first = re.search(r'id="creds-password">([^<]+)<', r.text).group(1)
        assert re.search(r'<td class="app-name">transmission</td><td>installed</td><td>yes</td>', r.text)
        r = c.post("/apps/transmission/creds", data={"csrf": _form_token(r.text)})
        assert re.search(r'id="creds-password">([^<]+)<', r.text).group(1) == first
        r = c.post("/apps/transmission/rotate", data={"csrf": _form_token(r.text)})
        second = re.search(r'id="creds-password">([^<]+)<', r.text).group(1)
        assert second != first
        evil = c.post("/apps/install", data={"csrf": _form_token(r.text), "app": "<script>alert(1)</script>"})
        assert evil.status_code == 409 and "<script>alert(1)" not in evil.text
        bogus = c.post("/apps/..%2F..%2Fetc/creds", data={"csrf": _form_token(r.text)})
        assert bogus.status_code in (400, 404, 409)  # nginx (400) or the bridge (409) refuses it
        r = c.post("/apps/transmission/uninstall", data={"csrf": _form_token(r.text)})
        assert r.status_code == 200 and "No app installed." in r.text
    actions = [e["action"] for e in hub.host.ctx().store.audit_entries(name)]
    assert "hub.app-creds-reveal" in actions and "hub.app-rotate" in actions
    assert first not in json.dumps(hub.host.ctx().store.audit_entries(name))


def test_overview_charts_fill_from_the_history_and_removal_forgets_the_slot(hub: HubLab) -> None:
    name = hub.create_slot()
    holder = subprocess.Popen(["runuser", "-u", name, "--", "/bin/sleep", "300"], start_new_session=True)
    try:
        with hub.logged_in(name) as c:
            def ram_points() -> int:
                found = re.search(r'data-points="(\d+)">\s*<strong>RAM</strong>', c.get("/overview").text)
                return int(found.group(1)) if found else 0

            wait_for(lambda: ram_points() >= 1, timeout=60)
            text = c.get("/overview?range=30d").text
            assert "last 30 days" in text and "<polyline" in text
            report = c.get("/data-report.json").json()
            items = {i["item"]: i for i in report["items"]}
            assert items["metrics history"]["value"]["rows"] >= 2 and items["hub sessions"]["value"]
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    assert hub.host.slotctl("slot", "remove", name).returncode == 0
    db = hub.host.ctx().store.db
    for table in ("hub_sessions", "hub_logins", "hub_history", "hub_totp"):
        assert db.execute(f"SELECT COUNT(*) FROM {table} WHERE username = ?", (name,)).fetchone()[0] == 0


def test_this_wasnt_me_reports_the_login_and_ends_the_other_sessions(hub: HubLab) -> None:
    name, other_slot = hub.create_slot(), hub.create_slot()
    with hub.logged_in(name) as intruder, hub.logged_in(name) as owner, hub.logged_in(other_slot) as stranger:
        page = owner.get("/activity")
        event = int(re.findall(r'name="event" value="(\d+)"', page.text)[-1])
        # another slot cannot report (or learn about) my login events
        theirs = stranger.get("/activity")
        r = stranger.post("/activity/not-me", data={"csrf": _form_token(theirs.text), "event": str(event)})
        assert r.status_code == 400
        r = owner.post("/activity/not-me", data={"csrf": _form_token(page.text), "event": str(event)})
        assert r.status_code == 200 and "Reported to the staff" in r.text
        assert intruder.get("/overview").status_code == 303 and owner.get("/overview").status_code == 200
    audit = [e for e in hub.host.ctx().store.audit_entries(name) if e["action"] == "hub.not-me"]
    assert audit and audit[0]["detail"]["event"]["address"] == "127.0.0.1"


def test_hub_supervise_keeps_it_running(hub: HubLab) -> None:
    """Last in this module: the lab's own `hub serve` makes way for the supervised one, then returns."""
    from provisioner.supervisor import supervisor_for
    from tests.system.fixtures.processes import stop_process

    stop_process(hub.procs.pop())  # the lab's hub serve (started last)
    ctx = hub.host.ctx()
    sup = supervisor_for(ctx)
    try:
        out = hub.slotctl_json("hub", "supervise")
        assert out["program"] == "slotwarden-hub@root" and out["changed"] is True
        hub.wait_answering("supervised hub")
        first = sup.status(out["program"]).pid
        os.kill(first, signal.SIGKILL)  # a crash: the supervisor starts it again
        wait_for(lambda: (sup.status(out["program"]).pid or first) != first, timeout=60)
        hub.wait_answering("restarted hub")
        again = hub.slotctl_json("hub", "supervise")
        assert again["changed"] is False
    finally:
        sup.stop("slotwarden-hub@root")
        sup.remove_program("slotwarden-hub@root")
        hub.start_hub()
