"""Lifecycle wired into the rest, for real: the data report, ``app install`` and the slot lock.

- ``data_report`` lists the plan and the suspension even in a program that never imported
  :mod:`provisioner.lifecycle` (the Context loads the extensions itself);
- ``slotctl app install`` respects the slot's plan: an app outside it, or one app too many, is
  refused with one line naming the plan, and nothing is installed;
- ``slotctl slot passwd`` and ``slot remove`` take the slot's lock, like the API: while the lock
  is held they wait (seen in ``/proc/locks``, never by timing), then finish; ``passwd`` leaves a
  suspended slot locked;
- a slot over its quota can still get a larger plan and be terminated.

Name prefix ``tk``, app ports 2670-2689.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner import accounts, loginstate, operations, planchange, slotlock
from provisioner.apps import registry_of
from provisioner.slots import Created
from tests.system.fixtures import hosts
from tests.system.fixtures.doors import su_password
from tests.system.fixtures.hosts import SLOTCTL, SlotHost, app_ports, new_name, slot_host
from tests.system.fixtures.processes import wait_for

pytestmark = pytest.mark.root  # not root: the session fixture in conftest.py fails the run

PREFIX = "tk"
# Two real apps of the catalog, one at a time.
PLANS = """
[plans.tkpair]
quota = "256M"
apps = ["transmission", "jupyterlab"]
max_apps = 1

