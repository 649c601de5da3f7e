"""System-test fixtures: thin pytest wrappers over the lab package ``tests/system/fixtures/``.

Every name a test makes starts with a per-run random prefix, so parallel runs on one machine
never collide, and teardown removes exactly what this run made, even when a test fails.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from provisioner.host import proc_hidepid
from tests.system.fixtures import hosts
from tests.system.fixtures.postgres import pg_lab  # noqa: F401


@pytest.fixture(scope="session", autouse=True)
def _must_be_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("system tests need root (they create real users, mounts and PAM stacks)", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def _default_hub_user() -> Iterator[None]:
    """Labs that run host init without a [hub] section make the default Hub user: remove it after."""
    from provisioner.hub import HubConfig

    name = HubConfig().user
    existed = subprocess.run(["id", "-u", name], capture_output=True).returncode == 0
    yield
    if not existed:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@pytest.fixture(scope="session")
def _proc_options() -> Iterator[None]:
    """Put /proc back the way it was when the session started."""
    before = proc_hidepid()
    yield
    if before[0] in (None, "0", "off"):
        subprocess.run(["mount", "-o", "remount,hidepid=0", "/proc"], check=False)


@pytest.fixture(scope="session")
def slot_host(_proc_options: None) -> Iterator[hosts.SlotHost]:
    """One btrfs slot host shared by the session's system tests."""
    with hosts.slot_host("slothost", prefix=f"ts{secrets.token_hex(2)}") as host:
        yield host
