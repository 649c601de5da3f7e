"""Lifecycle wired into the rest, for real.

- a slot over its quota can still get a larger plan and be terminated.

Name prefix ``tk``, app ports 2670-2689.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner import accounts, lifecycle
from provisioner.slots import Created
from tests.system.lifecycle_env import SlotHost, new_name, slot_host

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

PREFIX = "tk"
# Two real apps of the catalog, one at a time.
PLANS = """
[plans.tkpair]
quota = "256M"
apps = ["transmission", "jupyterlab"]
max_apps = 1
"""


@pytest.fixture(scope="module")
def host() -> Iterator[SlotHost]:
    with slot_host(image_size="1G", extra_toml=PLANS, name_prefix=PREFIX, app_ports=(2670, 2689)) as h:
        yield h


def _create(host: SlotHost, plan: str) -> tuple[str, str]:
    name = new_name(PREFIX)
    ctx = host.ctx()
    try:
        out = lifecycle.create(ctx, name, f"{name}@example.com", "DE", plan=plan)
    finally:
        ctx.close()
    assert isinstance(out, Created)
    return name, out.password


def _remove(host: SlotHost, name: str) -> None:
    if accounts.lookup_user(name) is not None or _in_store(host, name):
        host.slotctl("slot", "remove", name)


def _in_store(host: SlotHost, name: str) -> bool:
    ctx = host.ctx()
    try:
        return ctx.store.get_slot(name) is not None
    finally:
        ctx.close()


# --- a full slot can still be upgraded and terminated ----------------------------------------------


@pytest.mark.parametrize("then", ["upgrade", "terminate"])
def test_a_slot_over_its_quota_can_be_upgraded_and_terminated(host: SlotHost, then: str) -> None:
    """Found by schemathesis: a slot created with a quota below what a fresh home holds (1K) is
    over its btrfs limit at once, and changing that limit failed ("Disk quota exceeded"): the slot
    could neither get a plan with room nor be terminated (the API answered 500)."""
    name = new_name(PREFIX)
    ctx = host.ctx()
    try:
        out = lifecycle.create(ctx, name, f"{name}@example.com", "DE", plan="small", quota="1K")
        assert isinstance(out, Created)
        home = Path(out.record.home)
        usage = ctx.quota.usage(name, home)
        assert usage.limit_bytes == 1024
        if then == "upgrade":
            lifecycle.change_plan(ctx, name, "large")
            assert ctx.quota.usage(name, home).limit_bytes == 256 << 20
        lifecycle.terminate(ctx, name)
        assert accounts.lookup_user(name) is None and not _in_store(host, name) and not home.exists()
    finally:
        ctx.close()
        _remove(host, name)
