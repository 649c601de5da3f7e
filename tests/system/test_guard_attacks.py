"""Lockouts turned on the operator or the victim, tried from the attacker's side (root, real PAM, real sshd).

- A tenant's ``su root`` with wrong passwords: through a PAM service of our own
  test name whose stack is a copy of Debian's ``/etc/pam.d/su``, run the way the
  setuid ``su`` runs (real uid the tenant's, effective uid 0, PAM_RUSER set). It
  must lock only (root, that tenant), never root's console or another tenant.
- A distributed attack on one username from many lab addresses and IPv6 /64s
  (network namespaces, a real sshd): the per-username rule locks the name for
  new addresses, but never at the victim's own address and never for her key.
"""

from __future__ import annotations

import json
import pwd
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pyroute2 import NetNS

from tests.system.fixtures.guard import GuardEnv
from tests.system.fixtures.hosts import REPO
from tests.system.fixtures.netns import LabHost, LabNet
from tests.system.fixtures.sshd import LabSshd, LabUser, lab_user, ssh_key, ssh_password
from tests.system.pamclient import PAM_SUCCESS

pytestmark = [pytest.mark.root]

PAIR_DENY = 3

# One process like a setuid su: real uid = the caller (set by setpriv), effective uid 0.
SU = r"""
import json, os, sys
from tests.system.pamclient import PAM_SUCCESS, PamHandle
service, target = sys.argv[1:3]
ruser = sys.argv[3] or None
tty = sys.argv[4] or None
out = []
for password in json.load(sys.stdin):
    with PamHandle(service, target, None, password, no_delay=True, ruser=ruser, tty=tty) as h:
        rc = h.authenticate()
        if rc == PAM_SUCCESS:
            rc = h.acct_mgmt()
        out.append(rc)
print(json.dumps({"resuid": os.getresuid(), "rcs": out}))
"""


def su(service: str, caller: str | None, target: str, passwords: list[str], tty: str = "pts/7",
       ruser: str | None = None) -> list[int]:
    """``su TARGET`` as CALLER (None: root) on TTY ("" for none) with each password in turn; PAM statuses.

    PAM_RUSER is the caller's name, as su sets it (or ``ruser``).
    """
    argv = [sys.executable, "-c", SU, service, target, ruser if ruser is not None else (caller or ""), tty]
    if caller is not None:
        uid = pwd.getpwnam(caller).pw_uid
        argv = ["setpriv", f"--ruid={uid}", "--euid=0", "--clear-groups", *argv]
    r = subprocess.run(argv, cwd=REPO, input=json.dumps(passwords), capture_output=True, text=True, timeout=120,
                       check=True)
    out = json.loads(r.stdout)
    assert out["resuid"][0] == (pwd.getpwnam(caller).pw_uid if caller else 0)  # the caller is the real uid
    return [int(x) for x in out["rcs"]]


@pytest.fixture(scope="module")
def guard() -> Iterator[GuardEnv]:
    env = GuardEnv({"pair_deny": PAIR_DENY, "ip_deny": 1000, "user_deny": 1000, "window": "15m"})
    try:
        env.start()
        yield env
    finally:
        env.close()


@pytest.fixture(scope="module")
def su_service(guard: GuardEnv) -> str:
    """A copy of Debian's su stack (pam_rootok first, then common-auth/common-account), guarded."""
    return guard.pam_service(Path("/etc/pam.d/su").read_text(), count_checks=True)


@pytest.fixture(scope="module")
def console_service(guard: GuardEnv) -> str:
    """A copy of Debian's login stack: what root's console runs (getty -> login, real uid 0, no rhost)."""
    return guard.pam_service(Path("/etc/pam.d/login").read_text(), count_checks=True)


@pytest.fixture
def tenants() -> Iterator[tuple[LabUser, LabUser, LabUser]]:
    users = [(f"tg{secrets.token_hex(3)}", f"Pw-{secrets.token_hex(8)}") for _ in range(3)]
    with lab_user(*users[0]) as a, lab_user(*users[1]) as b, lab_user(*users[2]) as v:
        yield a, b, v


def test_tenant_su_root_never_locks_root_or_other_tenants(guard: GuardEnv, su_service: str, console_service: str,
                                                           tenants: tuple[LabUser, LabUser, LabUser]) -> None:
    a, b, victim = tenants
    checked = guard.checks("root")
    assert PAM_SUCCESS not in su(su_service, a.name, "root", ["wrong"] * (PAIR_DENY + 3))
    assert guard.checks("root") == checked + PAIR_DENY  # only N of the tenant's guesses were checked
    rows = [r for r in guard.json("list", "--user", "root") if r["ip"] == f"local:{a.name}"]
    assert len(rows) == 1 and rows[0]["locked_until"] is not None and rows[0]["rule"] == "pair"
    assert guard.json("explain", "--user", "root", "--ip", f"local:{a.name}")["rule"] == "pair"

    # root's console (login: real uid 0, no PAM_RUSER): the password still reaches pam_unix
    console = guard.json("explain", "--user", "root", "--ip", "local:root")
    assert console["allowed"] is True and "console" in console["note"]
    before = guard.checks("root")
    su(console_service, None, "root", ["still-wrong"], tty="tty1")
    assert guard.checks("root") == before + 1
    # another tenant's su root is not locked either (its own guesses are checked)
    su(su_service, b.name, "root", ["b-guess"])
    assert guard.checks("root") == before + 2

    # the same for a user with a password we know: A locks only itself out of `su victim`
    assert PAM_SUCCESS not in su(su_service, a.name, victim.name, ["wrong"] * (PAIR_DENY + 1))
    assert su(su_service, a.name, victim.name, [victim.password]) != [PAM_SUCCESS]  # locked: not even checked
    assert su(su_service, b.name, victim.name, [victim.password]) == [PAM_SUCCESS]
    assert su(console_service, None, victim.name, [victim.password], tty="tty1") == [PAM_SUCCESS]  # console login


