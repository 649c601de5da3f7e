"""A quota that cannot be escaped: subvolumes and snapshots a tenant makes count against its slot.

Every attack runs as the tenant (runuser): ``btrfs subvolume create``/``snapshot`` in the home,
a subvolume made with an explicit, empty qgroup-inherit list (what a hostile tenant's own
ioctl can ask for), names forged to look like ``btrfs subvolume list`` lines. Root only
creates and removes the slots and runs ``doctor``.
"""

from __future__ import annotations

import json
import subprocess

from provisioner.quota.btrfs_tree import qgroupid, quota_mode, read_facts
from tests.system.fixtures.hosts import SlotHost
from tests.system.fixtures.processes import as_user
from tests.system.test_slots import assert_no_trace, qgroup_ids

MiB = 1 << 20

# Run as the tenant with ``python3 -I -c``: BTRFS_IOC_SUBVOL_CREATE_V2 with an explicit
# qgroup-inherit list of the given ids (empty: "join no group"), as any tenant's code may.
SUBVOL_WITH_INHERIT = r"""
import ctypes, fcntl, os, struct, sys
parent, name, ids = sys.argv[1], sys.argv[2], [int(x) for x in sys.argv[3:]]
data = struct.pack("=9Q", 0, len(ids), 0, 0, 0, 0, 0, 0, 0) + b"".join(struct.pack("=Q", i) for i in ids)
inh = ctypes.create_string_buffer(data, len(data))
args = bytearray(struct.pack("=qQQQQ16x", 0, 0, 1 << 2, len(data), ctypes.addressof(inh))
                 + name.encode().ljust(4040, b"\0"))
fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
fcntl.ioctl(fd, 0x50009418, args)
print("made", name)
"""


def _create(host: SlotHost, quota: str = "20M") -> str:
    name = host.name()
    r = host.slotctl("slot", "create", name, "--email", "q@example.com", "--country", "DE", "--quota", quota)
    assert r.returncode == 0, r.stderr
    return name


def _fill(user: str, path: str, mib: int) -> subprocess.CompletedProcess[str]:
    return as_user(user, f"dd if=/dev/urandom of={path} bs=1M count={mib} conv=fsync 2>&1; echo rc=$?")


def _used(host: SlotHost, name: str) -> int:
    subprocess.run(["btrfs", "filesystem", "sync", str(host.slots_root)], check=True, capture_output=True)
    ctx = host.ctx()
    try:
        return ctx.quota.usage(name, host.slots_root / name).used_bytes
    finally:
        ctx.close()


def test_this_host_runs_simple_quotas(slot_host: SlotHost) -> None:
    # host init turns on simple quotas where the kernel has them (6.7+; this machine has 6.18).
    assert quota_mode(slot_host.slots_root) == "squota"


def test_nested_subvolume_and_snapshot_count_against_the_slot(slot_host: SlotHost) -> None:
    name = _create(slot_host)
    made = as_user(name, "btrfs subvolume create $HOME/s && btrfs subvolume snapshot $HOME $HOME/snap")
    assert made.returncode == 0, made.stderr
    r1 = _fill(name, "$HOME/s/big", 60)
    r2 = _fill(name, "$HOME/snap/big", 60)
    assert "Disk quota exceeded" in r1.stdout + r2.stdout, r1.stdout + r2.stdout
    used = _used(slot_host, name)
    assert used <= 21 * MiB, f"the slot holds {used} bytes behind a 20 MiB quota"
    assert slot_host.slotctl("slot", "remove", name).returncode == 0


