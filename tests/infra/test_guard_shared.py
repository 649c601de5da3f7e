"""The guard on the fleet's shared store, from the attacker's side: the lock is the fleet's.

The host's guard has ``[guard] store = "postgresql://…"`` (the VM lab: PostgreSQL 15 on
``client``, which is also the attacker). Wrong passwords over SSH from the client lock its
address, and the lock is a row in the shared PostgreSQL (read there with psql). With
PostgreSQL stopped the guard goes on deciding alone (wrong passwords still lock, the right
password still works while not locked); started again, what it decided meanwhile is in
PostgreSQL (the attempts, the lock), nothing lost.

Selected with ``--shared-store=SPEC`` (marker ``shared_store``), the testinfra spec of the
machine PostgreSQL runs on; also needs ``--client-host`` (marker ``client``).
"""

from __future__ import annotations

import json
import secrets
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import testinfra

from tests.infra.guardlab import SSH_OPTS, client_address, explain, wrong_passwords
from tests.infra.tenants import Slot

pytestmark = [pytest.mark.guard, pytest.mark.client, pytest.mark.shared_store]


@pytest.fixture
def pg(request: pytest.FixtureRequest) -> Any:
    """The machine running the fleet's PostgreSQL."""
    cfg = request.config
    return testinfra.get_host(cfg.getoption("shared_store"), ssh_config=cfg.getoption("ssh_config"),
                              sudo=cfg.getoption("sudo"))


def psql(pg: Any, request: pytest.FixtureRequest, sql: str) -> list[list[str]]:
    """Rows of one query in the shared store's database, as postgres on its machine."""
    db = shlex.quote(request.config.getoption("store_db"))
    out = pg.check_output(f"runuser -u postgres -- psql -X -q -At -F '|' -d {db} -c {shlex.quote(sql)}")
    return [line.split("|") for line in str(out).splitlines() if line]


def pair_sql(user: str, ip: str) -> str:
    """The shared store's key of a (user, address) pair (pam_hooks.policy.pair_key), as SQL."""
    return f"'{user}' || chr(9) || '{ip}'"


def active_pair_locks(pg: Any, request: pytest.FixtureRequest, user: str, ip: str) -> int:
    rows = psql(pg, request, "SELECT count(*) FROM guard.locks WHERE kind = 'pair' AND key = "
                             f"{pair_sql(user, ip)} AND locked_until > extract(epoch FROM clock_timestamp())")
    return int(rows[0][0])


def attempts_by_state(pg: Any, request: pytest.FixtureRequest, user: str, ip: str) -> dict[str, int]:
    rows = psql(pg, request, f"SELECT state, count(*) FROM guard.attempts WHERE username = '{user}' "
                             f"AND ip = '{ip}' GROUP BY state")
    return {state: int(n) for state, n in rows}


def reserved(states: dict[str, int]) -> int:
    """Password checks the shared store granted: failed, or pending — a reservation whose answer was
    lost when a decision outran the guard's statement timeout (the guard then decides that one
    locally; the reservation counts as a failure: never more checks than pair_deny)."""
    return states.get("failed", 0) + states.get("pending", 0)


def store_state(host: Any) -> dict[str, Any]:
    """The guard's view of the shared store (``slotctl guard status``): reachable, unsynced, error."""
    state: dict[str, Any] = json.loads(host.check_output("slotctl guard status --json"))["store"]
    return state


def wait_for(what: Callable[[], bool], timeout: float, why: str) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, why
        time.sleep(1)


@pytest.fixture
def store_up(host: Any, pg: Any) -> Iterator[None]:
    """The shared store answers the host's guard before the test, and again after it (started if stopped)."""
    wait_for(lambda: store_state(host)["reachable"], 60, "the guard is not connected to the shared store")
    yield
    pg.run("systemctl start postgresql.service")
    wait_for(lambda: store_state(host)["reachable"], 60, "the guard did not reconnect to the shared store")


@dataclass(frozen=True)
class Attack:
    """The slot under attack from the client: its password, the server's and the client's address."""

    slot: Slot
    password: str
    server: str
    ip: str
    limit: int  # pair_deny: wrong passwords before the pair locks


