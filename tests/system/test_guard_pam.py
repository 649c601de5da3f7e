"""The guard in a real PAM stack, driven through python-pam and libpam (root).

A test PAM service ``slotwarden-test-<rand>`` includes Debian's real
common-auth/common-account; ``slotctl guard install`` adds the guard; a
pam_exec counter after the guard's preauth line counts the password checks
that actually reach pam_unix.
"""

from __future__ import annotations

import ctypes
import os
import re
import secrets
import sqlite3
import stat
import subprocess
import time
from collections.abc import Iterator

import pam
import pytest

from pam_hooks.install import TOLERANT
from pam_hooks.protocol import MAX_FIELD_BYTES, escape
from tests.system.fixtures.guard import GuardEnv
from tests.system.fixtures.processes import wait_for
from tests.system.fixtures.sshd import lab_user
from tests.system.pamclient import PAM_AUTH_ERR, PAM_PERM_DENIED, PAM_SUCCESS, PamHandle, concurrent_attempts

pytestmark = [pytest.mark.root]

PAIR_DENY = 3


def pam_line(line: str) -> list[str]:
    """type, control (a bracket control kept whole), module of one PAM line."""
    m = re.match(r"^\s*(\S+)\s+(\[[^]]*\]|\S+)\s*(\S*)", line)
    assert m, line
    return [m.group(1), m.group(2), m.group(3)]


def try_login(service: str, user: str | bytes, password: str, rhost: str) -> bool:
    """One python-pam authenticate (+ account) with PAM_RHOST set."""
    p = pam.PamAuthenticator()
    real = p.pam_authenticate

    def with_rhost(handle: object, flags: int) -> int:
        p.pam_set_item(handle, 4, ctypes.c_char_p(rhost.encode()))
        return int(real(handle, flags))

    p.pam_authenticate = with_rhost
    return bool(p.authenticate(user, password, service=service, resetcreds=False))


@pytest.fixture(scope="module")
def guard() -> Iterator[GuardEnv]:
    env = GuardEnv({"pair_deny": PAIR_DENY, "ip_deny": 1000, "user_deny": 1000, "window": "15m"})
    try:
        env.start()
        yield env
    finally:
        env.close()


@pytest.fixture(scope="module")
def service(guard: GuardEnv) -> str:
    return guard.pam_service(count_checks=True)


@pytest.fixture
def user() -> Iterator[tuple[str, str]]:
    name, pw = f"tg{secrets.token_hex(3)}", f"Pw-{secrets.token_hex(8)}"
    with lab_user(name, pw):
        yield name, pw


def record(guard: GuardEnv, user: str, ip: str) -> dict[str, object]:
    rows = guard.json("list", "--user", user, "--ip", ip)
    assert len(rows) == 1, rows
    return rows[0]


def test_lock_after_n_failures_then_correct_password_refused(guard: GuardEnv, service: str,
                                                            user: tuple[str, str]) -> None:
    name, pw = user
    ip = "198.51.100.20"
    assert try_login(service, name, pw, ip)  # the password works before
    for _ in range(PAIR_DENY):
        assert not try_login(service, name, "wrong", ip)
    before = guard.checks(name)
    assert not try_login(service, name, pw, ip)  # right password, locked pair
    assert guard.checks(name) == before  # ...and it was never checked
    assert try_login(service, name, pw, "198.51.100.21")  # same user elsewhere: fine
    rec = record(guard, name, ip)
    assert rec["count"] == PAIR_DENY and rec["refused"] == 1 and rec["locked_until"] is not None
    ex = guard.json("explain", "--user", name, "--ip", ip)
    assert ex["allowed"] is False and ex["rule"] == "pair"
    guard.json("lift", "--user", name, "--ip", ip)
    assert try_login(service, name, pw, ip)


def test_success_clears_pair_count(guard: GuardEnv, service: str, user: tuple[str, str]) -> None:
    name, pw = user
    ip = "198.51.100.22"
    for _ in range(PAIR_DENY - 1):
        assert not try_login(service, name, "wrong", ip)
    assert try_login(service, name, pw, ip)
    for _ in range(PAIR_DENY - 1):
        assert not try_login(service, name, "wrong", ip)
    assert try_login(service, name, pw, ip)  # not locked: the success reset the count
    rec = record(guard, name, ip)
    assert (rec["count"], rec["succeeded"], rec["refused"]) == (0, 2, 0)  # count shown since the last success


def test_unknown_user_answered_like_known(guard: GuardEnv, service: str, user: tuple[str, str]) -> None:
    known, _ = user
    unknown = f"tg{secrets.token_hex(3)}nx"
    results = {}
    for name, ip in ((known, "198.51.100.23"), (unknown, "198.51.100.24")):
        results[name] = [try_login(service, name, "wrong", ip) for _ in range(PAIR_DENY + 2)]
        rec = record(guard, name, ip)
        results[name].append((rec["count"], rec["refused"], rec["locked_until"] is not None))
    assert results[known] == results[unknown]
    assert results[unknown][-1] == (PAIR_DENY, 2, True)


