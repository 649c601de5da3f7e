"""Three lab hosts, each with its own sshd, PAM service and guard, sharing one PostgreSQL (root).

Real SSH password attempts from attacker namespaces; every password check that reaches the PAM
stack is counted (pam_exec after the guard's preauth), on each host.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.system.fixtures.guard_fleet import GuardFleet, guard_fleet
from tests.system.fixtures.sshd import LabUser, lab_user, ssh_key, ssh_password

pytestmark = [pytest.mark.root, pytest.mark.sshd]

PAIR_DENY = 3


# With the shared store a decision includes a round trip to PostgreSQL, and a flood queues in each
# guard: 45 handshakes at once on this machine's 2 shared cores make single decisions take up to a
# few hundred ms (``guard stats`` counts them as ``slow``), so the queue's last request can outwait
# the module's default 500 ms and be decided by fail_mode instead. A fleet raises timeout_ms (README).
TIMEOUT_MS = 3000


@pytest.fixture(scope="module")
def fleet() -> Iterator[GuardFleet]:
    with guard_fleet(3, {"pair_deny": PAIR_DENY, "ip_deny": 1000, "user_deny": 1000, "timeout_ms": TIMEOUT_MS},
                     with_sshd=True) as f:
        yield f


@pytest.fixture
def user() -> Iterator[LabUser]:
    with lab_user(f"tf{secrets.token_hex(3)}", f"Pw-{secrets.token_hex(8)}") as u:
        yield u


def checks(fleet: GuardFleet, user: str) -> int:
    return sum(g.checks(user) for g in fleet.guards)


def test_locked_on_host_1_refused_on_hosts_2_and_3(fleet: GuardFleet, user: LabUser) -> None:
    a, b = fleet.attacker(), fleet.attacker()
    for _ in range(PAIR_DENY):
        assert ssh_password(a, fleet.sshds[0], user.name, "wrong-guess") != 0
    assert fleet.guards[0].checks(user.name) == PAIR_DENY
    # The right password from A, on the two hosts that never saw A: refused without a check.
    for sshd in fleet.sshds[1:]:
        assert ssh_password(a, sshd, user.name, user.password) != 0
        assert ssh_key(a, sshd, user.name, user.key) != 0
    assert checks(fleet, user.name) == PAIR_DENY
    # B is not A: it logs in on every host, by password and by key.
    for sshd in fleet.sshds:
        assert ssh_password(b, sshd, user.name, user.password) == 0
    assert ssh_key(b, fleet.sshds[2], user.name, user.key) == 0
    recs = fleet.guards[2].json("list", "--user", user.name, "--ip", a.addr)
    assert sum(r["count"] for r in recs) == PAIR_DENY and all(r["locked_until"] for r in recs)


def test_concurrent_wrong_passwords_over_three_hosts(fleet: GuardFleet, user: LabUser) -> None:
    e = fleet.attacker()
    n = 45
    with ThreadPoolExecutor(n) as pool:
        codes = list(pool.map(lambda i: ssh_password(e, fleet.sshds[i % 3], user.name, "wrong-guess"), range(n)))
    assert all(code != 0 for code in codes)
    checked = checks(fleet, user.name)
    assert checked <= PAIR_DENY, [g.checks(user.name) for g in fleet.guards]
    recs = fleet.guards[0].json("list", "--user", user.name, "--ip", e.addr)
    assert sum(r["count"] for r in recs) == checked  # every checked password is a recorded failure
