"""Failed installs are undone completely and say why in one line; slot create/remove with apps."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner import steps as plan_mod
from provisioner.apps.registry import listening_ports
from provisioner.errors import SlotError, StepFailed
from provisioner.operations import install_app, uninstall_app
from tests.system.fixtures.apps import AppLab, make_lab
from tests.system.fixtures.processes import wait_for

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def lab() -> Iterator[AppLab]:
    if os.geteuid() != 0:
        pytest.fail("system tests run as root")
    yield from make_lab(20200, 20299)


def _leftovers(lab: AppLab, username: str) -> dict[str, object]:
    db = sqlite3.connect(lab.root / "state" / "slotwarden.db")
    try:
        rows = {t: db.execute(f"SELECT count(*) FROM {t} WHERE username = ?", (username,)).fetchone()[0]
                for t in ("app_installs", "app_ports", "app_credentials")}
    finally:
        db.close()
    programs = sorted(p.name for p in (lab.root / "state" / "supervisor" / "programs").glob(f"*@{username}.conf"))
    home = lab.host.slots_root / username
    return {**rows, "programs": programs, "apps_dir": (home / "apps").exists(),
            "sockets": (lab.root / "appsock" / username).exists(),
            "listening": sorted(p for p in listening_ports() if lab.port_min <= p <= lab.port_max)}


CLEAN = {"app_installs": 0, "app_ports": 0, "app_credentials": 0, "programs": [], "apps_dir": False,
         "sockets": False, "listening": []}


def test_port_range_exhausted(lab: AppLab) -> None:
    name = lab.new_slot()
    # Transmission needs two ports (RPC and peer); a one-port range cannot hold it.
    ctx = lab.context(port_min=str(lab.port_min + 50), port_max=str(lab.port_min + 50))
    with pytest.raises(StepFailed) as err:
        install_app(ctx, name, "transmission")
    assert err.value.step == "app-ports" and "no free port left" in str(err.value)
    assert not err.value.undo_errors
    assert _leftovers(lab, name) == CLEAN


@pytest.mark.parametrize(("app", "toml", "message"), [
    ("jupyterlab", "", "jupyterlab is not installed in"),
    ("transmission", '[apps.transmission]\ndaemon = "/nonexistent/transmission-daemon"\n',
     "transmission is not installed on this host"),
    ("wordpress", '[apps.wordpress]\nmysql_socket = "/nonexistent/mysqld.sock"\n', "MariaDB is not running"),
])
def test_package_or_service_missing(lab: AppLab, tmp_path: Path, app: str, toml: str, message: str) -> None:
    name = lab.new_slot()
    ctx = lab.context(shared_dir=f'"{tmp_path}"')
    if toml:
        lab.extra_toml, saved = toml, lab.extra_toml
        try:
            ctx = lab.context()
        finally:
            lab.extra_toml = saved
    with pytest.raises(StepFailed) as err:
        install_app(ctx, name, app)
    assert err.value.step == "app-check" and message in str(err.value)
    assert len(str(err.value).splitlines()) == 1
    assert _leftovers(lab, name) == CLEAN


@pytest.mark.parametrize(("app", "step"), [
    *(("transmission", s) for s in ("app-setup", "app-programs", "app-ready", "app-activate")),
    ("jupyterlab", "app-activate"),  # a socket app: its socket directory goes with the rest
])
def test_failure_late_in_the_install_is_undone(lab: AppLab, app: str, step: str) -> None:
    name = lab.new_slot()
    plan_mod.fail_at_step = step
    try:
        with pytest.raises(StepFailed) as err:
            install_app(lab.context(), name, app)
    finally:
        plan_mod.fail_at_step = None
    assert err.value.step == step and not err.value.undo_errors
    assert _leftovers(lab, name) == CLEAN
    install_app(lab.context(), name, app)  # and the slot can install it afterwards
    uninstall_app(lab.context(), name, app)
    assert _leftovers(lab, name) == CLEAN


def test_cli_failure_is_one_line(lab: AppLab) -> None:
    name = lab.new_slot()
    lab.config_path.write_text(lab.toml(port_min=str(lab.port_min + 60), port_max=str(lab.port_min + 60)))
    try:
        out = lab.slotctl("app", "install", name, "transmission")
    finally:
        lab.config_path.write_text(lab.toml())
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("slotctl: error: step 'app-ports' failed: no free port left")
    assert _leftovers(lab, name) == CLEAN

    bad = lab.slotctl("app", "install", name, "nosuchapp")
    assert bad.returncode == 2 and "no app named 'nosuchapp'" in bad.stderr
    again = lab.slotctl("app", "uninstall", name, "transmission")
    assert again.returncode == 1 and "not installed" in again.stderr


def test_slot_create_with_apps_and_remove(lab: AppLab) -> None:
    name = "ta" + os.urandom(4).hex()
    lab.slots.append(name)
    out = lab.slotctl("slot", "create", name, "--email", f"{name}@example.com", "--country", "DE",
                      "--app", "transmission", "--app", "jupyterlab", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert sorted(a["app"] for a in data["apps"]) == ["jupyterlab", "transmission"]
    urls = {a["app"]: a["url"] for a in data["apps"] if a["password"]}
    assert urls["transmission"].startswith("http://127.0.0.1:")
    assert urls["jupyterlab"].endswith(f"/apps/{name}/jupyterlab/lab")  # its socket, through the front door
    status = json.loads(lab.slotctl("app", "status", name, "--json").stdout)
    assert all(r["running"] for r in status) and len(status) == 2
    pids = [r["pid"] for r in status]

    out = lab.slotctl("slot", "remove", name, "--json")
    assert out.returncode == 0, out.stderr
    assert [s["step"] for s in json.loads(out.stdout)["steps"] if s["step"].startswith("app-")] == \
        ["app-jupyterlab", "app-transmission"]
    assert not any(Path(f"/proc/{p}").exists() for p in pids)
    assert _leftovers(lab, name) == {**CLEAN, "apps_dir": False}
    assert not (lab.host.slots_root / name).exists()


def test_slot_create_with_a_failing_app_creates_nothing(lab: AppLab) -> None:
    name = "ta" + os.urandom(4).hex()
    lab.slots.append(name)
    lab.config_path.write_text(lab.toml(port_min=str(lab.port_min + 70), port_max=str(lab.port_min + 70)))
    try:
        out = lab.slotctl("slot", "create", name, "--email", f"{name}@example.com", "--country", "DE",
                          "--app", "transmission")
    finally:
        lab.config_path.write_text(lab.toml())
    assert out.returncode == 1 and "no free port left" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert lab.context().store.get_slot(name) is None
    assert not (lab.host.slots_root / name).exists()
    assert _leftovers(lab, name) == CLEAN


def test_reserved_names_and_unknown_slot(lab: AppLab) -> None:
    out = lab.slotctl("slot", "create", "jupyterlab", "--email", "x@example.com", "--country", "DE")
    assert out.returncode == 2 and "reserved" in out.stderr
    with pytest.raises(SlotError, match="no active slot"):
        install_app(lab.context(), "tanobody", "transmission")


def test_twenty_concurrent_installs_never_collide(lab: AppLab) -> None:
    import subprocess

    names = [lab.new_slot() for _ in range(20)]
    env = {**os.environ, "SLOTWARDEN_CONFIG": str(lab.config_path)}
    procs = [subprocess.Popen([str(lab_slotctl()), "app", "install", n, "transmission", "--json"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in names]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _o, e in outs if e]
    ports = [int(json.loads(o)["url"].split(":")[2].split("/")[0]) for o, _e in outs]
    assert len(set(ports)) == 20
    registered = {p for n in names for p in _ports(lab, n)}
    assert len(registered) == 40  # RPC and peer port for each, all distinct
    # The RPC port answers before install returns; the peer port may open a moment later.
    wait_for(lambda: registered <= set(listening_ports()), what="every registered port to be listened on")
    for n in names:
        uninstall_app(lab.context(), n, "transmission")
    assert all(_leftovers(lab, n) == CLEAN for n in names)


def lab_slotctl() -> Path:
    from tests.system.fixtures.hosts import SLOTCTL

    return SLOTCTL


def _ports(lab: AppLab, username: str) -> list[int]:
    db = sqlite3.connect(lab.root / "state" / "slotwarden.db")
    try:
        return [r[0] for r in db.execute("SELECT port FROM app_ports WHERE username = ?", (username,))]
    finally:
        db.close()


def test_suspend_stops_apps_unsuspend_brings_them_back_retention_keeps_creds(lab: AppLab) -> None:
    from provisioner.apps import app_status
    from provisioner.datareport import data_report
    from provisioner.operations import suspend, unsuspend
    from provisioner.retention import run_retention

    name = lab.new_slot()
    creds = install_app(lab.context(), name, "transmission")
    suspend(lab.context(), name, "unpaid")
    [row] = app_status(lab.context(), name)
    assert not row["running"] and row["state"] == "installed"
    unsuspend(lab.context(), name)
    [row] = app_status(lab.context(), name)
    assert row["running"]

    results = run_retention(lab.context())
    assert all(f"{name}/transmission" not in r.removed for r in results)
    from provisioner.apps import app_credentials

    assert app_credentials(lab.context(), name, "transmission").password == creds.password
    report = json.dumps(data_report(lab.context(), name))
    assert "transmission" in report and creds.password not in report
    uninstall_app(lab.context(), name, "transmission")
    assert _leftovers(lab, name) == CLEAN


def test_installing_twice_is_refused_and_keeps_the_first(lab: AppLab) -> None:
    from provisioner.apps import app_credentials, app_status

    name = lab.new_slot()
    creds = install_app(lab.context(), name, "transmission")
    with pytest.raises(SlotError, match="already installed"):
        install_app(lab.context(), name, "transmission")
    out = lab.slotctl("app", "install", name, "transmission")
    assert out.returncode == 1 and "already installed" in out.stderr
    [row] = app_status(lab.context(), name)
    assert row["running"] and row["state"] == "installed"
    assert app_credentials(lab.context(), name, "transmission").password == creds.password
    uninstall_app(lab.context(), name, "transmission")
    assert _leftovers(lab, name) == CLEAN