@pytest.fixture
def attack(host: Any, client: Any, target: tuple[Slot, str, str], store_up: None,
           request: pytest.FixtureRequest) -> Attack:
    slot, password, _key = target
    server = request.config.getoption("server_address")
    ip = client_address(client, server)
    return Attack(slot, password, server, ip, explain(host, slot.name, ip)["counts"]["pair"]["limit"])


def test_wrong_passwords_from_the_client_lock_it_in_the_shared_store(
        host: Any, client: Any, pg: Any, attack: Attack, request: pytest.FixtureRequest) -> None:
    slot, server, ip, limit = attack.slot, attack.server, attack.ip, attack.limit
    assert active_pair_locks(pg, request, slot.name, ip) == 0

    client.run(wrong_passwords(slot.name, server, limit + 1))

    assert explain(host, slot.name, ip)["allowed"] is False
    # The fleet's record, not only the host's: the lock and every checked password are rows in
    # PostgreSQL, written by this host.
    assert active_pair_locks(pg, request, slot.name, ip) == 1
    states = attempts_by_state(pg, request, slot.name, ip)
    assert reserved(states) == limit, states
    hostname = str(host.check_output("hostname")).strip()
    hosts = psql(pg, request, f"SELECT DISTINCT host FROM guard.attempts WHERE username = '{slot.name}'")
    assert hosts == [[hostname]], hosts
    # Lifting on the host lifts the fleet's lock.
    host.check_output(f"slotctl guard lift --user {slot.name} --ip {ip}")
    assert active_pair_locks(pg, request, slot.name, ip) == 0


def _put_secret(request: pytest.FixtureRequest, spec: str, path: str, secret: str) -> None:
    """Write a root-only file on the machine ``spec`` names, the secret on ssh's stdin (never argv)."""
    alias = spec.split("://", 1)[1]
    cmd = ["ssh", "-F", request.config.getoption("ssh_config"), alias,
           f"sudo sh -c 'umask 077; cat > {shlex.quote(path)}'"]
    subprocess.run(cmd, input=secret + "\n", text=True, check=True, capture_output=True, timeout=120)


def test_with_the_store_down_the_guard_decides_alone_and_reconciles(
        host: Any, client: Any, pg: Any, attack: Attack, request: pytest.FixtureRequest) -> None:
    slot, password, server, ip, limit = attack.slot, attack.password, attack.server, attack.ip, attack.limit
    pwfile = f"/root/swv-pw-{secrets.token_hex(4)}"
    _put_secret(request, request.config.getoption("client_host"), pwfile, password)
    right = (f"sshpass -f {pwfile} ssh {SSH_OPTS} -o PubkeyAuthentication=no -o NumberOfPasswordPrompts=1 "
             f"{slot.name}@{server} id -un || true")  # ssh's 255 is testinfra's own failure
    try:
        pg.check_output("systemctl stop postgresql.service")
        wait_for(lambda: not store_state(host)["reachable"], 60, "the guard did not notice the store is down")

        # Alone, the guard still decides: the right password works while the pair is not locked ...
        assert client.run(right).stdout.strip() == slot.name
        # ... wrong ones still lock, and then the right one is refused too.
        client.run(wrong_passwords(slot.name, server, limit + 1))
        assert explain(host, slot.name, ip)["allowed"] is False
        assert client.run(right).stdout.strip() != slot.name
        assert store_state(host)["unsynced"] > 0, "the outage's records were not kept for the replay"

        pg.check_output("systemctl start postgresql.service")
        wait_for(lambda: (s := store_state(host))["reachable"] and s["unsynced"] == 0, 90,
                 "the guard did not replay the outage into the shared store")
    finally:
        client.run(f"rm -f {pwfile}")
    # Nothing lost: the success, every checked wrong password and the lock are the fleet's now.
    states = attempts_by_state(pg, request, slot.name, ip)
    assert states.get("succeeded") == 1 and reserved(states) == limit, states
    assert active_pair_locks(pg, request, slot.name, ip) == 1
    assert explain(host, slot.name, ip)["allowed"] is False
