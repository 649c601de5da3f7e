"""Options, markers and fixtures of the isolation suite.

The suite runs against any host testinfra can reach, and checks from the tenants' side:
commands that must fail run as the slot user (``host.sudo(slot)``), root only sets the
scene (a canary file, a process to hide) and clears it again.

>>> # a Vagrant VM (the lab passes these; see vm/lab.sh)
>>> # pytest tests/infra --hosts=ssh://server --ssh-config=ssh-config --sudo \\
>>> #     --slots=tva,tvb --client-host=ssh://client --server-address=198.51.100.10
>>> # this machine (tests/system/test_infra_local.py prepares it)
>>> # pytest tests/infra --hosts=local:// --slots=tva,tvb --secret-path=/tmp/x/state

Markers select what only some hosts have; the run says what it left out and why:
``guard`` needs the login guard installed (its PAM module, pam_slotwarden.so, on the host),
``client`` needs a second machine (``--client-host``) to log in from.
"""

from __future__ import annotations

import os
import shlex
from typing import Any

import pytest
import testinfra

from tests.infra.tenants import DEFAULT_SECRET_PATHS, Slot


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("slotwarden isolation suite")
    group.addoption("--slots", default=os.environ.get("SLOTWARDEN_INFRA_SLOTS", ""),
                    help="comma-separated names of (at least two) slots on the host")
    group.addoption("--quota-mib", type=int, default=16,
                    help="the disk quota the slots were created with, in MiB (default 16)")
    group.addoption("--secret-path", action="append", default=[],
                    help="a file or directory no tenant may read (repeatable; default: "
                         + ", ".join(DEFAULT_SECRET_PATHS) + ")")
    group.addoption("--client-host", default=None,
                    help="testinfra host spec of a second machine that logs in to the host")
    group.addoption("--server-address", default=None,
                    help="the host's address as the client (and this runner) reach it over ssh")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "guard: needs the slotwarden login guard on the host")
    config.addinivalue_line("markers", "client: needs --client-host (a second machine)")
    config._swv_left_out = []  # type: ignore[attr-defined]


def _probe_host(config: pytest.Config) -> Any:
    spec = (config.getoption("hosts") or "local://").split(",")[0]
    return testinfra.get_host(spec, ssh_config=config.getoption("ssh_config"),
                              sudo=config.getoption("sudo"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (never skip silently) what this host cannot run, and remember why."""
    if not items:
        return
    reasons: dict[str, str] = {}
    if any(item.get_closest_marker("guard") for item in items):
        host = _probe_host(config)
        if not host.run("find /lib /usr/lib -path '*security/pam_slotwarden.so'").stdout.strip():
            reasons["guard"] = "the login guard is not installed on the host (no pam_slotwarden.so)"
    if not config.getoption("client_host") or not config.getoption("server_address"):
        reasons.setdefault("client", "no second machine to log in from (--client-host/--server-address)")
    keep, drop = [], []
    for item in items:
        why = [reasons[m] for m in reasons if item.get_closest_marker(m)]
        (drop if why else keep).append(item)
        if why:
            config._swv_left_out.append((item.nodeid, "; ".join(why)))  # type: ignore[attr-defined]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    left_out = config._swv_left_out  # type: ignore[attr-defined]
    if left_out:
        terminalreporter.section("isolation checks not run on this host")
        for nodeid, why in left_out:
            terminalreporter.write_line(f"{nodeid}: {why}")


@pytest.fixture(scope="module")
def slots(host: Any, request: pytest.FixtureRequest) -> list[Slot]:
    """The slots under test (at least two), read from the host's passwd database."""
    names = [n for n in request.config.getoption("slots").split(",") if n]
    if len(names) < 2:
        pytest.fail("the isolation suite needs --slots with at least two slot names")
    out = host.check_output("getent passwd " + " ".join(shlex.quote(n) for n in names))
    found = {}
    for line in out.splitlines():
        name, _pw, uid, _gid, _gecos, home, _shell = line.split(":")
        found[name] = Slot(name, int(uid), home)
    missing = [n for n in names if n not in found]
    assert not missing, f"slots missing on the host: {missing}"
    return [found[n] for n in names]


@pytest.fixture(scope="module")
def pairs(slots: list[Slot]) -> list[tuple[Slot, Slot]]:
    """Every (tenant, other tenant) pair, both directions."""
    return [(a, b) for a in slots for b in slots if a != b]
