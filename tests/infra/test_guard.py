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
import subprocess
from typing import Any

import pytest

from tests.infra.guardlab import SSH_OPTS, client_address, explain, wrong_passwords
from tests.infra.tenants import Slot

pytestmark = pytest.mark.guard


def test_guard_is_in_the_pam_stack_of_sshd(host: Any) -> None:
    out = host.check_output("cat /etc/pam.d/sshd /etc/pam.d/common-auth /etc/pam.d/common-account")
    phases = {line.split()[0].lstrip("-") for line in out.splitlines()
              if "pam_slotwarden.so" in line and not line.lstrip().startswith("#")}
    assert {"auth", "account"} <= phases


def test_guard_service_runs(host: Any) -> None:
    status = json.loads(host.check_output("slotctl guard status --json"))
    assert status["service"]["running"] is True


@pytest.mark.client
def test_wrong_passwords_from_client_lock_only_its_address(host: Any, client: Any, target: tuple[Slot, str, str],
                                                           request: pytest.FixtureRequest) -> None:
    slot, password, key = target
    server = request.config.getoption("server_address")
    client_ip = client_address(client, server)
    limit = explain(host, slot.name, client_ip)["counts"]["pair"]["limit"]

    def key_login() -> int:
        # ssh's own failure is exit status 255, which testinfra's ssh backend takes for its own
        # transport failing: report the status on stdout instead.
        out = client.check_output(f"ssh {SSH_OPTS} -o PasswordAuthentication=no -i {key} {slot.name}@{server} "
                                  "true; echo $?")
        return int(out.split()[-1])

    assert key_login() == 0, "the client cannot log in before any failure"

    # One password try per connection, wrong each time; one batch of ssh calls on the client.
    client.run(wrong_passwords(slot.name, server, limit + 1))

    explained = explain(host, slot.name, client_ip)
    assert explained["allowed"] is False, explained
    assert key_login() != 0, "a locked-out address still logs in with a key"

    # Another address (this runner) with the right password is let in.
    runner = subprocess.run(
        ["sshpass", "-e", "ssh", *SSH_OPTS.split(), "-o", "PubkeyAuthentication=no",
         "-o", "NumberOfPasswordPrompts=1", f"{slot.name}@{server}", "id -un"],
        env={**os.environ, "SSHPASS": password}, capture_output=True, text=True, timeout=120)
    assert runner.stdout.strip() == slot.name, runner.stderr

    host.check_output(f"slotctl guard lift --user {slot.name} --ip {client_ip}")
    assert explain(host, slot.name, client_ip)["allowed"] is True
    assert key_login() == 0, "lift did not let the client back in"