def test_network_rhost_cannot_pose_as_the_console(guard: GuardEnv, console_service: str) -> None:
    """An rhost spelled "local:root" is recorded with its colon escaped: it is not the console."""
    from tests.system.pamclient import PamHandle

    for _ in range(PAIR_DENY + 1):
        with PamHandle(console_service, "root", "local:root", "wrong", no_delay=True) as h:
            assert h.authenticate() != PAM_SUCCESS
    rows = [r for r in guard.json("list", "--user", "root") if r["ip"] == "local%3Aroot"]
    assert len(rows) == 1 and rows[0]["locked_until"] is not None
    assert guard.json("explain", "--user", "root", "--ip", "local:root")["allowed"] is True


def test_root_service_without_tty_or_with_ruser_root_is_not_the_console(guard: GuardEnv,
                                                                        console_service: str) -> None:
    """A root-run PAM client with neither rhost nor terminal (a web login that forgot PAM_RHOST), or one
    that passes PAM_RUSER=root along, is counted and locked, but it never passes for root's console."""
    for tty, ruser, origin in (("", None, "local:root:notty"), ("tty3", "root", "local:root:ruser")):
        assert PAM_SUCCESS not in su(console_service, None, "root", ["wrong"] * (PAIR_DENY + 1), tty=tty,
                                     ruser=ruser or "")
        rows = [r for r in guard.json("list", "--user", "root") if r["ip"] == origin]
        assert len(rows) == 1 and rows[0]["locked_until"] is not None, guard.json("list", "--user", "root")
    assert guard.json("explain", "--user", "root", "--ip", "local:root")["allowed"] is True


# -- a distributed attack on one name, over sshd -------------------------------------------------

V6_HOME, V6_NEIGHBOUR = "2001:db8:e0::2", "2001:db8:e0::3"  # one /64


def _add_v6(host: LabHost, addr: str) -> None:
    with NetNS(host.netns) as ns:
        idx = ns.link_lookup(ifname="eth0")[0]
        ns.addr("add", index=idx, address=addr, prefixlen=32, flags=0x02)  # one link; IFA_F_NODAD: usable at once


@pytest.fixture(scope="module")
def lab() -> Iterator[SimpleNamespace]:
    with LabNet("swa-") as net:
        srv = net.host("srv", "198.51.100.1")
        _add_v6(srv, "2001:db8::1")
        guard = GuardEnv({"pair_deny": PAIR_DENY, "ip_deny": 1000, "user_deny": 4}, netns=srv.netns)
        try:
            port = 2200 + secrets.randbelow(100)
            with LabSshd(srv, port, f"slotwarden-test-sshd-{secrets.token_hex(3)}",
                         extra_config="ListenAddress [2001:db8::1]\n") as sshd:
                guard.install(sshd.pam_service)
                guard.add_counter(sshd.pam_file)
                guard.start()
                yield SimpleNamespace(net=net, sshd=sshd, guard=guard,
                                      sshd6=SimpleNamespace(port=sshd.port, addr="2001:db8::1"))
        finally:
            guard.close()


def test_distributed_attack_spares_the_victims_address_and_keys(lab: Any) -> None:
    net, sshd, sshd6, guard = lab.net, lab.sshd, lab.sshd6, lab.guard
    with lab_user(f"tg{secrets.token_hex(3)}", f"Pw-{secrets.token_hex(8)}") as v:
        home = net.host("home", "198.51.100.2")
        home6 = net.host("home6", "198.51.100.3")
        _add_v6(home6, V6_HOME)
        neighbour6 = net.host("nb6", "198.51.100.4")
        _add_v6(neighbour6, V6_NEIGHBOUR)
        assert ssh_password(home, sshd, v.name, v.password) == 0  # her usual address
        assert ssh_password(home6, sshd6, v.name, v.password) == 0  # her usual /64
        # The attack: several lab hosts and two other /64s, each below the pair limit.
        attackers = [net.host(f"x{i}", f"198.51.100.{20 + i}") for i in range(3)]
        for i, name in enumerate(("x6a", "x6b")):
            h = net.host(name, f"198.51.100.{30 + i}")
            _add_v6(h, f"2001:db8:a{i}::2")
            attackers.append(h)
        for i, h in enumerate(attackers):
            target = sshd6 if i >= 3 else sshd
            assert ssh_password(h, target, v.name, "guess-1") != 0
            assert ssh_password(h, target, v.name, "guess-2") != 0
        stranger = net.host("new", "198.51.100.40")
        # The name is locked for new addresses: the right password is refused there, unchecked ...
        checked = guard.checks(v.name)
        assert ssh_password(stranger, sshd, v.name, v.password) != 0
        assert guard.checks(v.name) == checked
        ex = guard.json("explain", "--user", v.name, "--ip", stranger.addr)
        assert (ex["allowed"], ex["rule"]) == (False, "user")
        # ... but she still gets in where she logged in before, with her password and her key,
        assert ssh_password(home, sshd, v.name, v.password) == 0
        assert ssh_key(home, sshd, v.name, v.key) == 0
        assert ssh_password(neighbour6, sshd6, v.name, v.password) == 0  # same /64 as her usual address
        # and her key works from anywhere (the account phase leaves the per-username rule out).
        assert ssh_key(stranger, sshd, v.name, v.key) == 0
        assert guard.json("explain", "--user", v.name, "--ip", home.addr)["allowed"] is True