def test_fifty_concurrent_wrong_attempts_exact(guard: GuardEnv, service: str, user: tuple[str, str]) -> None:
    name, _ = user
    ip = "198.51.100.25"
    statuses = concurrent_attempts(service, ip, [(name, f"wrong-{i}") for i in range(50)])
    assert len(statuses) == 50 and PAM_SUCCESS not in statuses
    assert guard.checks(name) <= PAIR_DENY  # at most N passwords were ever checked
    rec = record(guard, name, ip)
    assert rec["count"] == guard.checks(name)  # every checked (failed) password is recorded
    assert rec["count"] + rec["refused"] == 50  # and every attempt left a trace
    wait_for(lambda: record(guard, name, ip)["pending"] == 0)  # every pam_end reported its outcome


def test_repeated_tries_on_one_handle(guard: GuardEnv, service: str, user: tuple[str, str]) -> None:
    """sshd calls pam_authenticate several times on one handle; each failed try counts once."""
    name, pw = user
    ip = "198.51.100.26"
    with PamHandle(service, name, ip, "wrong", no_delay=True) as h:
        assert h.authenticate() == PAM_AUTH_ERR
        assert h.authenticate() == PAM_AUTH_ERR
        h.set_password(pw)
        assert h.authenticate() == PAM_SUCCESS
        assert h.acct_mgmt() == PAM_SUCCESS
    rec = record(guard, name, ip)
    assert (rec["count"], rec["succeeded"], rec["pending"]) == (0, 1, 0)  # success cleared the pair
    with PamHandle(service, name, ip, "wrong", no_delay=True) as h:
        assert h.authenticate() == PAM_AUTH_ERR
        assert h.authenticate() == PAM_AUTH_ERR
    # pam_end's cleanup resolves the last try (sent without waiting for the reply)
    wait_for(lambda: record(guard, name, ip)["pending"] == 0)
    assert record(guard, name, ip)["count"] == 2


def test_aborted_conversation_is_not_a_failure(guard: GuardEnv, service: str, user: tuple[str, str]) -> None:
    name, _ = user
    ip = "198.51.100.27"
    for _ in range(PAIR_DENY + 1):
        with PamHandle(service, name, ip, abort=True, no_delay=True) as h:
            assert h.authenticate() != PAM_SUCCESS
    assert guard.json("list", "--user", name, "--ip", ip) == []
    assert guard.json("explain", "--user", name, "--ip", ip)["allowed"] is True


def test_locked_pair_refused_in_account_phase(guard: GuardEnv, service: str, user: tuple[str, str]) -> None:
    """The account hook is what stops key logins (sshd skips auth for keys)."""
    name, _ = user
    ip = "198.51.100.28"
    for _ in range(PAIR_DENY):
        assert not try_login(service, name, "wrong", ip)
    with PamHandle(service, name, ip) as h:
        assert h.acct_mgmt() == PAM_PERM_DENIED
    with PamHandle(service, name, "198.51.100.29") as h:
        assert h.acct_mgmt() == PAM_SUCCESS


@pytest.mark.parametrize("raw", [
    b"bad\nuser\twith\x01controls\x7f",
    b"a" * 65536,
    b"\xff\xfe\xc3(invalid-utf8",
    b"% %41 %..",
])
def test_hostile_pam_user_recorded_safely(guard: GuardEnv, service: str, raw: bytes) -> None:
    ip = "198.51.100.30"
    with PamHandle(service, raw, ip, "wrong", no_delay=True) as h:
        assert h.authenticate() != PAM_SUCCESS
    rows = [r for r in guard.json("list", "--ip", ip) if r["username"] == escape(raw)]
    assert len(rows) == 1
    recorded = rows[0]["username"]
    assert recorded.isascii() and recorded.isprintable() and " " not in recorded
    assert len(recorded) <= 3 * MAX_FIELD_BYTES + 3
    assert recorded.endswith("%..") == (len(raw) > MAX_FIELD_BYTES)
    # the operator can name it as displayed
    assert [r["username"] for r in guard.json("list", "--user", recorded)] == [recorded]
    assert guard.json("status")["service"]["running"] is True  # the service is still there


def test_store_and_socket_are_root_only(guard: GuardEnv, user: tuple[str, str]) -> None:
    name, _ = user
    for p in (guard.cfg.socket, guard.cfg.db_path):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600 and os.stat(p).st_uid == 0
    probe = ("import socket,sys; s=socket.socket(socket.AF_UNIX); s.settimeout(2)\n"
             "try:\n s.connect(sys.argv[1]); s.sendall(b'JSON\\t{\"op\": \"purge\"}\\n')\n"
             " print(s.recv(99))\n"
             "except OSError as e: print('refused', e.errno)\n")
    r = subprocess.run(["setpriv", f"--reuid={name}", f"--regid={name}", "--init-groups", "/usr/bin/python3",
                        "-c", probe, str(guard.cfg.socket)], capture_output=True, text=True, check=False)
    assert r.stdout.startswith("refused"), r.stdout + r.stderr


