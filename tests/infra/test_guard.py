"""The login guard: in the PAM stack, its service running, and a lockout that holds.

Selected only where the guard is installed (marker ``guard``); the lockout needs a second
machine (marker ``client``). The run lists what it left out and why.

The lockout check, end to end over the network: wrong passwords from ``client`` lock the
client's address out for that slot (a key login from there is refused too, since the guard
also sits in the account phase), a password login from another address (this runner) still
works, and ``slotctl guard lift`` lets the client in again.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import testinfra

from tests.infra.tenants import Slot

pytestmark = pytest.mark.guard

SSH_OPTS = ("-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "
            "-o ConnectTimeout=10 -o BatchMode=no")


def test_guard_is_in_the_pam_stack_of_sshd(host: Any) -> None:
    out = host.check_output("cat /etc/pam.d/sshd /etc/pam.d/common-auth /etc/pam.d/common-account")
    phases = {line.split()[0].lstrip("-") for line in out.splitlines()
              if "pam_slotwarden.so" in line and not line.lstrip().startswith("#")}
    assert {"auth", "account"} <= phases


def test_guard_service_runs(host: Any) -> None:
    status = json.loads(host.check_output("slotctl guard status --json"))
    assert status["service"]["running"] is True


def _explain(host: Any, user: str, ip: str) -> dict[str, Any]:
    return json.loads(host.check_output(f"slotctl guard explain --user {user} --ip {ip} --json"))


def _hash(password: str) -> str:
    """A SHA-512 crypt hash made here, so the password itself never reaches a command line."""
    return subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password, text=True,
                          capture_output=True, check=True).stdout.strip()


@pytest.fixture
def client(request: pytest.FixtureRequest) -> Any:
    cfg = request.config
    return testinfra.get_host(cfg.getoption("client_host"), ssh_config=cfg.getoption("ssh_config"),
                              sudo=cfg.getoption("sudo"))


@pytest.fixture
def target(host: Any, client: Any, slots: list[Slot]) -> Iterator[tuple[Slot, str, str]]:
    """The last slot with a fresh password, and a key the client holds; all undone after."""
    slot = slots[-1]
    password = secrets.token_urlsafe(18)
    old_hash = host.check_output(f"getent shadow {slot.name} | cut -d: -f2")
    key = f"/tmp/swv-lockout-{secrets.token_hex(4)}"
    client.check_output(f"ssh-keygen -q -t ed25519 -N '' -C swv-lockout -f {key}")
    pub = client.check_output(f"cat {key}.pub")
    ak = shlex.quote(f"{slot.home}/.ssh/authorized_keys")
    host.check_output(f"usermod -p {shlex.quote(_hash(password))} {slot.name} && "
                      f"install -d -o {slot.name} -g {slot.name} -m 0700 {shlex.quote(slot.home + '/.ssh')} && "
                      f"echo {shlex.quote(pub)} >> {ak} && chown {slot.name}: {ak} && chmod 0600 {ak}")
    try:
        yield slot, password, key
    finally:
        client.run(f"rm -f {key} {key}.pub")
        host.run(f"usermod -p {shlex.quote(old_hash)} {slot.name}; sed -i '/ swv-lockout$/d' {ak}; "
                 f"slotctl guard lift --user {slot.name}; slotctl guard forget --user {slot.name}")


@pytest.mark.client
def test_wrong_passwords_from_client_lock_only_its_address(host: Any, client: Any, target: tuple[Slot, str, str],
                                                           request: pytest.FixtureRequest) -> None:
    slot, password, key = target
    server = request.config.getoption("server_address")
    client_ip = client.check_output(f"ip -4 route get {server}").split(" src ")[1].split()[0]
    limit = _explain(host, slot.name, client_ip)["counts"]["pair"]["limit"]

    def key_login() -> int:
        # ssh's own failure is exit status 255, which testinfra's ssh backend takes for its own
        # transport failing: report the status on stdout instead.
        out = client.check_output(f"ssh {SSH_OPTS} -o PasswordAuthentication=no -i {key} {slot.name}@{server} "
                                  "true; echo $?")
        return int(out.split()[-1])

    assert key_login() == 0, "the client cannot log in before any failure"

    # One password try per connection, wrong each time; one batch of ssh calls on the client.
    wrong = (f"SSHPASS=not-the-password sshpass -e ssh {SSH_OPTS} -o PubkeyAuthentication=no "
             f"-o PreferredAuthentications=password,keyboard-interactive -o NumberOfPasswordPrompts=1 "
             f"{slot.name}@{server} true")
    client.run(f"for i in $(seq {limit + 1}); do {wrong}; done; true")

    explained = _explain(host, slot.name, client_ip)
    assert explained["allowed"] is False, explained
    assert key_login() != 0, "a locked-out address still logs in with a key"

    # Another address (this runner) with the right password is let in.
    runner = subprocess.run(
        ["sshpass", "-e", "ssh", *SSH_OPTS.split(), "-o", "PubkeyAuthentication=no",
         "-o", "NumberOfPasswordPrompts=1", f"{slot.name}@{server}", "id -un"],
        env={**os.environ, "SSHPASS": password}, capture_output=True, text=True, timeout=120)
    assert runner.stdout.strip() == slot.name, runner.stderr

    host.check_output(f"slotctl guard lift --user {slot.name} --ip {client_ip}")
    assert _explain(host, slot.name, client_ip)["allowed"] is True
    assert key_login() == 0, "lift did not let the client back in"
