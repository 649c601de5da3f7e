"""The guard keeps deciding: descriptors run out, connections flood in, the store is damaged, the service restarts.

Each test drives real PAM logins (this checkout's pam_slotwarden.so, Debian's
common-auth) with ``fail_mode = open``: wherever the guard stops deciding,
the right password after N wrong ones gets in, and the test fails.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.fixtures.guard import GuardEnv, SyslogSink
from tests.system.fixtures.processes import wait_for
from tests.system.fixtures.sshd import lab_user
from tests.system.pamclient import PAM_SUCCESS, PamHandle, concurrent_attempts

pytestmark = [pytest.mark.root]

PAIR_DENY = 3


@pytest.fixture
def user() -> Iterator[tuple[str, str]]:
    name, pw = f"tg{secrets.token_hex(3)}", f"Pw-{secrets.token_hex(8)}"
    with lab_user(name, pw):
        yield name, pw


def login(service: str, user: str, password: str, rhost: str) -> int:
    with PamHandle(service, user, rhost, password, no_delay=True) as h:
        rc = h.authenticate()
        return h.acct_mgmt() if rc == PAM_SUCCESS else rc


def attack(env: GuardEnv, service: str, user: tuple[str, str], rhost: str, wrong: int) -> list[int]:
    """WRONG wrong passwords, then the right one; the PAM statuses."""
    name, pw = user
    return [login(service, name, f"wrong-{i}", rhost) for i in range(wrong)] + [login(service, name, pw, rhost)]


class Flood:
    """Keeps up to ``hold`` idle connections open to the guard socket (as root, like many sshd children).

    Bounded: at most ``total`` connections and ``seconds`` of flooding.
    """

    def __init__(self, path: Path, hold: int = 400, total: int = 20000, seconds: float = 120.0) -> None:
        self.path, self.hold, self.total, self.seconds = path, hold, total, seconds
        self.opened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conns: list[socket.socket] = []
        end = time.monotonic() + self.seconds
        try:
            while not self._stop.is_set() and self.opened < self.total and time.monotonic() < end:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(1)
                try:
                    s.connect(str(self.path))
                except OSError:
                    s.close()
                    time.sleep(0.01)
                    continue
                conns.append(s)
                self.opened += 1
                if len(conns) > self.hold:
                    conns.pop(0).close()
                if self.opened >= self.hold:
                    time.sleep(0.01)  # held, then renewed slowly: the service must drop idle ones
        finally:
            for s in conns:
                s.close()

    def __enter__(self) -> Flood:
        self._thread.start()
        wait_for(lambda: self.opened >= self.hold, timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def test_emfile_and_connection_flood_keep_it_deciding(user: tuple[str, str]) -> None:
    """With 48 descriptors and 400 idle connections held open, every try is still decided and counted.

    (It used to exit on the first EMFILE from accept(): logins then went unguarded.)
    """
    env = GuardEnv({"pair_deny": PAIR_DENY, "ip_deny": 1000, "user_deny": 1000, "timeout_ms": 5000})
    try:
        env.start(nofile=48)
        service = env.pam_service(count_checks=True)
        name, _ = user
        with Flood(env.cfg.socket) as flood:
            codes = attack(env, service, user, "198.51.100.61", PAIR_DENY + 2)
            assert flood.opened > 48
        assert env.alive(), env.log.read_text()[-3000:]
        assert PAM_SUCCESS not in codes  # the right password came after N wrong ones: refused
        assert env.checks(name) == PAIR_DENY  # exactly N passwords were checked
        rec = env.json("list", "--user", name)[0]
        assert (rec["count"], rec["refused"]) == (PAIR_DENY, 3)  # nothing counted was lost
        stats = env.json("stats")
        assert stats["accept_errors"] > 0 and stats["evicted"] > 0  # it did run out, and recovered
    finally:
        env.close()


def test_damaged_store_set_aside_fresh_store_still_guards(user: tuple[str, str]) -> None:
    """guard.db damaged (a disk error, a bad restore): 7 wrong passwords, then the right one is refused.

    (It crash-looped on sqlite3.DatabaseError, and the right password got in.)
    """
    env = GuardEnv({"pair_deny": 5, "ip_deny": 1000, "user_deny": 1000})
    sink = None
    try:
        sink = SyslogSink(env.tmp / "log.sock")
        env.config.write_text(env.config.read_text() + f'syslog_socket = "{sink.path}"\n')
        env.start()
        service = env.pam_service(count_checks=True)
        name, _ = user
        env.stop()
        garbage = b"this is not an SQLite file " * 200
        env.cfg.db_path.write_bytes(garbage)
        # while it is down, the operator's tools answer in one line (no traceback)
        for args, code in ((["status"], 1), (["list"], 1)):
            r = env.slotctl(*args, check=False)
            assert r.returncode == code and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert "guard: down" in env.slotctl("status", check=False).stderr

        env.start()
        assert PAM_SUCCESS not in attack(env, service, user, "198.51.100.62", 7)
        assert env.checks(name) == 5
        # the damaged file is kept, renamed; the operator is told loudly
        kept = [p for p in env.cfg.db_path.parent.iterdir() if p.name.startswith("guard.db.corrupt-")]
        assert [p.read_bytes() for p in kept] == [garbage]
        r = env.slotctl("status")
        assert r.returncode == 0 and r.stdout.splitlines()[0].startswith("guard: degraded")
        assert "set aside as" in r.stdout.splitlines()[1]
        assert env.json("status")["state"] == "degraded"
        assert env.json("stats")["store_recoveries"] == 1
        wait_for(lambda: any(b"GUARD STORE DAMAGED" in ln for ln in sink.lines))
    finally:
        env.close()
        if sink is not None:
            sink.close()


def test_socket_held_across_a_restart_no_unguarded_window(user: tuple[str, str]) -> None:
    """The socket belongs to systemd (here: the test), not the service: a login during a restart waits for it.

    (The service could not take a socket from systemd; a login while it restarted found nothing: fail open.)
    """
    env = GuardEnv({"pair_deny": 2, "ip_deny": 1000, "user_deny": 1000, "timeout_ms": 30000})
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        env.cfg.socket.parent.mkdir(parents=True, exist_ok=True)
        listener.bind(str(env.cfg.socket))
        os.chmod(env.cfg.socket, 0o600)
        listener.listen(128)
        env.start(listen_fd=listener.fileno())
        assert env.json("status")["service"]["socket_activated"] is True
        service = env.pam_service(count_checks=True)
        name, pw = user
        for i in range(2):
            assert login(service, name, f"wrong-{i}", "198.51.100.63") != PAM_SUCCESS
        env.stop()
        assert env.cfg.socket.exists()  # the service leaves systemd's socket alone
        result: list[int] = []
        during = threading.Thread(target=lambda: result.extend(
            concurrent_attempts(service, "198.51.100.63", [(name, pw)], no_delay=True)))
        during.start()  # it connects now and waits in the backlog
        time.sleep(0.5)  # (not an assertion: only makes the "waiting" case the likely one)
        env.start(listen_fd=listener.fileno())
        during.join(60)
        assert result and result[0] != PAM_SUCCESS  # decided by the restarted service: still locked
        assert env.checks(name) == 2
    finally:
        env.close()
        listener.close()


def test_systemd_socket_activate(user: tuple[str, str]) -> None:
    """systemd's own socket activation tool starts the service on the first connection; it decides on fd 3."""
    env = GuardEnv({"pair_deny": 2, "timeout_ms": 20000})
    try:
        env.cfg.socket.parent.mkdir(parents=True, exist_ok=True)
        env.start(activate=["systemd-socket-activate", "-l", str(env.cfg.socket)], wait=False)
        wait_for(env.cfg.socket.exists)
        service = env.pam_service(count_checks=True)
        name, pw = user
        codes = [login(service, name, "wrong", "198.51.100.64") for _ in range(2)] + [
            login(service, name, pw, "198.51.100.64")]
        assert codes[-1] != PAM_SUCCESS and env.checks(name) == 2
        st = env.json("status")
        assert st["service"]["socket_activated"] is True and st["service"]["pid"] == env.proc.pid  # type: ignore[union-attr]
    finally:
        env.close()


