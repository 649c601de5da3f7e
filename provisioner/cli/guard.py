"""``slotctl guard ...``: the login guard's operator commands (a thin layer over pam_hooks).

Every command takes ``--json``. Requests go to the running guard service
(serialized with the logins they affect); when it is down, list/explain/lift/
forget/purge/status work on the store directly.

>>> # slotctl guard explain --user bob --ip 198.51.100.7 --json
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pam_hooks import install as pam_install
from pam_hooks.client import GuardRequestError, GuardUnavailable, admin
from pam_hooks.config import GuardConfig, GuardConfigError, config_path, load_guard_config

SUPERVISOR_DIR = Path("/etc/supervisor/conf.d")
PROGRAM = "slotwarden-guard"


def _fail(msg: str, code: int) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


def _cfg() -> GuardConfig:
    try:
        return load_guard_config()
    except GuardConfigError as exc:
        _fail(str(exc), 2)
        raise  # unreachable


def _emit(data: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        render(data)


def _call(cfg: GuardConfig, op: str, **kw: Any) -> Any:
    try:
        return admin(cfg, op, **kw)
    except (GuardRequestError, GuardUnavailable, OSError) as exc:
        _fail(str(exc), 1)


def _check_ip(ip: str | None) -> None:
    if ip is None:
        return
    try:
        ipaddress.ip_network(ip, strict=False)
    except ValueError:
        _fail(f"--ip: {ip!r} is not an IP address", 2)


def _check_user(user: str | None) -> None:
    if user is not None and (not user or len(user.encode("utf-8", "surrogateescape")) > 256):
        _fail("--user: expected 1..256 bytes", 2)


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@click.group()
def guard() -> None:
    """Login guard: record failed logins, lock whoever keeps failing."""


def supervisor_program(cfg_file: Path) -> str:
    """The supervisord program section that keeps ``guard serve`` running."""
    return (
        f"[program:{PROGRAM}]\n"
        f"command={sys.executable} -m pam_hooks serve --config {cfg_file}\n"
        f"directory={Path(__file__).resolve().parents[2]}\n"
        "autostart=true\nautorestart=true\nstartsecs=1\nstopsignal=TERM\nuser=root\n"
        "redirect_stderr=true\nstdout_logfile=/var/log/slotwarden-guard.log\n"
        "stdout_logfile_maxbytes=10MB\nstdout_logfile_backups=3\n"
    )


def _supervise(conf_dir: Path, dry_run: bool) -> dict[str, Any]:
    conf = conf_dir / f"{PROGRAM}.conf"
    body = supervisor_program(config_path())
    out: dict[str, Any] = {"supervisor_conf": str(conf), "changed": False}
    if dry_run or (conf.exists() and conf.read_text() == body):
        return out
    conf_dir.mkdir(parents=True, exist_ok=True)
    conf.write_text(body)
    out["changed"] = True
    # supervisord may not run yet (host init starts it); then it picks the file up at start.
    r = subprocess.run(["supervisorctl", "update"], capture_output=True, text=True)
    out["supervisorctl"] = (r.stdout + r.stderr).strip()
    return out


@guard.command("install")
@click.option("--service", required=True, help="PAM service file to guard (e.g. sshd, su, login).")
@click.option("--pam-dir", type=click.Path(path_type=Path, file_okay=False), default=Path("/etc/pam.d"),
              show_default=True)
@click.option("--dry-run", is_flag=True, help="Show the change, write nothing.")
@click.option("--module/--no-module", "with_module", default=True, show_default=True,
              help="Also build and copy pam_slotwarden.so into the PAM module directory.")
@click.option("--supervise/--no-supervise", default=True, show_default=True,
              help="Put 'guard serve' under supervisord.")
@click.option("--supervisor-dir", type=click.Path(path_type=Path, file_okay=False), default=SUPERVISOR_DIR,
              show_default=True)
@json_option
def install_cmd(service: str, pam_dir: Path, dry_run: bool, with_module: bool, supervise: bool,
                supervisor_dir: Path, as_json: bool) -> None:
    """Write the guard's PAM lines into a service file (backup kept; uninstall restores it)."""
    cfg = _cfg()
    try:
        res = pam_install.install(cfg, service, pam_dir, dry_run=dry_run, with_module=with_module)
    except pam_install.InstallError as exc:
        _fail(str(exc), 1)
        return
    data: dict[str, Any] = {"service": res.service, "path": res.path, "changed": res.changed,
                            "backup": res.backup, "module": res.module, "diff": res.diff, "dry_run": dry_run}
    if supervise:
        data["supervisor"] = _supervise(supervisor_dir, dry_run)
    _emit(data, as_json, lambda d: click.echo(d["diff"] + ("(dry run: nothing written)" if dry_run
                                                           else f"guard installed in {d['path']}")))


@guard.command("uninstall")
@click.option("--service", required=True)
@click.option("--pam-dir", type=click.Path(path_type=Path, file_okay=False), default=Path("/etc/pam.d"),
              show_default=True)
