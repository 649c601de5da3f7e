"""Options, markers and fixtures of the isolation suite.

The suite runs against any host testinfra can reach, and checks from the tenants' side:
commands that must fail run as the slot user (``host.sudo(slot)``), root only sets the
scene (a canary file, a process to hide) and clears it again.

A Vagrant VM (what vm/lab.sh passes), and this machine (what tests/system/test_infra_local.py
passes after making a btrfs loop host and two slots)::

    pytest tests/infra --hosts=ssh://server --ssh-config=ssh-config --sudo --guard=yes \\
        --slots=tva,tvb --client-host=ssh://client --server-address=198.51.100.10
    pytest tests/infra --hosts=local:// --slots=tva,tvb --secret-path=/tmp/x/state

Markers select what only some hosts have; the run says what it left out and why:
``guard`` needs the login guard in the host's sshd PAM stack (``--guard=yes`` requires it,
as the VM lab does; ``auto`` looks for it),
``client`` needs a second machine (``--client-host``) to log in from,
``confine`` the slot session module in the host's common session stack (``--confine=yes``
requires it, as the VM lab does), ``cron`` a cron daemon, ``shared_store`` the fleet's
PostgreSQL behind the host's guard (``--shared-store=ssh://client``, as the VM lab runs it).
"""

from __future__ import annotations

import os
import secrets
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import testinfra