def test_explicit_empty_inherit_is_found_reported_and_brought_under_the_cap(slot_host: SlotHost) -> None:
    name = _create(slot_host)
    home = slot_host.slots_root / name
    made = as_user(name, f"python3 -I -c '{SUBVOL_WITH_INHERIT}' $HOME escape")
    assert made.returncode == 0, made.stderr
    _fill(name, "$HOME/escape/big", 30)
    report = slot_host.slotctl("doctor", "--json")
    assert report.returncode == 1
    problems = [d["problem"] for d in json.loads(report.stdout)["drift"] if d["subject"] == name]
    assert any("outside the slot's group" in p for p in problems), problems
    fixed = slot_host.slotctl("doctor", "--enforce", "--json")
    moved = [d for d in json.loads(fixed.stdout)["enforced"] if d["subject"] == name]
    assert len(moved) == 1 and "into the slot's quota group" in moved[0]["problem"], fixed.stdout
    # Now counted: the slot is over its cap, so the tenant writes nothing more anywhere.
    assert _used(slot_host, name) > 20 * MiB
    blocked = _fill(name, "$HOME/more", 2)
    assert "Disk quota exceeded" in blocked.stdout, blocked.stdout
    after = slot_host.slotctl("doctor", "--json")
    problems = [d["problem"] for d in json.loads(after.stdout)["drift"] if d["subject"] == name]
    assert not any("outside the slot's group" in p for p in problems)
    assert any("above its limit" in p for p in problems), problems
    assert qgroupid(1, facts_home_id(home)) in read_facts(slot_host.slots_root).referenced
    assert slot_host.slotctl("slot", "remove", name).returncode == 0


def facts_home_id(home: object) -> int:
    out = subprocess.run(["btrfs", "inspect-internal", "rootid", str(home)], capture_output=True, text=True,
                         check=True)
    return int(out.stdout)


def test_a_tenant_cannot_charge_its_subvolume_to_another_slot(slot_host: SlotHost) -> None:
    victim, tenant = _create(slot_host), _create(slot_host)
    victim_group = qgroupid(1, facts_home_id(slot_host.slots_root / victim))
    made = as_user(tenant, f"python3 -I -c '{SUBVOL_WITH_INHERIT}' $HOME theirs {victim_group}")
    assert made.returncode == 0, made.stderr
    report = slot_host.slotctl("doctor", "--json")
    problems = [d["problem"] for d in json.loads(report.stdout)["drift"] if d["subject"] == victim]
    assert any("holds qgroups of other subvolumes" in p for p in problems), problems
    slot_host.slotctl("doctor", "--enforce")
    facts = read_facts(slot_host.slots_root)
    tenant_group = qgroupid(1, facts_home_id(slot_host.slots_root / tenant))
    assert len(facts.members(victim_group)) == 1, "only the victim's own home is in the victim's group"
    assert len(facts.members(tenant_group)) == 2, "the tenant's subvolume counts against the tenant"
    for n in (tenant, victim):
        assert slot_host.slotctl("slot", "remove", n).returncode == 0


def test_nested_subvolumes_never_block_removal(slot_host: SlotHost) -> None:
    before = qgroup_ids(slot_host.slots_root)
    bystander = _create(slot_host)
    name = _create(slot_host)
    script = ("set -e; btrfs subvolume create $HOME/a; btrfs subvolume create $HOME/a/b; "
              "mkdir -p $HOME/d/e; btrfs subvolume create $HOME/d/e/c; btrfs subvolume snapshot $HOME/a $HOME/snap; "
              "echo data > $HOME/a/b/f; btrfs subvolume create $HOME/gone; rmdir $HOME/gone; "
              f"ln -s {slot_host.slots_root / bystander} $HOME/link; "
              # A name that forges a `btrfs subvolume list` line claiming the bystander's home.
              f"btrfs subvolume create \"$HOME/x$(printf '\\nID 5 gen 1 top level 5 path {bystander}')\"; "
              f"python3 -I -c '{SUBVOL_WITH_INHERIT}' $HOME/a/b escape")
    made = as_user(name, script)
    assert made.returncode == 0, made.stderr
    removed = slot_host.slotctl("slot", "remove", name, "--json")
    assert removed.returncode == 0, removed.stderr
    assert_no_trace(slot_host, name, before | qgroup_ids(slot_host.slots_root))
    assert (slot_host.slots_root / bystander).is_dir()
    assert as_user(bystander, "touch $HOME/still-here").returncode == 0
    assert slot_host.slotctl("slot", "remove", bystander).returncode == 0
    assert qgroup_ids(slot_host.slots_root) <= before, "every qgroup of both slots is gone"


