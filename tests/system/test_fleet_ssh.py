"""The fleet path over real SSH: ansible-runner here, sshd in a lab network namespace.

Two namespaces joined by a veth pair: ``swf-c-*`` (the controller's side: every ssh that
Ansible starts runs there, through a tiny ``ansible_ssh_executable`` wrapper) and ``swf-s-*``
(an sshd with its own config, host key and port, root by key only, for this test only), with
198.51.100.0/24 addresses on the veth ends. The "remote" is this same machine, so site.yml
installs the wheel built from this checkout into a venv on it, and the module runs that code.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.executors.ansible import AnsibleExecutor
from tests.system.fixtures.fleet import LabHost, check_slot_lifecycle, make_lab_host, teardown_lab_host

pytestmark = [pytest.mark.root, pytest.mark.sshd]
HOST = "sshlab"
IP = shutil.which("ip") or "/usr/sbin/ip"


def sh(*argv: str) -> str:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True).stdout


def ns_pids(ns: str) -> list[int]:
    out = subprocess.run([IP, "netns", "pids", ns], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.fixture(scope="module")
def ssh_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabHost, Path, Path, str]]:
    if os.geteuid() != 0:
        pytest.fail("the fleet SSH test needs root")
    tag = secrets.token_hex(3)
    cns, sns = f"swf-c-{tag}", f"swf-s-{tag}"
    octet = random.randrange(2, 250, 2)
    caddr, saddr = f"198.51.100.{octet}", f"198.51.100.{octet + 1}"
    port = random.randrange(2300, 2390)
    d = tmp_path_factory.mktemp("sshlab")
    lab = make_lab_host("ssh", tmp_path_factory.mktemp("wheelhouse"))
    sshd: subprocess.Popen[bytes] | None = None
    made_ns: list[str] = []
    try:
        for ns in (cns, sns):
            sh(IP, "netns", "add", ns)
            made_ns.append(ns)
            sh(IP, "-n", ns, "link", "set", "lo", "up")
        sh(IP, "-n", cns, "link", "add", "swf-vc", "type", "veth", "peer", "name", "swf-vs", "netns", sns)
        sh(IP, "-n", cns, "addr", "add", f"{caddr}/24", "dev", "swf-vc")
        sh(IP, "-n", sns, "addr", "add", f"{saddr}/24", "dev", "swf-vs")
        sh(IP, "-n", cns, "link", "set", "swf-vc", "up")
        sh(IP, "-n", sns, "link", "set", "swf-vs", "up")

        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key"))
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client_key"))
        (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
        (d / "sshd_config").write_text(
            f"Port {port}\nListenAddress {saddr}\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n"
            f"AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "AllowUsers root\nSubsystem sftp internal-sftp\n")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        # nsenter --net, not `ip netns exec`: the latter also unshares the mount namespace, and the
        # slots filesystem site.yml mounts over SSH must be the one this test (and the host) sees.
        sshd = subprocess.Popen(["nsenter", f"--net=/run/netns/{sns}", "/usr/sbin/sshd", "-D", "-e",
                                 "-f", str(d / "sshd_config")],
                                stderr=(d / "sshd.log").open("wb"), start_new_session=True)
        wrapper = d / "ssh-in-netns"
        wrapper.write_text(f'#!/bin/sh\nexec nsenter --net=/run/netns/{cns} /usr/bin/ssh "$@"\n')
        wrapper.chmod(0o700)
        ssh_opts = f"-o UserKnownHostsFile={d}/known_hosts -o StrictHostKeyChecking=accept-new -o ConnectTimeout=10"
        for _ in range(100):  # until sshd answers from the controller's namespace
            probe = subprocess.run([str(wrapper), *ssh_opts.split(), "-i", str(d / "client_key"), "-p", str(port),
                                    "-o", "BatchMode=yes", f"root@{saddr}", "true"], capture_output=True)
            if probe.returncode == 0:
                break
            assert sshd.poll() is None, (d / "sshd.log").read_text()
            time.sleep(0.2)
        else:
            pytest.fail(f"sshd in {sns} never answered: {(d / 'sshd.log').read_text()}")

        inv = lab.write_inventory(
            f"{HOST} ansible_host={saddr} ansible_port={port} ansible_user=root ansible_connection=ssh",
            {"ansible_ssh_private_key_file": str(d / "client_key"),
             "ansible_ssh_executable": str(wrapper),
             "ansible_ssh_common_args": f"'{ssh_opts}'",
             "ansible_control_path_dir": str(d / "cp"),
             # no scp/sftp binaries in the path: files go through the same ssh, piped
             "ansible_ssh_transfer_method": "piped",
             "ansible_pipelining": "true"})
        first = AnsibleExecutor(inv, [HOST]).prepare()
        assert first.status == "successful", {h: (r.status, r.message) for h, r in first.hosts.items()}
        yield lab, inv, d, caddr
    finally:
        teardown_lab_host(lab)
        if sshd is not None:
            os.killpg(sshd.pid, signal.SIGTERM)
            sshd.wait(timeout=10)
        for ns in made_ns:
            for pid in ns_pids(ns):  # ssh control masters this test started
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            subprocess.run([IP, "netns", "del", ns], capture_output=True)


def test_site_and_slot_lifecycle_over_ssh(ssh_lab: tuple[LabHost, Path, Path, str], tmp_path: Path) -> None:
    lab, inv, d, caddr = ssh_lab
    runner = tmp_path / "runner"
    log = tmp_path / "ansible.log"
    ex = AnsibleExecutor(inv, [HOST], private_data_dir=runner, envvars={"ANSIBLE_LOG_PATH": str(log)})
    again = ex.prepare()
    assert again.status == "successful" and again.hosts[HOST].stats.get("changed", 0) == 0, again.hosts
    # it really went over SSH to the lab address, from the controller's namespace
    assert f"Accepted publickey for root from {caddr}" in (d / "sshd.log").read_text()
    check_slot_lifecycle(ex, lab, HOST, [runner, log])