def test_fail_mode_open_and_closed_when_service_down(user: tuple[str, str]) -> None:
    name, pw = user
    for mode, expect in (("open", True), ("closed", False)):
        env = GuardEnv({"fail_mode": mode})
        try:
            svc = env.pam_service()  # the service is not running
            assert try_login(svc, name, pw, "198.51.100.31") is expect
        finally:
            env.close()


def test_store_survives_restart_and_old_records_vanish(user: tuple[str, str]) -> None:
    name, pw = user
    ip = "198.51.100.32"
    env = GuardEnv({"pair_deny": 2})
    try:
        env.start()
        svc = env.pam_service()
        for _ in range(2):
            assert not try_login(svc, name, "wrong", ip)
        env.stop()
        env.start()
        assert not try_login(svc, name, pw, ip)  # still locked after the restart
        assert env.json("list", "--user", name)[0]["count"] == 2
        # Age every record past the 24 h retention, as if a day went by.
        env.stop()
        db = sqlite3.connect(env.cfg.db_path)
        old = time.time() - 86400 - 60
        db.execute("UPDATE attempts SET ts = ?", (old,))
        db.execute("UPDATE locks SET locked_at = ?, locked_until = ?, reset_at = 0", (old, old + 900))
        db.commit()
        db.close()
        env.start()  # the service purges at start and every minute by itself
        assert env.json("list", "--user", name) == []
        assert env.json("status")["active_locks"] == []
        assert try_login(svc, name, pw, ip)
    finally:
        env.close()


def test_install_uninstall_byte_for_byte_on_debian_files(tmp_path: object) -> None:
    """On copies of Debian's stock sshd/su/login files in a temp --pam-dir."""
    from pathlib import Path

    pam_dir = Path(str(tmp_path)) / "pam.d"
    pam_dir.mkdir()
    env = GuardEnv()
    try:
        for name in ("sshd", "su", "login"):
            src = Path("/etc/pam.d") / name
            (pam_dir / name).write_bytes(src.read_bytes())
            os.chmod(pam_dir / name, 0o644)
            dry = env.json("install", "--service", name, "--pam-dir", str(pam_dir), "--dry-run", "--no-supervise")
            assert dry["changed"] is False and f"+auth     {TOLERANT['requisite']} pam_slotwarden.so" in dry["diff"]
            assert (pam_dir / name).read_bytes() == src.read_bytes()
            env.slotctl("install", "--service", name, "--pam-dir", str(pam_dir), "--no-supervise", "--no-module")
            text = (pam_dir / name).read_text()
            lines = [pam_line(ln) for ln in text.splitlines() if ln and not ln.startswith("#")]
            pre = lines.index(["auth", TOLERANT["requisite"], "pam_slotwarden.so"])
            assert lines[pre + 1] == ["@include", "common-auth", ""]
            assert lines[pre + 2] == ["auth", "optional", "pam_slotwarden.so"]
            acct = lines.index(["account", TOLERANT["required"], "pam_slotwarden.so"])
            assert lines[acct + 1] == ["@include", "common-account", ""]
            assert env.slotctl("install", "--service", name, "--pam-dir", str(pam_dir), "--no-supervise",
                               check=False).returncode == 1  # already installed: refused, unchanged
            env.slotctl("uninstall", "--service", name, "--pam-dir", str(pam_dir))
            assert (pam_dir / name).read_bytes() == src.read_bytes()
            assert stat.S_IMODE((pam_dir / name).stat().st_mode) == 0o644
    finally:
        env.close()


@pytest.mark.parametrize(("mode", "logs_in"), [("open", True), ("closed", False)])
def test_module_removed_by_hand(user: tuple[str, str], tmp_path: object, mode: str, logs_in: bool) -> None:
    """pam_slotwarden.so deleted without uninstalling: with fail_mode = open logins still work (unguarded).

    (The lines said ``requisite pam_slotwarden.so``: a module PAM cannot load failed every login.)
    """
    import shutil
    from pathlib import Path

    from pam_hooks.install import built_module

    name, pw = user
    module = Path(str(tmp_path)) / "pam_slotwarden.so"
    shutil.copyfile(built_module(), module)
    env = GuardEnv({"fail_mode": mode, "pair_deny": 3})
    try:
        env.start()
        svc = f"slotwarden-test-{secrets.token_hex(4)}"
        path = Path("/etc/pam.d") / svc
        path.write_text("@include common-auth\n@include common-account\n")
        env.services.append(path)
        env.slotctl("install", "--service", svc, "--no-supervise", "--module-path", str(module))
        rhost = "198.51.100.33"
        assert concurrent_attempts(svc, rhost, [(name, "wrong")]) == [PAM_AUTH_ERR]
        assert record(env, name, rhost)["count"] == 1  # guarded while the module is there
        module.unlink()  # removed by hand
        # fresh processes: each loads the stack anew, as sshd's children do
        assert (concurrent_attempts(svc, rhost, [(name, pw)]) == [PAM_SUCCESS]) is logs_in
        assert concurrent_attempts(svc, rhost, [(name, "wrong")]) != [PAM_SUCCESS]  # never the wrong password
    finally:
        env.close()