@click.option("--dry-run", is_flag=True)
@json_option
def uninstall_cmd(service: str, pam_dir: Path, dry_run: bool, as_json: bool) -> None:
    """Remove the guard from a service file, restoring the original byte for byte."""
    cfg = _cfg()
    try:
        res = pam_install.uninstall(cfg, service, pam_dir, dry_run=dry_run)
    except pam_install.InstallError as exc:
        _fail(str(exc), 1)
        return
    _emit({"service": res.service, "path": res.path, "changed": res.changed, "diff": res.diff}, as_json,
          lambda d: click.echo(d["diff"] + f"guard removed from {d['path']}"))


@guard.command("serve")
@click.option("-v", "--verbose", is_flag=True)
def serve_cmd(verbose: bool) -> None:
    """Run the guard service in the foreground (for a supervisor)."""
    from pam_hooks.service import GuardService, setup_logging

    cfg = _cfg()
    setup_logging(verbose)
    try:
        GuardService(cfg).run()
    except RuntimeError as exc:
        _fail(str(exc), 1)


@guard.command("status")
@json_option
def status_cmd(as_json: bool) -> None:
    """Service health, counts and active locks."""
    data = _call(_cfg(), "status")

    def render(d: dict[str, Any]) -> None:
        svc = d["service"]
        state = f"running (pid {svc['pid']}, up {svc['uptime']}s)" if svc.get("running") else "NOT RUNNING"
        click.echo(f"guard service: {state} on {svc['socket']}")
        click.echo(f"records: {d['attempts']} attempts, {d['pairs']} user/address pairs, {d['pending']} pending")
        for lk in d["active_locks"]:
            click.echo(f"locked {lk['kind']:<4} {lk['key']:<40} until {lk['locked_until']} (level {lk['level']})")
        for net in d["blocks"]:
            click.echo(f"blackhole route: {net}")

    _emit(data, as_json, render)


@guard.command("list")
@click.option("--user", "user", default=None, help="Username as typed.")
@click.option("--ip", "ip", default=None)
@click.option("--locked", is_flag=True, help="Only records that are locked now.")
@json_option
def list_cmd(user: str | None, ip: str | None, locked: bool, as_json: bool) -> None:
    """Attempt records: username as typed, address, service, count, last attempt, lock."""
    _check_user(user)
    _check_ip(ip)
    data = _call(_cfg(), "list", user=user, ip=ip, locked=locked)

    def render(rows: list[dict[str, Any]]) -> None:
        from rich.console import Console
        from rich.table import Table

        t = Table("username", "ip", "service", "count", "refused", "last attempt", "locked until", "rule")
        for r in rows:
            t.add_row(r["username"], r["ip"] or "-", r["service"], str(r["count"]), str(r["refused"]),
                      r["last_attempt"], r["locked_until"] or "-", r["rule"] or "-")
        Console().print(t)

    _emit(data, as_json, render)


@guard.command("explain")
@click.option("--user", "user", required=True)
@click.option("--ip", "ip", required=True)
@json_option
def explain_cmd(user: str, ip: str, as_json: bool) -> None:
    """Would USER from IP be let through now; which rule refuses, until when."""
    _check_user(user)
    _check_ip(ip)
    data = _call(_cfg(), "explain", user=user, ip=ip)

    def render(d: dict[str, Any]) -> None:
        if d["allowed"]:
            click.echo(f"allowed: {user} from {ip}" + (f" ({d['note']})" if d["note"] else ""))
        else:
            until = f" until {d['until']}" if d["until"] else ""
            click.echo(f"refused: {user} from {ip} by the {d['rule']} rule{until}")
        for kind, c in d["counts"].items():
            click.echo(f"  {kind:<4} {c['count']}/{c['limit']} failures in the window")

    _emit(data, as_json, render)


@guard.command("lift")
@click.option("--user", "user", default=None)
@click.option("--ip", "ip", default=None)
@json_option
def lift_cmd(user: str | None, ip: str | None, as_json: bool) -> None:
    """End a lock for a user, an address, or the pair (works for names that no longer exist)."""
    if user is None and ip is None:
        _fail("give --user, --ip or both", 2)
    _check_user(user)
    _check_ip(ip)
    data = _call(_cfg(), "lift", user=user, ip=ip)
    _emit(data, as_json, lambda d: click.echo(f"{d['lifted']} lock(s) lifted"))


@guard.command("forget")
@click.option("--user", "user", default=None)
@click.option("--ip", "ip", default=None)
@json_option
def forget_cmd(user: str | None, ip: str | None, as_json: bool) -> None:
    """Delete the attempt records of a user or an address (on request)."""
    if (user is None) == (ip is None):
        _fail("give exactly one of --user or --ip", 2)
    _check_user(user)
    _check_ip(ip)
    data = _call(_cfg(), "forget", user=user, ip=ip)
    _emit(data, as_json, lambda d: click.echo(f"{d['deleted']} record(s) deleted"))


@guard.command("purge")
@json_option
def purge_cmd(as_json: bool) -> None:
    """Drop records older than the retention (the service also does this by itself)."""
    data = _call(_cfg(), "purge")
    _emit(data, as_json, lambda d: click.echo(f"{d['deleted']} record(s) purged"))


if __name__ == "__main__":
    os.environ.setdefault("COLUMNS", "160")
    guard()
