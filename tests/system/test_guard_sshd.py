"""The guard in front of a real sshd on a lab address, attacked from network namespaces (root).

The lab: a switch and hosts made with pyroute2 - the server 198.51.100.1 and
attackers 198.51.100.10.. - Debian's sshd with its own config and its own PAM
service name (a copy of the stock /etc/pam.d/sshd, guarded by
``slotctl guard install``), and the guard service running inside the server's
namespace so its blackhole routes land there.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from pam_hooks.netblock import routes_in
from tests.system.fixtures.guard import GuardEnv
from tests.system.fixtures.netns import LabHost, LabNet
from tests.system.fixtures.processes import wait_for
from tests.system.fixtures.sshd import LabSshd, LabUser, lab_user, ssh_key, ssh_password

pytestmark = [pytest.mark.root, pytest.mark.sshd]

PAIR_DENY = 3
IP_DENY = 6


class Lab:
    """The running lab for this module."""

    def __init__(self, net: LabNet, sshd: LabSshd, guard: GuardEnv) -> None:
        self.net, self.sshd, self.guard = net, sshd, guard
        self._n = 10

    def attacker(self) -> LabHost:
        """A fresh attacker host with its own address."""
        self._n += 1
        return self.net.host(f"a{self._n}", f"198.51.100.{self._n}")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with LabNet("swg-") as net:
        srv = net.host("srv", "198.51.100.1")
        guard = GuardEnv({"pair_deny": PAIR_DENY, "ip_deny": IP_DENY, "user_deny": 1000,
                          "network_block": True}, netns=srv.netns)
        try:
            port = 2200 + secrets.randbelow(100)
            with LabSshd(srv, port, f"slotwarden-test-sshd-{secrets.token_hex(3)}") as sshd:
                guard.install(sshd.pam_service)
                guard.add_counter(sshd.pam_file)
                guard.start()
                yield Lab(net, sshd, guard)
        finally:
            guard.close()


@pytest.fixture
def user() -> Iterator[LabUser]:
    with lab_user(f"tg{secrets.token_hex(3)}", f"Pw-{secrets.token_hex(8)}") as u:
        yield u


def record(lab: Lab, user: str, ip: str) -> dict[str, object]:
    rows = lab.guard.json("list", "--user", user, "--ip", ip)
    assert len(rows) == 1, rows
    return rows[0]


def test_attacker_locked_other_host_and_keys(lab: Lab, user: LabUser) -> None:
    a, b = lab.attacker(), lab.attacker()
    for _ in range(PAIR_DENY):
        assert ssh_password(a, lab.sshd, user.name, "wrong-guess") != 0
    assert lab.guard.checks(user.name) == PAIR_DENY
    # A's correct password is now refused, without being checked.
    assert ssh_password(a, lab.sshd, user.name, user.password) != 0
    assert lab.guard.checks(user.name) == PAIR_DENY
    # B logs in meanwhile, with the password and with the key.
    assert ssh_password(b, lab.sshd, user.name, user.password) == 0
    assert ssh_key(b, lab.sshd, user.name, user.key) == 0
    # A key login for the locked pair is refused in the account phase.
    assert ssh_key(a, lab.sshd, user.name, user.key) != 0

    rec = record(lab, user.name, a.addr)
    assert rec["username"] == user.name and rec["ip"] == a.addr
    assert rec["service"] == lab.sshd.pam_service  # sshd used its own PAM service
    assert rec["count"] == PAIR_DENY and rec["locked_until"] is not None
    last = datetime.fromisoformat(str(rec["last_attempt"]))
    assert abs(datetime.now(UTC) - last) < timedelta(minutes=5)
    ex = lab.guard.json("explain", "--user", user.name, "--ip", a.addr)
    assert (ex["allowed"], ex["rule"]) == (False, "pair")

    lab.guard.json("lift", "--user", user.name, "--ip", a.addr)
    assert ssh_password(a, lab.sshd, user.name, user.password) == 0
    assert ssh_key(a, lab.sshd, user.name, user.key) == 0


def test_unknown_username_behaves_like_known(lab: Lab, user: LabUser) -> None:
    unknown = f"tg{secrets.token_hex(3)}nx"
    seen = {}
    for name in (user.name, unknown):
        host = lab.attacker()
        codes = [ssh_password(host, lab.sshd, name, "wrong-guess") for _ in range(PAIR_DENY + 1)]
        rec = record(lab, name, host.addr)
        seen[name] = (codes, rec["count"], rec["refused"], rec["locked_until"] is not None)
    assert seen[user.name] == seen[unknown]
    assert seen[unknown][1:] == (PAIR_DENY, 1, True)


def test_ip_lock_adds_and_removes_blackhole_route(lab: Lab, user: LabUser) -> None:
    c = lab.attacker()
    for _ in range(IP_DENY):  # spraying: a new username each time
        # The last try sets the lock: its own connection is cut by the new route (then it times out).
        assert ssh_password(c, lab.sshd, f"tg{secrets.token_hex(3)}sp", "123456", timeout=15) != 0
    wait_for(lambda: f"{c.addr}/32" in routes_in(lab.net.hosts["srv"].netns))
    assert ssh_password(c, lab.sshd, user.name, user.password, timeout=30) != 0
    status = lab.guard.json("status")
    assert c.addr in status["blocks"]
    lab.guard.json("lift", "--ip", c.addr)
    wait_for(lambda: f"{c.addr}/32" not in routes_in(lab.net.hosts["srv"].netns))
    assert ssh_password(c, lab.sshd, user.name, user.password) == 0


def test_fifty_concurrent_wrong_passwords(lab: Lab, user: LabUser) -> None:
    e = lab.attacker()
    with ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(lambda _: ssh_password(e, lab.sshd, user.name, "wrong-guess"), range(50)))
    assert all(code != 0 for code in codes)
    checked = lab.guard.checks(user.name)
    assert checked <= PAIR_DENY
    rec = record(lab, user.name, e.addr)
    assert rec["count"] == checked  # every checked password is a recorded failure
    assert rec["count"] + rec["refused"] == 50 - codes.count(-1)
    assert rec["pending"] == 0 or wait_for(lambda: record(lab, user.name, e.addr)["pending"] == 0)


def test_lock_survives_guard_restart(lab: Lab, user: LabUser) -> None:
    f = lab.attacker()
    for _ in range(PAIR_DENY):
        assert ssh_password(f, lab.sshd, user.name, "wrong-guess") != 0
    lab.guard.stop()
    lab.guard.start()
    assert ssh_password(f, lab.sshd, user.name, user.password) != 0
    assert ssh_key(f, lab.sshd, user.name, user.key) != 0
    assert record(lab, user.name, f.addr)["count"] == PAIR_DENY


def test_keyboard_interactive_is_counted_too(lab: Lab, user: LabUser) -> None:
    """With keyboard-interactive, sshd runs PAM in a forked child that never calls pam_end.

    The reservation counts as a failure from the start, so nothing is lost.
    """
    srv = lab.net.hosts["srv"]
    kbd = LabSshd(srv, lab.sshd.port + 1 if lab.sshd.port < 2299 else 2200,
                  f"slotwarden-test-sshd-{secrets.token_hex(3)}",
                  extra_config="KbdInteractiveAuthentication yes\n")
    with kbd:
        lab.guard.install(kbd.pam_service)
        g = lab.attacker()
        opts = ["-o", "PreferredAuthentications=keyboard-interactive"]
        for _ in range(PAIR_DENY):
            assert ssh_password(g, kbd, user.name, "wrong-guess", extra=opts) != 0
        assert ssh_password(g, kbd, user.name, user.password, extra=opts) != 0
        rec = record(lab, user.name, g.addr)
        assert rec["service"] == kbd.pam_service
        assert (rec["count"], rec["refused"]) == (PAIR_DENY, 1)
        lab.guard.json("lift", "--user", user.name, "--ip", g.addr)
        assert ssh_password(g, kbd, user.name, user.password, extra=opts) == 0
