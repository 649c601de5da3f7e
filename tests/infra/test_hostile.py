"""The hostile tenant: attacks a tenant with a shell can make, run as that tenant.

Each class is one family of attacks; the root-side halves (root's operations racing the
tenant) are in ``tests/system/``.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra.tenants import Slot, as_tenant

MiB = 1 << 20


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
