"""The hostile tenant: attacks a tenant with a shell can make, run as that tenant.

Root only sets the scene and clears it; every attempt runs as a slot user. Each class is one
family of attacks; the root-side halves (root's operations racing the tenant) are in
``tests/system/test_hostile_*.py``.
"""

from __future__ import annotations

import shlex
from typing import Any

import pytest

from tests.infra.tenants import Slot, as_tenant

MiB = 1 << 20


class TestIdentity:
    """A slot's identity is its own: no id of the system's ranges, no borrowed ids, no setuid."""

    def test_slot_ids_come_from_outside_the_ranges_useradd_hands_out(self, host: Any, slots: list[Slot]) -> None:
        defs = {}
        for line in host.file("/etc/login.defs").content_string.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                defs[parts[0]] = int(parts[1])
        ranges = {k: (defs.get(f"{k}_MIN", lo), defs.get(f"{k}_MAX", hi))
                  for k, (lo, hi) in {"UID": (1000, 60000), "SUB_UID": (100000, 600100000)}.items()}
        inside = {s.name: k for s in slots for k, (lo, hi) in ranges.items() if lo <= s.uid <= hi}
        assert inside == {}, "a slot uid that useradd (or a subordinate range) could hand out again"

    def test_each_slot_has_a_private_group_of_its_own_number(self, host: Any, slots: list[Slot]) -> None:
        for s in slots:
            out = host.check_output(f"id -g {shlex.quote(s.name)}; getent group {s.uid}")
            gid, group = out.splitlines()
            assert int(gid) == s.uid and group.split(":")[0] == s.name

    def test_a_tenant_has_no_subordinate_ids_to_map_other_uids(self, host: Any, slots: list[Slot]) -> None:
        for path in ("/etc/subuid", "/etc/subgid"):
            f = host.file(path)
            owners = {ln.split(":", 1)[0] for ln in f.content_string.splitlines() if ln} if f.exists else set()
            assert owners & {s.name for s in slots} == set(), f"slot users in {path}"
        # And from the tenant's side: newuidmap refuses every mapping beyond its own uid.
        s = slots[0]
        probe = ("command -v newuidmap >/dev/null || { echo NO-TOOL; exit 0; }; "
                 "unshare -U sleep 5 & p=$!; sleep 0.3; "
                 f"newuidmap $p 0 {s.uid + 1} 1 2>/dev/null && echo MAPPED; kill $p 2>/dev/null; true")
        assert "MAPPED" not in as_tenant(host, s, probe).stdout

    def test_a_setuid_file_in_a_home_does_not_elevate(self, host: Any, pairs: list[tuple[Slot, Slot]]) -> None:
        a, b = pairs[0]
        pub = f"{a.home}/.swv-pub"
        shell = f"{pub}/sh"
        plant = (f"mkdir -p {shlex.quote(pub)} && cp /bin/bash {shlex.quote(shell)} && "
                 f"chmod 4755 {shlex.quote(shell)} && chmod 755 {shlex.quote(pub)} && chmod 711 {shlex.quote(a.home)}")
        assert as_tenant(host, a, plant).rc == 0
        try:
            # The other tenant runs A's setuid shell (bash -p keeps what the kernel gave it).
            out = as_tenant(host, b, f"{shlex.quote(shell)} -p -c 'id -u' 2>/dev/null || echo CANNOT-RUN")
            assert out.stdout.strip() in {str(b.uid), "CANNOT-RUN"}, f"{b.name} became uid {out.stdout.strip()}"
        finally:
            as_tenant(host, a, f"rm -rf {shlex.quote(pub)}; chmod 700 {shlex.quote(a.home)}")


def _filesystem(host: Any, slot: Slot) -> str:
    return str(as_tenant(host, slot, "stat -f -c %T $HOME").stdout.strip())


class TestQuotaEscapeThroughSubvolumes:
    """Quota (issue 12): subvolumes and snapshots a tenant makes count against its slot."""

    SUB = ".swv-hostile-sub"

    def _write_past(self, host: Any, slot: Slot, quota_mib: int, where: str) -> Any:
        return as_tenant(host, slot,
                         f"dd if=/dev/urandom of={where}/fill bs=1M count={quota_mib + 8} conv=fsync 2>&1; "
                         f"echo rc=$?; stat -c size=%s {where}/fill")

    def _cleanup(self, host: Any, slot: Slot, path: str) -> None:
        # An empty subvolume is removed by its owner with rmdir (no privilege needed).
        as_tenant(host, slot, f"rm -rf {path}/* 2>/dev/null; rmdir {path} 2>/dev/null || rm -rf {path}")

    @pytest.mark.parametrize("make", ["btrfs subvolume create {p}", "btrfs subvolume snapshot $HOME {p}"])
    def test_nested_subvolume_does_not_lift_the_cap(self, host: Any, slots: list[Slot],
                                                    request: pytest.FixtureRequest, make: str) -> None:
        quota_mib = request.config.getoption("quota_mib")
        slot = slots[0]
        path = f"$HOME/{self.SUB}"
        made = as_tenant(host, slot, make.format(p=path) + " 2>&1")
        try:
            if made.rc != 0:
                # Not btrfs (usrquota homes): no subvolume at all, and the cap covers every file.
                assert _filesystem(host, slot) != "btrfs", made.stdout
                as_tenant(host, slot, f"mkdir -p {path}")
            out = self._write_past(host, slot, quota_mib, path)
            assert "Disk quota exceeded" in out.stdout, out.stdout
            size = int(out.stdout.split("size=")[1].split()[0])
            assert size <= (quota_mib + 1) * MiB
        finally:
            self._cleanup(host, slot, path)


@pytest.mark.usrquota
class TestInodeCap:
    """Quota (issue 12): on usrquota hosts a tenant cannot fill the inode table with empty files."""

    def test_empty_files_stop_at_the_inode_cap(self, host: Any, slots: list[Slot]) -> None:
        slot = slots[0]
        # `true`, not `:`: a failed redirection of a special built-in ends a POSIX shell.
        try:
            out = as_tenant(host, slot, "mkdir -p $HOME/.swv-files && cd $HOME/.swv-files; i=0; "
                                        "while [ $i -lt 200000 ]; do true > f$i 2>/dev/null || break; i=$((i+1)); "
                                        "done; echo made=$i; { true > one-more; } 2>&1; true")
        finally:
            as_tenant(host, slot, "rm -rf $HOME/.swv-files")
        assert "made=" in out.stdout, out.stdout + out.stderr
        made = int(out.stdout.split("made=")[1].split()[0])
        assert made < 200000, "no inode cap: 200,000 empty files made"
        assert "Disk quota exceeded" in out.stdout, out.stdout
