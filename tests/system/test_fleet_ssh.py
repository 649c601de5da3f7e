"""The fleet path over real SSH: ansible-runner here, sshd in a lab network namespace.

Two hosts of a lab network (``swf-*``): ``c`` (the controller's side: every ssh that Ansible
starts runs there, through a tiny ``ansible_ssh_executable`` wrapper) and ``s`` (the lab sshd with
its own config, host key and port, root by key only, for this test only). The "remote" is this same machine, so site.yml
installs the wheel built from this checkout into a venv on it, and the module runs that code.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.executors.ansible import AnsibleExecutor
from tests.system.fixtures.fleet import LabHost, check_slot_lifecycle, make_lab_host, teardown_lab_host
from tests.system.fixtures.netns import LabNet, NetOnlyHost
from tests.system.fixtures.sshd import LabSshd

pytestmark = [pytest.mark.root, pytest.mark.sshd]
HOST = "sshlab"
IP = shutil.which("ip") or "/usr/sbin/ip"


def sh(*argv: str) -> str:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True).stdout


def ns_pids(ns: str) -> list[int]:
    out = subprocess.run([IP, "netns", "pids", ns], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.fixture(scope="module")
def ssh_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabHost, Path, LabSshd, str]]:
    d = tmp_path_factory.mktemp("sshlab")
    lab = make_lab_host("ssh", tmp_path_factory.mktemp("wheelhouse"))
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client_key")], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    # root by key only, from a key of this test only; no PAM.
    config = (f"AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n"
              "PasswordAuthentication no\nUsePAM no\nStrictModes no\nAllowUsers root\n"
              "Subsystem sftp internal-sftp\n")
    try:
        with LabNet("swf-") as net:
            client = net.host("c", "198.51.100.2")
            plain = net.host("s", "198.51.100.3")
            # nsenter --net, not `ip netns exec`: the latter also unshares the mount namespace, and the
            # slots filesystem site.yml mounts over SSH must be the one this test (and the host) sees.
            server = NetOnlyHost(plain.netns, plain.addr)
            try:
                with LabSshd(server, port=random.randrange(2300, 2390),
                             pam_service=f"slotwarden-test-swf-{secrets.token_hex(3)}", extra_config=config) as sshd:
                    wrapper = d / "ssh-in-netns"
                    wrapper.write_text(f'#!/bin/sh\nexec nsenter --net=/run/netns/{client.netns} /usr/bin/ssh "$@"\n')
                    wrapper.chmod(0o700)
                    ssh_opts = (f"-o UserKnownHostsFile={d}/known_hosts -o StrictHostKeyChecking=accept-new "
                                "-o ConnectTimeout=10")
                    inv = lab.write_inventory(
                        f"{HOST} ansible_host={sshd.addr} ansible_port={sshd.port} ansible_user=root "
                        "ansible_connection=ssh",
                        {"ansible_ssh_private_key_file": str(d / "client_key"),
                         "ansible_ssh_executable": str(wrapper),
                         "ansible_ssh_common_args": f"'{ssh_opts}'",
                         "ansible_control_path_dir": str(d / "cp"),
                         # no scp/sftp binaries in the path: files go through the same ssh, piped
                         "ansible_ssh_transfer_method": "piped",
                         "ansible_pipelining": "true"})
                    first = AnsibleExecutor(inv, [HOST]).prepare()
                    assert first.status == "successful", {h: (r.status, r.message) for h, r in first.hosts.items()}
                    yield lab, inv, sshd, client.addr
            finally:
                for ns in (client.netns, server.netns):
                    for pid in ns_pids(ns):  # ssh control masters, their sessions on the sshd
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGTERM)
    finally:
        teardown_lab_host(lab)


def test_site_and_slot_lifecycle_over_ssh(ssh_lab: tuple[LabHost, Path, LabSshd, str], tmp_path: Path) -> None:
    lab, inv, sshd, caddr = ssh_lab
    runner = tmp_path / "runner"
    log = tmp_path / "ansible.log"
    ex = AnsibleExecutor(inv, [HOST], private_data_dir=runner, envvars={"ANSIBLE_LOG_PATH": str(log)})
    again = ex.prepare()
    assert again.status == "successful" and again.hosts[HOST].stats.get("changed", 0) == 0, again.hosts
    # it really went over SSH to the lab address, from the controller's namespace
    assert f"Accepted publickey for root from {caddr}" in sshd.log_text()
    check_slot_lifecycle(ex, lab, HOST, [runner, log])
