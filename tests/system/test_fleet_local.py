"""The fleet path against this machine (``ansible_connection=local``) through ansible-runner.

site.yml prepares a lab host (every path in a temp dir), then slot.yml creates, re-applies,
check-modes and removes slots for real; ``slotctl --inventory`` prints per-host results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner import accounts
from provisioner.executors.ansible import AnsibleExecutor
from tests.system.fixtures.fleet import (
    LabHost,
    check_slot_lifecycle,
    files_containing,
    make_lab_host,
    password_matches,
    random_name,
    teardown_lab_host,
)

pytestmark = [pytest.mark.root]
HOST = "labhost"
SLOTCTL = str(Path(sys.executable).parent / "slotctl")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabHost, Path]]:
    if os.geteuid() != 0:
        pytest.fail("the fleet system tests need root")
    wheelhouse = tmp_path_factory.mktemp("wheelhouse")
    lab = make_lab_host("local", wheelhouse)
    try:
        # A second host that refuses connections: its failure must not hide labhost's results.
        inv = lab.write_inventory(f"{HOST} ansible_connection=local")
        with inv.open("a") as f:
            f.write("\n[slotwarden]\ndeadhost ansible_host=127.0.0.1 ansible_port=2399 "
                    "ansible_connection=ssh ansible_ssh_common_args='-o ConnectTimeout=5'\n")
        ex = AnsibleExecutor(inv, [HOST])
        first = ex.prepare()
        assert first.status == "successful", {h: (r.status, r.message) for h, r in first.hosts.items()}
        assert first.changed > 0
        yield lab, inv
    finally:
        teardown_lab_host(lab)


def test_site_yml_second_run_changes_nothing(lab: tuple[LabHost, Path], tmp_path: Path) -> None:
    lab_host, inv = lab
    ex = AnsibleExecutor(inv, [HOST], private_data_dir=tmp_path / "runner")
    again = ex.prepare()
    assert again.status == "successful"
    assert again.hosts[HOST].stats.get("changed", 0) == 0, again.hosts[HOST].stats
    check = ex.prepare(check=True)
    assert check.status == "successful" and check.changed == 0
    # what site.yml set up: the venv from this checkout's wheel, the btrfs slots root, the drop-in
    venv_py = lab_host.root / "opt" / "venv" / "bin" / "python"
    out = subprocess.run([str(venv_py), "-c", "import provisioner.executors.local, sys; print(sys.prefix)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(lab_host.root / "opt" / "venv")
    assert os.path.ismount(lab_host.slots_root)
    assert lab_host.context().settings.quota_backend == "btrfs"
    assert "UsePAM yes" in (lab_host.root / "sshd_config.d" / "50-slotwarden.conf").read_text()
    profiles = sorted((lab_host.root / "pam-configs").iterdir())
    assert profiles and all("pam_slotwarden.so" in p.read_text() for p in profiles), profiles


def test_slot_lifecycle_through_ansible_runner(lab: tuple[LabHost, Path], tmp_path: Path) -> None:
    lab_host, inv = lab
    runner = tmp_path / "runner"
    log = tmp_path / "ansible.log"
    ex = AnsibleExecutor(inv, [HOST], private_data_dir=runner, envvars={"ANSIBLE_LOG_PATH": str(log)})
    check_slot_lifecycle(ex, lab_host, HOST, [runner, log])
    assert (runner / "artifacts").is_dir() and log.exists()
    # the slots (customers' emails) went in a 0600 vars file, not on ansible-playbook's command line
    for command in (runner / "artifacts").glob("*/command"):
        assert "example.com" not in command.read_text()
    # suppress_env_files: the runner wrote nothing of the call (extravars, envvars) to env/
    env_dir = runner / "env"
    assert not env_dir.exists() or not any(env_dir.iterdir()), sorted(env_dir.iterdir())


def test_cli_fleet_create_many_and_remove_per_host(lab: tuple[LabHost, Path], tmp_path: Path) -> None:
    lab_host, inv = lab
    names = [random_name(), random_name()]
    lab_host.made.extend(names)
    csv = tmp_path / "slots.csv"
    csv.write_text("username,email,country,quota\n" + "".join(f"{n},{n}@example.com,FR,32M\n" for n in names)
                   + "root,r@example.com,FR,\n")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.run([SLOTCTL, "--inventory", str(inv), "--json", "slot", "create-many", str(csv),
                           "--host", HOST, "--host", "deadhost", "--host", "ghosthost"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    assert data["ok"] is False
    by = {(r["host"], r["username"]): r for r in data["results"]}
    for n in names:
        r = by[(HOST, n)]
        assert (r["ok"], r["action"], r["resumed"], r["quota_bytes"]) == (True, "created", False, 32 << 20)
        assert password_matches(n, r["password"])
        assert by[("deadhost", n)]["ok"] is False and "unreachable" in by[("deadhost", n)]["error"]
        assert by[("ghosthost", n)]["ok"] is False and "not in the inventory" in by[("ghosthost", n)]["error"]
    assert by[(HOST, "root")]["ok"] is False and "reserved" in by[(HOST, "root")]["error"]
    # the passwords went to stdout once, and to no file the run left behind
    for n in names:
        pw = by[(HOST, n)]["password"]
        assert proc.stdout.count(pw) == 1 and pw not in proc.stderr
        assert not files_containing(pw, tmp_path, lab_host.root)

    # Text output, one host: remove the first slot; the second is removed with --dry-run first.
    proc = subprocess.run([SLOTCTL, "--inventory", str(inv), "slot", "remove", names[0], "--host", HOST],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert f"{HOST}: slot {names[0]} removed" in proc.stdout
    assert f"fleet: {HOST}:" in proc.stderr  # progress from the runner's events
    assert accounts.lookup_user(names[0]) is None
    proc = subprocess.run([SLOTCTL, "--json", "slot", "remove", names[1], "--dry-run", "--inventory", str(inv),
                           "--host", HOST], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    [r] = json.loads(proc.stdout)["results"]
    assert (r["action"], r["changed"]) == ("removed", True) and r["steps"]
    assert accounts.lookup_user(names[1]) is not None
    proc = subprocess.run([SLOTCTL, "--inventory", str(inv), "--json", "slot", "remove", names[1], "--host", HOST],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0 and json.loads(proc.stdout)["ok"] is True
    # the imperative command keeps its meaning through the fleet: removing a missing slot fails
    proc = subprocess.run([SLOTCTL, "--inventory", str(inv), "slot", "remove", names[1], "--host", HOST],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 1 and f"no slot named '{names[1]}'" in proc.stdout
    assert accounts.lookup_user(names[1]) is None


def test_update_quota_in_place(lab: tuple[LabHost, Path], tmp_path: Path) -> None:
    from provisioner.executors import SlotChange

    lab_host, inv = lab
    name = random_name()
    lab_host.made.append(name)
    ex = AnsibleExecutor(inv, [HOST])
    base = {"username": name, "email": f"{name}@example.com", "country": "NL", "quota": "40M"}
    [o] = ex.apply([SlotChange.parse(base)])
    assert o.action == "created"
    [o] = ex.apply([SlotChange.parse({**base, "quota": "80M"})], check=True)
    assert (o.action, o.changed) == ("updated", True)
    assert lab_host.context().store.get_slot(name).quota_bytes == 40 << 20  # type: ignore[union-attr]
    # --diff (with --check): the play output shows the record before and after
    runner = tmp_path / "runner"
    run = AnsibleExecutor(inv, [HOST], private_data_dir=runner).run_playbook(
        "slot.yml", {"slotwarden_slots": [{**base, "quota": "80M"}]}, check=True, diff=True)
    assert run.status == "successful"
    stdout = next((runner / "artifacts").glob("*/stdout")).read_text()
    assert f"-    \"quota_bytes\": {40 << 20}" in stdout or f"-quota_bytes: {40 << 20}" in stdout, stdout
    assert str(80 << 20) in stdout
    assert lab_host.context().store.get_slot(name).quota_bytes == 40 << 20  # type: ignore[union-attr]
    [o] = ex.apply([SlotChange.parse({**base, "quota": "80M"})])
    assert (o.action, o.changed) == ("updated", True)
    ctx = lab_host.context()
    assert ctx.store.get_slot(name).quota_bytes == 80 << 20  # type: ignore[union-attr]
    assert ctx.quota.usage(name, lab_host.slots_root / name).limit_bytes == 80 << 20
    [o] = ex.apply([SlotChange.parse({"username": name, "state": "absent"})])
    assert o.action == "removed"
