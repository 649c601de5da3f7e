"""Suspend / unsuspend / change-plan for real, as root: logins through PAM (sshd, su), apps, quotas."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner import accounts, config, lifecycle_records, loginstate, operations
from provisioner import steps as plan
from provisioner.errors import SlotError, StepFailed
from provisioner.slots import Created
from tests.system.fixtures.apps import ProcessApps, port_open
from tests.system.fixtures.doors import su_from_root, su_password
from tests.system.fixtures.hosts import PLANS, SlotHost, app_ports, new_name, slot_host
from tests.system.fixtures.netns import LabNet
from tests.system.fixtures.processes import wait_for
from tests.system.fixtures.sshd import LabSshd, authorize_key, ssh_key, ssh_password

pytestmark = pytest.mark.root  # not root: the session fixture in conftest.py fails the run


@pytest.fixture(scope="module")
def host() -> Iterator[SlotHost]:
    with slot_host("lifecycle", plans=PLANS, apps=app_ports(2580, 2599)) as h:
        yield h


@pytest.fixture(scope="module")
def sshd() -> Iterator[LabSshd]:
    # Slots of this suite are named tl<hex> (new_name()): nobody else may log in.
    with LabNet("swl-") as net, LabSshd(net.host("srv", "198.51.100.1"), port=2550 + secrets.randbelow(10),
                                        pam_service=f"slotwarden-test-swl-{secrets.token_hex(3)}",
                                        extra_config="AllowUsers tl*\n") as s:
        yield s


@pytest.fixture
def apps() -> Iterator[ProcessApps]:
    control = ProcessApps(ports={})
    try:
        yield control  # passed through the Context: host.ctx(app_control=control)
    finally:
        for username, app in list(control.procs):
            control.stop(None, username, app)  # type: ignore[arg-type]


@pytest.fixture
def keydir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="swl-keys-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _create(host: SlotHost, plan_name: str | None = "small") -> tuple[str, str]:
    name = new_name()
    ctx = host.ctx()
    try:
        out = operations.create_slot(ctx, name, "owner@example.com", "DE", plan=plan_name)
    finally:
        ctx.close()
    assert isinstance(out, Created)
    return name, out.password


def _remove(host: SlotHost, name: str) -> None:
    ctx = host.ctx()
    try:
        if ctx.store.get_slot(name) is not None:
            operations.remove_slot(ctx, name)
    finally:
        ctx.close()


def _doors(sshd: LabSshd, name: str, password: str, key: Path, port: int) -> dict[str, bool]:
    """Which doors let NAME in: ssh with the password and with the key, su (asked for the password
    and from root), and whether its app answers."""
    return {"password": ssh_password(sshd.host, sshd, name, password) == 0,
            "key": ssh_key(sshd.host, sshd, name, key) == 0,
            "su": su_password(name, password), "su-root": su_from_root(name), "app": port_open(port)}


@pytest.mark.sshd
def test_suspend_refuses_every_login_stops_apps_keeps_files_and_unsuspend_restores(
    host: SlotHost, sshd: LabSshd, apps: ProcessApps, keydir: Path
) -> None:
    name, password = _create(host)
    try:
        home = Path(host.ctx().store.get_slot(name).home)  # type: ignore[union-attr]
        key = authorize_key(name, keydir)
        data = home / "data.txt"
        data.write_text("the tenant's own\n")
        os.chown(data, *(lambda a: (a.uid, a.gid))(accounts.lookup_user(name)))  # type: ignore[union-attr]
        port = 2560 + secrets.randbelow(30)
        apps.ports[name] = port
        ctx = host.ctx(app_control=apps)
        apps.start(ctx, name, "web")
        before = _doors(sshd, name, password, key, port)
        assert before == {"password": True, "key": True, "su": True, "su-root": True, "app": True}

        plan_done = operations.suspend(ctx, name, "invoice 42 unpaid")
        assert [s.name for s in plan_done.steps] == ["record", "expire", "lock", "stop-app:web", "processes", "mark"]

        after = _doors(sshd, name, password, key, port)
        assert after == {"password": False, "key": False, "su": False, "su-root": False, "app": False}
        assert accounts.pids_of(accounts.lookup_user(name).uid) == []  # type: ignore[union-attr]
        assert data.read_text() == "the tenant's own\n"
        assert (home / ".ssh" / "authorized_keys").exists()
        # The key login was refused by the PAM account phase (sshd skips the auth stack for keys).
        wait_for(lambda: f"Access denied for user {name} by PAM account configuration" in sshd.log_text())
        status = operations.slot_status(ctx, name)
        assert status["state"] == "suspended"
        assert status["suspended_reason"] == "invoice 42 unpaid"
        assert status["suspended_at"] is not None and status["plan"] == "small"
        assert [e["detail"] for e in ctx.store.audit_entries(name) if e["action"] == "slot.suspend"] == [
            {"reason": "invoice 42 unpaid"}]

        assert operations.suspend(ctx, name, "again").steps == []  # idempotent

        plan_back = operations.unsuspend(ctx, name)
        assert [s.name for s in plan_back.steps] == ["unlock", "expire", "start-app:web", "mark"]
        wait_for(lambda: port_open(port))
        again = _doors(sshd, name, password, key, port)
        assert again == before
        assert loginstate.login_state(name) == loginstate.LoginState(expire="", locked=False)
        assert operations.unsuspend(ctx, name).steps == []  # idempotent
        status = operations.slot_status(ctx, name)
        assert status["state"] == "active" and status["suspended_at"] is None and status["plan"] == "small"
        ctx.close()
    finally:
        _remove(host, name)
    assert accounts.lookup_user(name) is None


def test_suspend_stops_a_real_app_and_unsuspend_starts_it_again(host: SlotHost) -> None:
    """Transmission installed through the apps package, supervised: down while suspended, files kept."""
    from provisioner.apps import app_status

    name = new_name()
    ctx = host.ctx()
    try:
        out = operations.create_slot(ctx, name, "owner@example.com", "DE", plan="small", apps=("transmission",))
        assert isinstance(out, Created)

        def status() -> dict[str, object]:
            return {row["app"]: row for row in app_status(ctx, name)}["transmission"]

        port = status()["port"]
        assert isinstance(port, int) and status()["running"] and port_open(port)
        settings = Path(out.record.home) / "apps" / "transmission" / "config" / "settings.json"
        before = settings.read_bytes()

        steps = [s.name for s in operations.suspend(ctx, name, "unpaid").steps]
        assert "stop-app:transmission" in steps
        assert not status()["running"] and not port_open(port)
        assert settings.read_bytes() == before
        assert accounts.pids_of(out.record.uid or -1) == []

        steps = [s.name for s in operations.unsuspend(ctx, name).steps]
        assert "start-app:transmission" in steps
        assert status()["running"] and wait_for(lambda: port_open(port))
    finally:
        ctx.close()
        _remove(host, name)


def test_cli_suspend_unsuspend_su_and_password(host: SlotHost) -> None:
    name, password = _create(host, plan_name=None)
    try:
        assert su_password(name, password)
        out = host.slotctl("slot", "suspend", name, "--reason", "chargeback", "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["changed"] is True
        assert not su_password(name, password) and not su_from_root(name)
        shown = json.loads(host.slotctl("--json", "slot", "show", name).stdout)
        assert shown["state"] == "suspended" and shown["suspended_reason"] == "chargeback"
        from provisioner.datareport import data_report

        ctx = host.ctx()
        items = {i["item"]: i["value"] for i in data_report(ctx, name)["items"]}
        ctx.close()
        assert items["plan"] == "none" and items["suspension"]["reason"] == "chargeback"
        again = host.slotctl("slot", "suspend", name, "--reason", "chargeback", "--json")
        assert json.loads(again.stdout)["changed"] is False
        # A new password for a suspended slot does not unlock it.
        ctx = host.ctx()
        new_password = operations.change_password(ctx, name)
        ctx.close()
        assert not su_password(name, new_password)
        out = host.slotctl("slot", "unsuspend", name, "--json")
        assert out.returncode == 0, out.stderr
        assert su_password(name, new_password) and su_from_root(name)
        assert json.loads(host.slotctl("slot", "unsuspend", name, "--json").stdout)["changed"] is False
    finally:
        _remove(host, name)


def test_suspend_that_fails_midway_is_undone(host: SlotHost) -> None:
    name, password = _create(host)
    ctx = host.ctx()
    try:
        plan.fail_at_step = "mark"
        with pytest.raises(StepFailed):
            operations.suspend(ctx, name, "test")
        plan.fail_at_step = None
        assert loginstate.login_state(name) == loginstate.LoginState(expire="", locked=False)
        assert ctx.store.get_slot(name).state == "active"  # type: ignore[union-attr]
        life = lifecycle_records.LifecycleRecords(ctx.store).get(name)
        assert life == lifecycle_records.LifecycleRecord(name, "small")
        assert su_password(name, password)
    finally:
        plan.fail_at_step = None
        ctx.close()
        _remove(host, name)


def test_suspend_keeps_a_lock_an_operator_had_set(host: SlotHost) -> None:
    name, _password = _create(host)
    ctx = host.ctx()
    try:
        loginstate.lock_password(name)
        loginstate.set_expire(name, "2999-01-01")
        before = loginstate.login_state(name)
        operations.suspend(ctx, name, "test")
        assert loginstate.login_state(name).suspended
        operations.unsuspend(ctx, name)
        assert loginstate.login_state(name) == before
    finally:
        ctx.close()
        _remove(host, name)


def test_change_plan_applies_the_quota_and_refuses_one_below_the_data(host: SlotHost) -> None:
    name, _password = _create(host, plan_name="small")
    ctx = host.ctx()
    try:
        home = Path(ctx.store.get_slot(name).home)  # type: ignore[union-attr]
        assert ctx.quota.usage(name, home).limit_bytes == 64 << 20
        out = host.slotctl("slot", "change-plan", name, "large", "--json")
        assert out.returncode == 0, out.stderr
        assert ctx.quota.usage(name, home).limit_bytes == 256 << 20
        assert ctx.store.get_slot(name).quota_bytes == 256 << 20  # type: ignore[union-attr]
        # 100M of data as the tenant, then ask for the 64M plan.
        acct = accounts.lookup_user(name)
        assert acct is not None
        big = home / "big.bin"
        with open(big, "wb") as f:
            f.write(os.urandom(1 << 20) * 100)
        os.chown(big, acct.uid, acct.gid)
        os.sync()
        wait_for(lambda: ctx.quota.usage(name, home).used_bytes > 100 << 20)
        refused = host.slotctl("slot", "change-plan", name, "small")
        assert refused.returncode == 1
        assert "plan small" in refused.stderr and "67108864 bytes (64M)" in refused.stderr
        assert ctx.quota.usage(name, home).limit_bytes == 256 << 20  # nothing changed
        assert lifecycle_records.LifecycleRecords(ctx.store).get(name).plan == "large"  # type: ignore[union-attr]
        # Unknown plan: bad input, exit 2, names the known ones.
        unknown = host.slotctl("slot", "change-plan", name, "gold")
        assert unknown.returncode == 2 and "large, medium, small" in unknown.stderr
        assert host.slotctl("slot", "change-plan", name, "large", "--json").returncode == 0  # no-op
        big.unlink()
    finally:
        ctx.close()
        _remove(host, name)


def test_change_plan_refuses_a_plan_without_the_installed_app(host: SlotHost, apps: ProcessApps) -> None:
    name, _password = _create(host, plan_name="large")
    apps.ports[name] = 2590 + secrets.randbelow(9)
    ctx = host.ctx(app_control=apps)
    try:
        ctx.config.plans["narrow"] = config.PlanConfig(name="narrow", quota=256 << 20, apps=("other",))
        with pytest.raises(SlotError, match="does not allow the app"):
            operations.change_plan(ctx, name, "narrow")
        assert operations.change_plan(ctx, name, "medium").steps  # medium allows web
    finally:
        ctx.config.plans.pop("narrow", None)
        ctx.close()
        _remove(host, name)


def test_create_refuses_an_app_the_plan_does_not_allow(host: SlotHost) -> None:
    name = new_name()
    out = host.slotctl("slot", "create", name, "--email", "a@example.com", "--country", "DE",
                       "--plan", "medium", "--app", "transmission")
    assert out.returncode == 2 and "app 'transmission' is not part of plan medium" in out.stderr
    assert accounts.lookup_user(name) is None
    shown = host.slotctl("--json", "slot", "show", name)
    assert shown.returncode == 1


def test_remove_a_suspended_slot_leaves_no_trace(host: SlotHost) -> None:
    name, _password = _create(host)
    ctx = host.ctx()
    try:
        operations.suspend(ctx, name, "cancelled")
        operations.remove_slot(ctx, name)
        assert accounts.lookup_user(name) is None
        assert ctx.store.get_slot(name) is None
        assert lifecycle_records.LifecycleRecords(ctx.store).get(name) is None
        assert any(e["action"] == "slot.suspend" for e in ctx.store.audit_entries(name))  # audit stays
    finally:
        ctx.close()
        _remove(host, name)