from tests.infra.guardlab import hash_password
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
    group.addoption("--guard", choices=("auto", "yes", "no"), default="auto",
                    help="run the guard checks: yes (the host must have it), no, or auto (where "
                         "pam_slotwarden.so is in sshd's PAM stack; default)")
    group.addoption("--confine", choices=("auto", "yes", "no"), default="auto",
                    help="run the seccomp checks: yes (the host must have pam_slotwarden_session.so in its "
                         "common session stack, as the package sets it up), no, or auto (where it is; default)")
    group.addoption("--client-host", default=None,
                    help="testinfra host spec of a second machine that logs in to the host")
    group.addoption("--server-address", default=None,
                    help="the host's address as the client (and this runner) reach it over ssh")
    group.addoption("--shared-store", default=None,
                    help="testinfra host spec of the machine running the fleet's PostgreSQL that the host's "
                         "guard uses ([guard] store); the checks read it there with psql as postgres")
    group.addoption("--store-db", default="slotwarden", help="the shared store's database (default slotwarden)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "guard: needs the slotwarden login guard on the host")
    config.addinivalue_line("markers", "client: needs --client-host (a second machine)")
    config.addinivalue_line("markers", "usrquota: needs slot homes on a usrquota (ext4/xfs) filesystem")
    config.addinivalue_line("markers", "confine: needs the slot session module (seccomp filter) in the host's "
                                       "common session stack")
    config.addinivalue_line("markers", "cron: needs a cron daemon running on the host")
    config.addinivalue_line("markers", "shared_store: needs --shared-store (the host's guard on the fleet's "
                                       "PostgreSQL, reachable there with psql)")
    config._swv_left_out = []  # type: ignore[attr-defined]


def _probe_host(config: pytest.Config) -> Any:
    spec = (config.getoption("hosts") or "local://").split(",")[0]
    return testinfra.get_host(spec, ssh_config=config.getoption("ssh_config"),
                              sudo=config.getoption("sudo"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (never skip silently) what this host cannot run, and remember why."""
    # This hook sees the whole session's items; only the suite's own are its business.
    here = Path(__file__).parent
    suite = {item for item in items if here in item.path.parents}
    if not suite:
        return
    if not config.getoption("slots"):
        why = "no --slots given: the suite runs through tests/system/test_infra_local.py or make vm-test"
        config._swv_left_out.append((str(here.relative_to(config.rootpath)), why))  # type: ignore[attr-defined]
        config.hook.pytest_deselected(items=suite)
        items[:] = [item for item in items if item not in suite]
        return
    reasons: dict[str, str] = {}
    guard = config.getoption("guard")
    if guard == "no":
        reasons["guard"] = "--guard=no"
    elif guard == "auto" and any(item.get_closest_marker("guard") for item in suite):
        stack = "/etc/pam.d/sshd /etc/pam.d/common-auth /etc/pam.d/common-account"
        if _probe_host(config).run(f"grep -qs pam_slotwarden.so {stack}").rc != 0:
            reasons["guard"] = "the login guard is not in this host's sshd PAM stack (--guard=yes requires it)"
    confine = config.getoption("confine")
    if confine == "no":
        reasons["confine"] = "--confine=no"
    elif confine == "auto" and any(item.get_closest_marker("confine") for item in suite):
        stack = "/etc/pam.d/common-session /etc/pam.d/common-session-noninteractive"
        if _probe_host(config).run(f"grep -qs pam_slotwarden_session.so {stack}").rc != 0:
            reasons["confine"] = ("the slot session module is not in this host's common session stack "
                                  "(tests/system/test_confine.py covers this machine; --confine=yes requires it)")
    if any(item.get_closest_marker("cron") for item in suite):
        if _probe_host(config).run("pgrep -x cron >/dev/null || pgrep -x crond >/dev/null").rc != 0:
            reasons["cron"] = "no cron daemon runs on this host"
    if any(item.get_closest_marker("usrquota") for item in suite):
        first = config.getoption("slots").split(",")[0]
        probe = _probe_host(config)
        home = probe.run(f"getent passwd {shlex.quote(first)} | cut -d: -f6").stdout.strip()
        fstype = probe.run(f"stat -f -c %T {shlex.quote(home)}").stdout.strip() if home else ""
        if fstype not in ("ext2/ext3", "xfs"):
            reasons["usrquota"] = f"the slots' filesystem is {fstype or 'unknown'}: inode caps are usrquota's"
    if not config.getoption("client_host") or not config.getoption("server_address"):
        reasons.setdefault("client", "no second machine to log in from (--client-host/--server-address)")
    if not config.getoption("shared_store"):
        reasons["shared_store"] = "no fleet PostgreSQL to look into (--shared-store)"
    keep, drop = [], []
    for item in items:
        why = [reasons[m] for m in reasons if item in suite and item.get_closest_marker(m)]
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


@pytest.fixture
def client(request: pytest.FixtureRequest) -> Any:
    """The second machine (``--client-host``): the attacker's side of the guard checks."""
    cfg = request.config
    return testinfra.get_host(cfg.getoption("client_host"), ssh_config=cfg.getoption("ssh_config"),
                              sudo=cfg.getoption("sudo"))


@pytest.fixture
def target(host: Any, client: Any, slots: list[Slot]) -> Iterator[tuple[Slot, str, str]]:
    """The last slot with a fresh password, and a key the client holds; all undone after."""
    slot = slots[-1]
    password = secrets.token_urlsafe(18)
    old_hash = host.check_output(f"getent shadow {slot.name} | cut -d: -f2")
    key = f"/tmp/swv-lockout-{secrets.token_hex(4)}"
    client.check_output(f"ssh-keygen -q -t ed25519 -N '' -C swv-lockout -f {key}")
    pub = client.check_output(f"cat {key}.pub")
    ak = shlex.quote(f"{slot.home}/.ssh/authorized_keys")
    host.check_output(f"usermod -p {shlex.quote(hash_password(password))} {slot.name} && "
                      f"install -d -o {slot.name} -g {slot.name} -m 0700 {shlex.quote(slot.home + '/.ssh')} && "
                      f"echo {shlex.quote(pub)} >> {ak} && chown {slot.name}: {ak} && chmod 0600 {ak}")
    try:
        yield slot, password, key
    finally:
        client.run(f"rm -f {key} {key}.pub")
        host.run(f"usermod -p {shlex.quote(old_hash)} {slot.name}; sed -i '/ swv-lockout$/d' {ak}; "
                 f"slotctl guard lift --user {slot.name}; slotctl guard forget --user {slot.name}")
