"""Disk quota: a tenant cannot write past its slot's quota (usrquota on ext4, or a btrfs qgroup)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra.tenants import Slot, as_tenant

FILL = ".swv-fill"


def test_quota_stops_a_tenant_writing_past_it(host: Any, slots: list[Slot], request: pytest.FixtureRequest) -> None:
    quota_mib = request.config.getoption("quota_mib")
    slot = slots[0]
    out = as_tenant(host, slot,
                    f"dd if=/dev/zero of={FILL} bs=1M count={quota_mib + 8} conv=fsync 2>&1; echo rc=$?; "
                    f"stat -c size=%s {FILL}; rm -f {FILL}")
    fields = dict(w.split("=", 1) for w in out.stdout.split() if w.startswith(("rc=", "size=")))
    assert "Disk quota exceeded" in out.stdout, out.stdout
    assert fields["rc"] != "0"
    assert int(fields["size"]) <= (quota_mib + 1) * 1024 * 1024
