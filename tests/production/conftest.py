"""Options of the production-path suite (systemd, cgroup v2, usrquota), run by vm/lab.sh.

    pytest tests/production --hosts=ssh://server --ssh-config=ssh-config --sudo \\
        --server-address=198.51.100.10 --run-id=abc123

Without ``--server-address`` the suite is deselected and says so (it needs a server it may
reboot: never this machine).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import testinfra


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("slotwarden production-path suite")
    group.addoption("--server-address", default=None, help="the server's address for tenant SSH logins")
    group.addoption("--run-id", default="x", help="a per-run tag for the slot names")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    suite = [item for item in items if here in item.path.parents]
    if suite and not config.getoption("server_address"):
        config.hook.pytest_deselected(items=suite)
        items[:] = [item for item in items if item not in suite]
        print("\ntests/production deselected: no --server-address (it reboots the server: VM lab only)")


@pytest.fixture(scope="session")
def server(request: pytest.FixtureRequest) -> Any:
    spec = request.config.getoption("hosts") or ""
    # No ControlMaster: the suite reboots the server, and a stale master would hang every call.
    return testinfra.get_host(spec.split(",")[0], ssh_config=request.config.getoption("ssh_config"),
                              sudo=request.config.getoption("sudo"), controlpersist=0)
