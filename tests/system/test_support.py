"""Support access with consent, for real: a staff account reads a slot's home only inside the window.

Real slots on a btrfs loop image, a real staff account in the admin group, the tenant answering
with the installed ``slotwarden-me`` as itself (runuser), the kernel's idmapped mount. The
attacks: a tenant-planted symlink to /etc/shadow and to another slot's file, a write through a
read-only grant, a forged answer (a file in the inbox owned by another tenant), a shell whose
working directory is inside the grant when it ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner import support
from tests.system.fixtures.hosts import SlotHost
from tests.system.fixtures.policy import make_slot, me, policy_host
from tests.system.fixtures.processes import as_user, wait_for
from tests.system.fixtures.sshd import remove_user

pytestmark = pytest.mark.root
ADMIN_GROUP = "slotwarden-admin"  # the host default; host init makes it (hidepid's exempt group)


@pytest.fixture(scope="module")
def host() -> Iterator[SlotHost]:
    with policy_host("support", lambda base: f'[support]\nmax_duration = "1d"\ngrants_dir = "{base}/grants"\n') as h:
        yield h


@contextlib.contextmanager
def account(name: str, admin: bool) -> Iterator[pwd.struct_passwd]:
    subprocess.run(["useradd", "-M", "-s", "/bin/sh", *(["-G", ADMIN_GROUP] if admin else []), name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        remove_user(name)


def home(host: SlotHost, name: str) -> Path:
    return host.slots_root / name


def staff_run(staff: str, script: str) -> subprocess.CompletedProcess[str]:
    return as_user(staff, script)


def grant_of(host: SlotHost, grant_id: int) -> dict[str, object]:
    out = host.slotctl("--json", "support", "show", str(grant_id))
    assert out.returncode == 0, out.stderr
    data: dict[str, object] = json.loads(out.stdout)
    return data


def request(host: SlotHost, slot: str, staff: str, *extra: str) -> int:
    out = host.slotctl("--json", "support", "request", slot, "--by", staff, "--reason", "ticket 4711",
                       "--for", "1h", *extra)
    assert out.returncode == 0, out.stderr
    return int(json.loads(out.stdout)["id"])


def test_bad_requests_are_one_line_errors_and_change_nothing(host: SlotHost) -> None:
    slot = make_slot(host)
    tag = secrets.token_hex(2)
    with account(f"{host.prefix}st{tag}", admin=True) as staff, account(f"{host.prefix}ou{tag}", admin=False) as out:
        cases = [
            (["support", "request", slot, "--by", out.pw_name, "--reason", "r", "--for", "1h"], "not in the admin"),
            (["support", "request", slot, "--by", "nobody-such-x", "--reason", "r", "--for", "1h"], "no account"),
            (["support", "request", slot, "--by", "root", "--reason", "r", "--for", "1h"], "root"),
            (["support", "request", slot, "--by", staff.pw_name, "--reason", "r", "--for", "0h"], "more than zero"),
            (["support", "request", slot, "--by", staff.pw_name, "--reason", "r", "--for", "2d"], "at most"),
            (["support", "request", slot, "--by", staff.pw_name, "--reason", "r", "--for", "soon"], "duration"),
            (["support", "request", f"{host.prefix}nosuch", "--by", staff.pw_name, "--reason", "r", "--for", "1h"],
             "no slot"),
            (["support", "request", slot, "--by", staff.pw_name, "--reason", "a\x1b[2Jb", "--for", "1h"], "printable"),
            (["support", "request", slot, "--by", slot, "--reason", "r", "--for", "1h"], "is a slot"),
        ]
        for args, msg in cases:
            r = host.slotctl(*args)
            assert r.returncode == 2, (args, r.stderr)
            assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
        listed = host.slotctl("--json", "support", "list", slot)
        assert json.loads(listed.stdout) == []
        for args in (["support", "list", f"{host.prefix}nosuch"], ["support", "show", "999999"],
                     ["support", "revoke", "999999"], ["support", "list", "Bad/Name"],
                     ["notice", "list", f"{host.prefix}nosuch"], ["notice", "close", "999999"]):
            r = host.slotctl(*args)
            assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)


def test_staff_reads_only_inside_the_window_and_links_never_widen_it(host: SlotHost) -> None:
    slot, other = make_slot(host), make_slot(host)
    as_user(slot, "umask 077; echo tenant-data > ~/notes.txt; ln -s /etc/shadow ~/shadow; "
                  f"ln -s {home(host, other)}/private.txt ~/other")
    as_user(other, "umask 077; echo other-data > ~/private.txt")
    with account(f"{host.prefix}st{secrets.token_hex(2)}", admin=True) as staff:
        gid = request(host, slot, staff.pw_name)
        # The tenant sees it in its shell; the login message names it.
        listed = me(host, slot, "support", "list")
        assert listed.returncode == 0 and f"request {gid}" in listed.stdout and "ticket 4711" in listed.stdout
        assert f"request {gid}" in me(host, slot, "login-message").stdout
        # Nothing yet: the home is the tenant's alone.
        assert staff_run(staff.pw_name, f"cat {home(host, slot)}/notes.txt").returncode != 0
        assert grant_of(host, gid)["mountpoint"] is None

        # Another tenant cannot answer for it: the answers live in the tenant's home, and a file
        # there owned by anyone else (root makes it, owned by the other tenant) is dropped unread;
        # so is a link planted in place of an answer, and the inbox root publishes is read-only.
        assert as_user(other, f"echo 'approve {gid}' > {home(host, slot)}/.slotwarden/answers/x").returncode != 0
        assert as_user(slot, f"echo 'approve {gid}' > {host.base}/inbox/{slot}/inbox.json").returncode != 0
        assert as_user(slot, "mkdir -p ~/.slotwarden/answers && ln -s /etc/shadow ~/.slotwarden/answers/link"
                       ).returncode == 0
        forged = home(host, slot) / ".slotwarden" / "answers" / "forged"
        forged.write_text(f"approve {gid}\n")
        os.chown(forged, pwd.getpwnam(other).pw_uid, -1)
        assert grant_of(host, gid)["state"] == "requested" and not forged.exists()
        assert not (home(host, slot) / ".slotwarden" / "answers" / "link").is_symlink()
        assert Path("/etc/shadow").stat().st_size > 0

        assert me(host, slot, "support", "approve", str(gid)).returncode == 0
        g = grant_of(host, gid)
        assert g["state"] == "active" and g["write"] is False
        mnt = Path(str(g["mountpoint"]))
        assert mnt.parent == host.base / "grants" / staff.pw_name

        read = staff_run(staff.pw_name, f"cat {mnt}/notes.txt")
        assert read.returncode == 0 and read.stdout == "tenant-data\n"
        # Read-only: no write, no new file, no removal.
        assert staff_run(staff.pw_name, f"echo x >> {mnt}/notes.txt").returncode != 0
        assert staff_run(staff.pw_name, f"touch {mnt}/new").returncode != 0
        assert staff_run(staff.pw_name, f"rm -f {mnt}/notes.txt").returncode != 0 or (mnt / "notes.txt").exists()
        assert (home(host, slot) / "notes.txt").read_text() == "tenant-data\n"
        # The planted links resolve with the staff's own rights: nothing beyond the home.
        assert staff_run(staff.pw_name, f"cat {mnt}/shadow").returncode != 0
        shown = staff_run(staff.pw_name, f"cat {mnt}/other")
        assert shown.returncode != 0 and "other-data" not in shown.stdout
        # Nobody else gets in through the grant's path: not another tenant, not another staff member.
        assert as_user(other, f"ls {mnt}").returncode != 0
        assert mnt.parent.stat().st_uid == staff.pw_uid and mnt.parent.stat().st_mode & 0o777 == 0o500
        with account(f"{host.prefix}s2{secrets.token_hex(2)}", admin=True) as colleague:
            assert staff_run(colleague.pw_name, f"cat {mnt}/notes.txt").returncode != 0

        # A shell sitting inside when the window closes is stopped; the view is gone.
        sitter = subprocess.Popen(["runuser", "-u", staff.pw_name, "--", "/bin/sh", "-c", "exec sleep 600"],
                                  cwd=mnt, stdin=subprocess.DEVNULL)
        try:
            ctx = host.ctx()
            try:
                expires = float(grant_of(host, gid)["expires_at"])  # type: ignore[arg-type]
                support.sync(ctx, now=expires - 60)
                assert grant_of(host, gid)["state"] == "active"
                expired = support.sync(ctx, now=expires + 1)
            finally:
                ctx.close()
            assert any(f"grant {gid}" in e for e in expired)
            wait_for(lambda: sitter.poll() is not None, timeout=10)
        finally:
            if sitter.poll() is None:
                sitter.kill()
            sitter.wait()
        assert grant_of(host, gid)["state"] == "expired"
        assert staff_run(staff.pw_name, f"cat {mnt}/notes.txt").returncode != 0
        assert not mnt.exists()

        audit = [a["action"] for a in host.ctx().store.audit_entries(slot)]
        for action in ("support.request", "support.approve", "support.grant", "support.expire"):
            assert action in audit, audit
        report = json.loads(host.slotctl("--json", "data", "report", slot).stdout)
        item = next(i for i in report["items"] if i["item"] == "support grants")
        assert item["value"][0]["id"] == gid and item["value"][0]["state"] == "expired"
        assert f"request {gid}" not in me(host, slot, "login-message").stdout


def test_write_grant_refuse_and_revocation_by_either_side(host: SlotHost) -> None:
    slot = make_slot(host)
    as_user(slot, "echo hi > ~/a.txt")
    tenant = pwd.getpwnam(slot)
    with account(f"{host.prefix}st{secrets.token_hex(2)}", admin=True) as staff:
        refused = request(host, slot, staff.pw_name)
        assert me(host, slot, "support", "refuse", str(refused)).returncode == 0
        assert grant_of(host, refused)["state"] == "refused"

        # Write asked but approved read-only: read-only.
        ro = request(host, slot, staff.pw_name, "--write")
        assert me(host, slot, "support", "approve", str(ro), "--read-only").returncode == 0
        g = grant_of(host, ro)
        assert g["state"] == "active" and g["write"] is False
        assert staff_run(staff.pw_name, f"touch {g['mountpoint']}/x").returncode != 0
        assert host.slotctl("support", "revoke", str(ro)).returncode == 0
        assert grant_of(host, ro)["state"] == "revoked" and not Path(str(g["mountpoint"])).exists()
        again = host.slotctl("support", "revoke", str(ro))
        assert again.returncode == 1 and "already revoked" in again.stderr

        rw = request(host, slot, staff.pw_name, "--write")
        assert me(host, slot, "support", "approve", str(rw)).returncode == 0
        g = grant_of(host, rw)
        assert g["write"] is True
        assert staff_run(staff.pw_name, f"echo fixed > {g['mountpoint']}/fix.txt").returncode == 0
        made = home(host, slot) / "fix.txt"
        assert made.read_text() == "fixed\n" and made.stat().st_uid == tenant.pw_uid  # the tenant's file on disk
        # The tenant ends it at once.
        assert me(host, slot, "support", "revoke", str(rw)).returncode == 0
        assert grant_of(host, rw)["state"] == "revoked"
        assert staff_run(staff.pw_name, f"cat {g['mountpoint']}/a.txt").returncode != 0
        assert grant_of(host, rw)["ended_by"] == slot


def test_suspension_and_removal_revoke_every_grant(host: SlotHost) -> None:
    slot = make_slot(host)
    as_user(slot, "echo hi > ~/a.txt")
    with account(f"{host.prefix}st{secrets.token_hex(2)}", admin=True) as staff:
        g1 = request(host, slot, staff.pw_name)
        assert me(host, slot, "support", "approve", str(g1)).returncode == 0
        mnt = Path(str(grant_of(host, g1)["mountpoint"]))
        assert staff_run(staff.pw_name, f"cat {mnt}/a.txt").returncode == 0
        pending = request(host, slot, staff.pw_name)
        assert host.slotctl("slot", "suspend", slot, "--reason", "unpaid").returncode == 0
        assert grant_of(host, g1)["state"] == "revoked" and grant_of(host, pending)["state"] == "revoked"
        assert staff_run(staff.pw_name, f"cat {mnt}/a.txt").returncode != 0
        assert host.slotctl("slot", "unsuspend", slot).returncode == 0

        g2 = request(host, slot, staff.pw_name)
        assert me(host, slot, "support", "approve", str(g2)).returncode == 0
        mnt2 = Path(str(grant_of(host, g2)["mountpoint"]))
        assert mnt2.is_dir()
        removed = host.slotctl("slot", "remove", slot)
        assert removed.returncode == 0, removed.stderr
        assert grant_of(host, g2)["state"] == "revoked" and not mnt2.exists()
        assert not (host.base / "inbox" / slot).exists()
        assert not home(host, slot).exists()


def test_host_init_installs_the_login_script(host: SlotHost) -> None:
    script = host.base / "profile.d" / "slotwarden-inbox.sh"
    wait_for(script.exists, timeout=1)
    text = script.read_text()
    assert "login-message" in text and str(host.base / "bin" / "slotwarden-me") in text
    assert script.stat().st_mode & 0o777 == 0o644


def test_a_tenant_answers_only_its_own_requests(host: SlotHost) -> None:
    """The Hub's bridge path (apply_answer, the tenant already authenticated): B cannot approve A's request."""
    from provisioner.inbox import Answer

    slot, other = make_slot(host), make_slot(host)
    with account(f"{host.prefix}st{secrets.token_hex(2)}", admin=True) as staff:
        gid = request(host, slot, staff.pw_name)
        ctx = host.ctx()
        try:
            assert support.apply_answer(ctx, other, Answer("approve", gid), time.time()) is False
            assert grant_of(host, gid)["state"] == "requested"
            assert support.apply_answer(ctx, slot, Answer("refuse", gid), time.time()) is True
            assert support.apply_answer(ctx, slot, Answer("approve", gid), time.time()) is False
        finally:
            ctx.close()
        assert grant_of(host, gid)["state"] == "refused"
