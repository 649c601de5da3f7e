"""Creates and removals of different slots interleaved: no quota operation touches another slot.

Bounded version of ``bench/quota_stress.py``: 8 clients x 25 cycles (make home, cap, read the
cap back, write, remove: 800 quota operations) next to three bystander homes on a fresh
btrfs host. Before the fix, a removal's filesystem-wide ``qgroup clear-stale`` dropped other
slots' fresh qgroups and their next step failed with "No such file or directory".
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.system.fixtures.hosts import SlotHost, make_slot_host, teardown_slot_host, world_traversable_tmpdir
from tests.system.quota_stress import run_stress
from tests.system.test_slots import qgroup_ids

pytestmark = pytest.mark.root


@pytest.fixture
def stress_host(_proc_options: None) -> Iterator[SlotHost]:
    host = make_slot_host(world_traversable_tmpdir("qstress"), f"tq{secrets.token_hex(2)}", size="2G")
    try:
        yield host
    finally:
        teardown_slot_host(host)


def test_concurrent_creates_and_removals_of_different_slots(stress_host: SlotHost) -> None:
    before = qgroup_ids(stress_host.slots_root)
    ctx = stress_host.ctx()
    try:
        result = run_stress(ctx.quota, stress_host.slots_root, clients=8, cycles=25)
    finally:
        ctx.close()
    assert result.errors == []
    assert result.operations == 8 * 25 * 4
    assert qgroup_ids(stress_host.slots_root) <= before, "a removed home's qgroup is left"