[plans.tktwo]
quota = "256M"
apps = ["transmission", "jupyterlab"]
max_apps = 2
"""


@pytest.fixture(scope="module")
def host() -> Iterator[SlotHost]:
    with slot_host("wiring", plans=hosts.PLANS + PLANS, apps=app_ports(2670, 2689)) as h:
        yield h


def _create(host: SlotHost, plan: str) -> tuple[str, str]:
    name = new_name(PREFIX)
    ctx = host.ctx()
    try:
        out = operations.create_slot(ctx, name, f"{name}@example.com", "DE", plan=plan)
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


# --- the data report ----------------------------------------------------------------------------

REPORT = """
import json, sys
from provisioner.context import Context
from provisioner.datareport import data_report
before = "provisioner.lifecycle" in sys.modules
report = data_report(Context(), sys.argv[1])
print(json.dumps({"lifecycle_imported_before": before, "items": report["items"]}))
"""


def test_data_report_has_plan_and_suspension_without_importing_lifecycle(host: SlotHost) -> None:
    name, _password = _create(host, "small")
    try:
        ctx = host.ctx()
        try:
            operations.suspend(ctx, name, "invoice 9 unpaid", actor="tests")
        finally:
            ctx.close()
        out = subprocess.run([sys.executable, "-c", REPORT, name], env=host.env(), capture_output=True, text=True,
                             check=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
        data = json.loads(out.stdout)
        assert data["lifecycle_imported_before"] is False  # the report itself has to load it
        items = {i["item"]: i for i in data["items"]}
        assert items["plan"]["value"] == "small"
        assert items["suspension"]["value"]["reason"] == "invoice 9 unpaid"
        assert items["suspension"]["value"]["by"] == "tests"
        assert "slot_lifecycle" in items["plan"]["stored"]
    finally:
        _remove(host, name)


# --- app install respects the plan -------------------------------------------------------------


def _installed(host: SlotHost, name: str) -> list[str]:
    ctx = host.ctx()
    try:
        return [r.app for r in registry_of(ctx).installs(name)]
    finally:
        ctx.close()


def test_app_install_respects_the_slots_plan(host: SlotHost) -> None:
    name, _password = _create(host, "tkpair")
    try:
        outside = host.slotctl("app", "install", name, "wordpress")
        assert outside.returncode == 2, outside.stderr
        assert len(outside.stderr.strip().splitlines()) == 1
        assert "plan tkpair" in outside.stderr and "wordpress" in outside.stderr
        assert _installed(host, name) == []

        ok = host.slotctl("--json", "app", "install", name, "transmission")
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["app"] == "transmission"

        too_many = host.slotctl("app", "install", name, "jupyterlab")
        assert too_many.returncode == 2, too_many.stderr
        assert len(too_many.stderr.strip().splitlines()) == 1
        assert "plan tkpair allows 1 app(s)" in too_many.stderr
        assert _installed(host, name) == ["transmission"]

        # Reinstalling the one app is the apps package's refusal, not the plan's.
        again = host.slotctl("app", "install", name, "transmission")
        assert again.returncode != 0 and "plan" not in again.stderr, again.stderr
    finally:
        _remove(host, name)


def test_max_apps_two_allows_two_apps(host: SlotHost) -> None:
    """The bug: two app controls both named "apps" were added up, so with max_apps = 2 and one
    app installed the second was refused ("plan tktwo allows 2 app(s)")."""
    control = host.ctx().extensions.app_control  # exactly one, or the Context refuses
    assert control is not None and control.name == "apps"
    name, _password = _create(host, "tktwo")
    try:
        for app in ("transmission", "jupyterlab"):
            ok = host.slotctl("--json", "app", "install", name, app)
            assert ok.returncode == 0, ok.stderr
        assert sorted(_installed(host, name)) == ["jupyterlab", "transmission"]
    finally:
        _remove(host, name)


def test_app_install_without_a_plan_is_not_limited(host: SlotHost) -> None:
    ctx = host.ctx()
    name = new_name(PREFIX)
    try:
        out = operations.create_slot(ctx, name, f"{name}@example.com", "DE")
        assert isinstance(out, Created)
        planchange.check_app_install(ctx, name, "wordpress")  # no plan: nothing to refuse
    finally:
        ctx.close()
        _remove(host, name)


# --- slot passwd / slot remove take the slot lock ------------------------------------------------


def _waits_for_lock(pid: int, inode: int) -> bool:
    """Whether process PID is blocked in flock on the file with INODE (a '->' line of /proc/locks)."""
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" not in fields:
            continue
        for i, tok in enumerate(fields):
            if tok.count(":") == 2 and tok.rsplit(":", 1)[1] == str(inode) and fields[i - 1] == str(pid):
                return True
    return False


def _shadow_hash(name: str) -> str:
    for line in Path("/etc/shadow").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":")[1]
    raise AssertionError(f"{name} has no shadow entry")


def _run_while_locked(host: SlotHost, name: str, *args: str,
                      unchanged: object = None) -> tuple[subprocess.CompletedProcess[str], bool]:
    """Run slotctl ARGS while this test holds NAME's slot lock.

    Returns the result and whether, with the lock still held, the command was waiting for it
    and had changed nothing of the slot (UNCHANGED() true; default: user and password hash as
    before).
    """
    if unchanged is None:
        before = _shadow_hash(name)

        def unchanged() -> bool:
            return accounts.lookup_user(name) is not None and _shadow_hash(name) == before
    ctx = host.ctx()
    try:
        with slotlock.slot_lock(ctx, name):
            inode = os.stat(host.config.state_dir / "locks" / f"{name}.lock").st_ino
            proc = subprocess.Popen([SLOTCTL, *args], env=host.env(), text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                wait_for(lambda: _waits_for_lock(proc.pid, inode) or proc.poll() is not None, timeout=120)
                waited = proc.poll() is None and _waits_for_lock(proc.pid, inode) and unchanged()  # type: ignore[operator]
            except BaseException:
                proc.kill()
                proc.communicate()
                raise
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        ctx.close()
    return subprocess.CompletedProcess(list(args), proc.returncode, stdout, stderr), waited


def test_cli_passwd_waits_for_the_slot_lock_and_keeps_a_suspended_slot_locked(host: SlotHost) -> None:
    name, password = _create(host, "small")
    try:
        ctx = host.ctx()
        try:
            operations.suspend(ctx, name, "chargeback", actor="tests")
        finally:
            ctx.close()
        before = _shadow_hash(name)
        out, waited = _run_while_locked(host, name, "--json", "slot", "passwd", name)
        assert waited, "slot passwd did not wait for the slot lock"
        assert out.returncode == 0, out.stderr
        new_password = json.loads(out.stdout)["password"]
        assert new_password != password and _shadow_hash(name) != before
        assert loginstate.login_state(name).suspended  # still locked and expired
        assert not su_password(name, new_password)
    finally:
        _remove(host, name)


def test_cli_remove_waits_for_the_slot_lock(host: SlotHost) -> None:
    name, _password = _create(host, "small")
    try:
        dry = host.slotctl("--json", "slot", "remove", name, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert json.loads(dry.stdout)["dry_run"] is True and accounts.lookup_user(name) is not None

        out, waited = _run_while_locked(host, name, "--json", "slot", "remove", name)
        assert waited, "slot remove did not wait for the slot lock"
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["removed"] == name
        assert accounts.lookup_user(name) is None and not _in_store(host, name)
        assert not (host.config.state_dir / "locks" / f"{name}.lock").exists()
    finally:
        _remove(host, name)


def test_cli_remove_and_passwd_of_no_slot_are_refused_without_a_lock_file(host: SlotHost) -> None:
    names = [new_name(PREFIX), new_name(PREFIX), "daemon"]
    for command, name in zip(["remove", "passwd", "remove"], names, strict=True):
        out = host.slotctl("slot", command, name)
        assert out.returncode == 1 and f"no slot named {name!r}" in out.stderr, out.stderr
    assert accounts.lookup_user("daemon") is not None
    locks = host.config.state_dir / "locks"
    assert not any((locks / f"{n}.lock").exists() for n in names)


# --- a full slot can still be upgraded and terminated ----------------------------------------------


@pytest.mark.parametrize("then", ["upgrade", "terminate"])
def test_a_slot_over_its_quota_can_be_upgraded_and_terminated(host: SlotHost, then: str) -> None:
    """Found by schemathesis: a slot created with a quota below what a fresh home holds (1K) is
    over its btrfs limit at once, and changing that limit failed ("Disk quota exceeded"): the slot
    could neither get a plan with room nor be terminated (the API answered 500)."""
    name = new_name(PREFIX)
    ctx = host.ctx()
    try:
        out = operations.create_slot(ctx, name, f"{name}@example.com", "DE", plan="small", quota="1K")
        assert isinstance(out, Created)
        home = Path(out.record.home)
        usage = ctx.quota.usage(name, home)
        assert usage.limit_bytes == 1024
        if then == "upgrade":
            operations.change_plan(ctx, name, "large")
            assert ctx.quota.usage(name, home).limit_bytes == 256 << 20
        operations.remove_slot(ctx, name)
        assert accounts.lookup_user(name) is None and not _in_store(host, name) and not home.exists()
    finally:
        ctx.close()
        _remove(host, name)


def test_cli_create_without_a_plan_waits_for_the_slot_lock(host: SlotHost) -> None:
    """`slot create` without --plan used to bypass the lock that every other front door takes."""
    name = new_name(PREFIX)
    try:
        out, waited = _run_while_locked(host, name, "--json", "slot", "create", name, "--email",
                                        f"{name}@example.com", "--country", "DE",
                                        unchanged=lambda: accounts.lookup_user(name) is None)
        assert waited, "slot create did not wait for the slot lock"
        assert out.returncode == 0, out.stderr
        assert accounts.lookup_user(name) is not None
    finally:
        _remove(host, name)


def test_cli_app_rotate_and_uninstall_wait_for_the_slot_lock(host: SlotHost) -> None:
    """`app rotate` and `app uninstall` used to run beside a removal or each other."""
    name, _password = _create(host, "tkpair")
    try:
        ok = host.slotctl("--json", "app", "install", name, "transmission")
        assert ok.returncode == 0, ok.stderr
        first = json.loads(ok.stdout)["password"]

        def creds_unchanged() -> bool:
            shown = host.slotctl("--json", "app", "creds", name, "transmission")
            return shown.returncode == 0 and json.loads(shown.stdout)["password"] == first

        out, waited = _run_while_locked(host, name, "--json", "app", "rotate", name, "transmission",
                                        unchanged=creds_unchanged)
        assert waited, "app rotate did not wait for the slot lock"
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["password"] != first

        out, waited = _run_while_locked(host, name, "--json", "app", "uninstall", name, "transmission",
                                        unchanged=lambda: _installed(host, name) == ["transmission"])
        assert waited, "app uninstall did not wait for the slot lock"
        assert out.returncode == 0, out.stderr
        assert _installed(host, name) == []
    finally:
        _remove(host, name)
