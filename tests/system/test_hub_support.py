"""The data policy on the Hub, for real: support requests answered and takedown notices shown.

One Hub lab (TLS, PAM with the guard, the bridge) with an ``[inbox]`` and ``[support]`` of its
own; a real staff account in the admin group; the grant is the kernel's idmapped mount, made and
ended by the bridge when the tenant answers on the page. The attacks: another tenant's session
answering this tenant's request, a form without its CSRF token, markup in the request's reason
and in a notice's file name.
"""

from __future__ import annotations

import json
import pwd
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.system.fixtures.hub import CSRF, POLICY, HubLab, close_hub_lab, make_hub_lab
from tests.system.fixtures.processes import as_user
from tests.system.fixtures.sshd import remove_user

pytestmark = [pytest.mark.root]
ADMIN_GROUP = "slotwarden-admin"


@pytest.fixture(scope="module")
def hub() -> Iterator[HubLab]:
    lab = make_hub_lab("hubsup", extra=POLICY)
    try:
        yield lab
    finally:
        close_hub_lab(lab)


@pytest.fixture
def staff(hub: HubLab) -> Iterator[pwd.struct_passwd]:
    name = f"{hub.host.prefix}st{secrets.token_hex(2)}"
    subprocess.run(["useradd", "-M", "-s", "/bin/sh", "-G", ADMIN_GROUP, name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        remove_user(name)


def request(hub: HubLab, slot: str, staff: str, reason: str = "ticket 4711", *extra: str) -> int:
    out = hub.host.slotctl("--json", "support", "request", slot, "--by", staff, "--reason", reason, "--for", "1h",
                           *extra)
    assert out.returncode == 0, out.stderr
    return int(json.loads(out.stdout)["id"])


def grant_of(hub: HubLab, grant_id: int) -> dict[str, Any]:
    out = hub.host.slotctl("--json", "support", "show", str(grant_id))
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def answer(c: httpx.Client, grant_id: int, verb: str, **extra: str) -> httpx.Response:
    page = c.get("/support")
    assert page.status_code == 200, page.text[:300]
    return c.post("/support/answer", data={"csrf": CSRF.search(page.text).group(1), "grant": str(grant_id),
                                           "verb": verb, **extra})


def audit_of(hub: HubLab, slot: str, grant_id: int) -> list[tuple[str, str]]:
    ctx = hub.host.ctx()
    try:
        rows = ctx.store.db.execute("SELECT actor, action, detail FROM audit WHERE username = ? AND action LIKE "
                                    "'support.%' ORDER BY id", (slot,)).fetchall()
    finally:
        ctx.close()
    return [(r["actor"], r["action"]) for r in rows if json.loads(r["detail"]).get("id") == grant_id]


def test_tenant_approves_on_the_hub_and_staff_read_only_inside_the_window(hub: HubLab,
                                                                           staff: pwd.struct_passwd) -> None:
    slot = hub.create_slot()
    as_user(slot, "umask 077; echo tenant-data > ~/notes.txt")
    gid = request(hub, slot, staff.pw_name, "ticket 4711", "--write")
    with hub.logged_in(slot) as c:
        page = c.get("/support")
        assert page.status_code == 200 and f'id="grant-{gid}"' in page.text and "ticket 4711" in page.text
        assert as_user(staff.pw_name, f"cat {hub.host.slots_root}/{slot}/notes.txt").returncode != 0
        # write was asked; the tenant approves read-only
        r = answer(c, gid, "approve", read_only="1")
        assert r.status_code == 200 and f"request {gid}: active" in r.text, (
            re.findall(r'<p id="notice">.*</p>', r.text), audit_of(hub, slot, gid))
        g = grant_of(hub, gid)
        assert g["state"] == "active" and g["write"] is False
        read = as_user(staff.pw_name, f"cat {g['mountpoint']}/notes.txt")
        assert read.returncode == 0 and read.stdout == "tenant-data\n"
        assert as_user(staff.pw_name, f"touch {g['mountpoint']}/x").returncode != 0
        # audited exactly like the shell's answer: the tenant approves, slotwarden grants
        assert audit_of(hub, slot, gid)[-2:] == [(slot, "support.approve"), ("slotwarden", "support.grant")]
        # and ended from the Hub at once
        r = answer(c, gid, "revoke")
        assert r.status_code == 200 and f"request {gid}: revoked" in r.text
        assert grant_of(hub, gid)["state"] == "revoked"
        assert as_user(staff.pw_name, f"cat {g['mountpoint']}/notes.txt").returncode != 0
        assert not Path(str(g["mountpoint"])).exists()
        assert audit_of(hub, slot, gid)[-1] == (slot, "support.revoke")
        # a refusal, and an answer to a closed request
        refused = request(hub, slot, staff.pw_name)
        assert f"request {refused}: refused" in answer(c, refused, "refuse").text
        assert grant_of(hub, refused)["state"] == "refused" and grant_of(hub, refused)["mountpoint"] is None
        late = answer(c, refused, "approve")
        assert late.status_code == 409 and grant_of(hub, refused)["state"] == "refused"


def test_another_tenants_session_cannot_answer_and_a_form_needs_its_token(hub: HubLab,
                                                                          staff: pwd.struct_passwd) -> None:
    victim, attacker = hub.create_slot(), hub.create_slot()
    gid = request(hub, victim, staff.pw_name)
    with hub.logged_in(attacker) as c:
        assert f'id="grant-{gid}"' not in c.get("/support").text
        for verb in ("approve", "refuse", "revoke"):
            r = answer(c, gid, verb)
            assert r.status_code == 409 and f"no open support request {gid} of this slot" in r.text
        # hostile values of the form's fields are refused, not interpreted
        for raw in ("-1", "0", "1e3", "9" * 20, f"{gid} ", "x"):
            page = c.get("/support")
            r = c.post("/support/answer", data={"csrf": CSRF.search(page.text).group(1), "grant": raw,
                                                "verb": "approve"})
            assert r.status_code == 409
        page = c.get("/support")
        r = c.post("/support/answer", data={"csrf": CSRF.search(page.text).group(1), "grant": str(gid),
                                            "verb": "delete"})
        assert r.status_code == 409 and "verb: expected" in r.text
    with hub.logged_in(victim) as c:
        for data in ({"grant": str(gid), "verb": "approve"}, {"csrf": "x" * 43, "grant": str(gid), "verb": "approve"}):
            assert c.post("/support/answer", data=data).status_code == 403
    g = grant_of(hub, gid)
    assert g["state"] == "requested" and g["mountpoint"] is None
    assert [a for _, a in audit_of(hub, victim, gid)] == ["support.request"]


def test_markup_in_a_reason_and_a_notice_path_is_text(hub: HubLab, staff: pwd.struct_passwd) -> None:
    slot = hub.create_slot()
    reason = '<script>alert("reason")</script><img src=x onerror=alert(1)>'
    file_name = '<img src=x onerror=alert(5)>"<svg onload=alert(6)>.txt'
    request(hub, slot, staff.pw_name, reason)
    as_user(slot, f"echo x > ~/'{file_name}'")
    out = hub.host.slotctl("--json", "notice", "takedown", slot, file_name, "--ref", "<b>DMCA-1</b>")
    assert out.returncode == 0, out.stderr
    nid = int(json.loads(out.stdout)["id"])
    with hub.logged_in(slot) as c:
        r = c.get("/support")
    assert r.status_code == 200
    for raw in ("<script>alert(", "<img src=x", "<svg", "<b>DMCA-1"):
        assert raw not in r.text
    assert "&lt;script&gt;alert(&#34;reason&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in r.text
    row = re.search(rf'<tr id="notice-{nid}">(.*?)</tr>', r.text, re.S)
    assert row, r.text
    assert "&lt;img src=x onerror=alert(5)&gt;&#34;&lt;svg onload=alert(6)&gt;.txt" in row.group(1)
    assert "&lt;b&gt;DMCA-1&lt;/b&gt;" in row.group(1)
    assert "script-src" not in r.headers["content-security-policy"]


def test_notice_shows_path_case_deadline_and_state(hub: HubLab) -> None:
    slot = hub.create_slot()
    as_user(slot, "mkdir -p ~/www && echo x > ~/www/song.mp3")
    out = hub.host.slotctl("--json", "notice", "takedown", slot, "www/song.mp3", "--ref", "CASE-77")
    assert out.returncode == 0, out.stderr
    notice = json.loads(out.stdout)
    with hub.logged_in(slot) as c:
        text = c.get("/support").text
    row = re.search(rf'<tr id="notice-{notice["id"]}">(.*?)</tr>', text, re.S)
    assert row, text
    cells = re.findall(r"<td>(.*?)</td>", row.group(1), re.S)
    assert cells[1] == '<code class="path">www/song.mp3</code>' and cells[2] == "CASE-77"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", cells[3]) and cells[4] == notice["state"]
    assert hub.host.slotctl("notice", "close", str(notice["id"])).returncode == 0
    with hub.logged_in(slot) as c:
        assert f'id="notice-{notice["id"]}"' not in c.get("/support").text