def test_systemd_units_verify(tmp_path: Path) -> None:
    """The units `guard supervise` writes under systemd pass systemd-analyze verify."""
    import sys

    from pam_hooks.config import GuardConfig
    from pam_hooks.install import systemd_units

    units = systemd_units(GuardConfig(), sys.executable, str(Path(__file__).resolve().parents[2]),
                          "/etc/slotwarden/slotwarden.toml")
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    sock = units["slotwarden-guard.socket"]
    assert "Before=ssh.service" in sock and "SocketMode=0600" in sock
    assert "Before=ssh.service" in units["slotwarden-guard.service"]
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", *(str(tmp_path / n) for n in units)],
                       capture_output=True, text=True, check=False)
    problems = [ln for ln in (r.stdout + r.stderr).splitlines() if "slotwarden-guard" in ln]
    assert r.returncode == 0 or not problems, r.stdout + r.stderr


def test_keeper_holds_the_socket_while_the_service_crashes(user: tuple[str, str]) -> None:
    """Without systemd (`guard keep`, what supervisord runs): a crash of the service leaves no window.

    (supervisord ran `serve` itself: its socket went with it, and a login until the restart fell to fail_mode.)
    """
    import signal

    env = GuardEnv({"pair_deny": 2, "ip_deny": 1000, "user_deny": 1000, "timeout_ms": 30000})
    try:
        env.start(command="keep")
        service = env.pam_service(count_checks=True)
        name, pw = user
        for i in range(2):
            assert login(service, name, f"wrong-{i}", "198.51.100.65") != PAM_SUCCESS
        served = env.json("status")["service"]["pid"]
        assert served != env.proc.pid  # type: ignore[union-attr]  # the keeper runs serve as its child
        os.kill(served, signal.SIGKILL)  # a crash
        # a login right now: it waits in the kept socket's backlog for the restarted service
        assert concurrent_attempts(service, "198.51.100.65", [(name, pw)], no_delay=True) != [PAM_SUCCESS]
        assert env.checks(name) == 2
        assert env.alive() and env.json("status")["service"]["pid"] not in (served, None)
    finally:
        env.close()
    assert not env.cfg.socket.exists()  # the keeper removed its socket on SIGTERM
