"""The isolation suite (tests/infra) against this machine: a btrfs loop host and two slots.

The same testinfra suite the VM lab runs (``make vm-test``), here with ``--hosts=local://``:
what applies without VMs. The guard and client checks are left out unless the guard is
installed here; the suite's summary names them.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.system.fixtures.hosts import REPO, SlotHost, make_slot_host, teardown_slot_host, world_traversable_tmpdir

pytestmark = pytest.mark.root

QUOTA_MIB = 16


@pytest.fixture
def infra_host(_proc_options: None) -> Iterator[SlotHost]:
    base = world_traversable_tmpdir("infra")
    # Support grants and inboxes under BASE too, never this machine's /srv and /var/spool.
    host = make_slot_host(base, f"tv{secrets.token_hex(2)}", size="1G",
                          extra_config=f'[support]\ngrants_dir = "{base}/grants"\n[inbox]\ndir = "{base}/inbox"\n')
    try:
        yield host
    finally:
        teardown_slot_host(host)


def test_isolation_suite_passes_on_this_machine(infra_host: SlotHost) -> None:
    names = [infra_host.name() for _ in range(2)]
    for name in names:
        made = infra_host.slotctl("slot", "create", name, "--email", f"{name}@example.com", "--country", "DE",
                                  "--quota", f"{QUOTA_MIB}M", "--json")
        assert made.returncode == 0, made.stderr
    suite = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-ra", str(REPO / "tests" / "infra"),
         "--hosts=local://", f"--slots={','.join(names)}", f"--quota-mib={QUOTA_MIB}",
         f"--secret-path={infra_host.base / 'state'}"],
        cwd=REPO, env=infra_host.env(), capture_output=True, text=True, timeout=600)
    print(suite.stdout)
    assert suite.returncode == 0, suite.stdout[-12000:] + suite.stderr[-2000:]