def test_a_home_from_before_groups_is_adopted_with_its_cap(slot_host: SlotHost) -> None:
    name = _create(slot_host)
    home = slot_host.slots_root / name
    sid = facts_home_id(home)
    mnt = str(slot_host.slots_root)
    # The state an older slotwarden left: the cap on the home's own 0/N, no group.
    for argv in (["remove", f"0/{sid}", f"1/{sid}"], ["destroy", f"1/{sid}"], ["limit", "20M", f"0/{sid}"]):
        subprocess.run(["btrfs", "qgroup", *argv, mnt], check=True, capture_output=True)
    report = slot_host.slotctl("doctor", "--json")
    problems = [d["problem"] for d in json.loads(report.stdout)["drift"] if d["subject"] == name]
    assert any(f"no group 1/{sid}" in p for p in problems), problems
    assert slot_host.slotctl("doctor", "--enforce").returncode == 0
    facts = read_facts(slot_host.slots_root)
    assert facts.max_referenced.get(qgroupid(1, sid)) == 20 * MiB
    assert qgroupid(0, sid) not in facts.max_referenced, "the old cap moved to the group"
    assert as_user(name, "btrfs subvolume create $HOME/s").returncode == 0
    assert "Disk quota exceeded" in _fill(name, "$HOME/s/big", 40).stdout
    assert slot_host.slotctl("slot", "remove", name).returncode == 0


def test_forged_subvolume_names_do_not_fool_the_metrics(slot_host: SlotHost) -> None:
    from provisioner.metrics.disk import usage_all

    victim, tenant = _create(slot_host), _create(slot_host)
    tenant_id = facts_home_id(slot_host.slots_root / tenant)
    _fill(tenant, "$HOME/big", 10)
    forged = f"\\nID {tenant_id} gen 1 top level 5 path {victim}"
    assert as_user(tenant, f"btrfs subvolume create \"$HOME/x$(printf '{forged}')\"").returncode == 0
    ctx = slot_host.ctx()
    try:
        records = [r for r in ctx.store.list_slots() if r.username in (victim, tenant)]
        seen = usage_all(ctx, records, fresh=True)
    finally:
        ctx.close()
    victim_usage, source = seen[victim]
    assert victim_usage is not None and victim_usage.used_bytes < 2 * MiB, (victim_usage, source)
    assert source == f"btrfs qgroup 1/{facts_home_id(slot_host.slots_root / victim)}"
    assert seen[tenant][0] is not None and seen[tenant][0].used_bytes >= 10 * MiB
    for n in (tenant, victim):
        assert slot_host.slotctl("slot", "remove", n).returncode == 0


def test_kept_data_with_nested_subvolumes_is_removed_later(slot_host: SlotHost) -> None:
    before = qgroup_ids(slot_host.slots_root)
    name = _create(slot_host)
    made = as_user(name, "btrfs subvolume create $HOME/a && btrfs subvolume create $HOME/a/b && "
                         "echo keep > $HOME/a/b/notes")
    assert made.returncode == 0, made.stderr
    assert slot_host.slotctl("slot", "remove", name, "--keep-data").returncode == 0
    [kept] = [p for p in (slot_host.slots_root / ".kept").iterdir() if p.name.startswith(name + "-")]
    assert (kept / "a" / "b" / "notes").read_text() == "keep\n"
    ctx = slot_host.ctx()
    try:
        ctx.quota.remove_home(kept)  # what `retention run` does when the kept time is up
        ctx.store.delete_kept_home(str(kept))
    finally:
        ctx.close()
    assert not kept.exists()
    assert qgroup_ids(slot_host.slots_root) <= before
