"""``slotctl guard ...``: the login guard's operator commands, a thin layer over provisioner.guard.

Requests go to the running guard service (serialized with the logins they
affect); when it is down, list/explain/lift/forget/purge/status work on the
store directly. ``--json`` everywhere (see provisioner.cli.output).

>>> # slotctl guard explain --user bob --ip 198.51.100.7 --json
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.text import Text

from provisioner.cli.output import emit, json_option
from provisioner.errors import BadInput
from provisioner.guard import (
    guard_config,
    guard_request,
    guard_status,
    install_guard,
    supervise_guard,
    uninstall_guard,
)

LOCAL = "local:"


def _check(user: str | None, ip: str | None) -> None:
    if ip is not None and ip.startswith(LOCAL):
        # A local origin: the caller behind su/sudo/login, as `guard list` shows it.
        name = ip[len(LOCAL):]
        if not 0 < len(name.encode("utf-8", "surrogateescape")) <= 3 * 256 + 3 or not name.isprintable():
            raise BadInput(f"--ip: {ip!r}: expected local:USER (the user who ran su, sudo or login)")
    elif ip is not None:
        try:
            ipaddress.ip_network(ip, strict=False)
        except ValueError:
            raise BadInput(f"--ip: {ip!r} is not an IP address or local:USER") from None
    # 256 bytes as typed, or up to 771 as `guard list` shows a long hostile name (escaped).
    if user is not None and not 0 < len(user.encode("utf-8", "surrogateescape")) <= 3 * 256 + 3:
        raise BadInput("--user: expected 1..771 bytes")


def _lines(*text: str) -> Any:
    """Print each string as plain text: no Rich markup, emoji codes or highlighting."""
    def render(c: Console) -> None:
        for t in text:
            c.print(Text(t), markup=False, highlight=False, emoji=False)
    return render


@click.group()
@json_option
def guard() -> None:
    """Login guard: record failed logins, lock whoever keeps failing."""


@guard.command("install")
@click.option("--service", required=True, help="PAM service file to guard (e.g. sshd, su, login).")
@click.option("--pam-dir", type=click.Path(path_type=Path, file_okay=False), default=Path("/etc/pam.d"),
              show_default=True)
@click.option("--dry-run", is_flag=True, help="Show the change, write nothing.")
@click.option("--module/--no-module", "with_module", default=True, show_default=True,
              help="Also build and copy pam_slotwarden.so into the PAM module directory.")
@click.option("--module-path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Name this built module file (absolute path) in the lines; nothing is copied.")
@click.option("--supervise/--no-supervise", default=True, show_default=True,
              help="Also keep 'guard serve' running under the host's supervisor.")
@json_option
def install_cmd(service: str, pam_dir: Path, dry_run: bool, with_module: bool, module_path: Path | None,
                supervise: bool) -> None:
    """Write the guard's PAM lines into a service file (backup kept; uninstall restores it).

    With fail_mode = open the lines skip a module PAM cannot load, so deleting
    pam_slotwarden.so by hand leaves logins working (unguarded) instead of refusing all.
    """
    from pam_hooks.config import config_path

    cfg = guard_config()
    res = install_guard(cfg, service, pam_dir, dry_run=dry_run, with_module=with_module, module_path=module_path)
    data: dict[str, Any] = {"service": res.service, "path": res.path, "changed": res.changed,
                            "backup": res.backup, "module": res.module, "diff": res.diff, "dry_run": dry_run}
    if supervise:
        data["supervisor"] = supervise_guard(config_path(), dry_run=dry_run)
    emit(data, _lines(res.diff, "(dry run: nothing written)" if dry_run else f"guard installed in {res.path}"))


@guard.command("uninstall")
@click.option("--service", required=True)
@click.option("--pam-dir", type=click.Path(path_type=Path, file_okay=False), default=Path("/etc/pam.d"),
              show_default=True)
@click.option("--dry-run", is_flag=True)
@json_option
def uninstall_cmd(service: str, pam_dir: Path, dry_run: bool) -> None:
    """Remove the guard from a service file, restoring the original byte for byte."""
    res = uninstall_guard(guard_config(), service, pam_dir, dry_run=dry_run)
    emit({"service": res.service, "path": res.path, "changed": res.changed, "diff": res.diff},
         _lines(res.diff, f"guard removed from {res.path}"))


@guard.command("pam-auth-update")
@click.option("--dir", "directory", type=click.Path(path_type=Path, file_okay=False),
              default=Path("/usr/share/pam-configs"), show_default=True)
@click.option("--enable", is_flag=True, help="Also run 'pam-auth-update --package --enable' (host-wide).")
@click.option("--disable", is_flag=True,
              help="Take the guard out of common-auth/common-account host-wide ('pam-auth-update --package --remove').")
@click.option("--dry-run", is_flag=True)
@json_option
def pam_auth_update_cmd(directory: Path, enable: bool, disable: bool, dry_run: bool) -> None:
    """Ship the Debian pam-auth-update profiles that put the guard into common-auth host-wide."""
    from pam_hooks.install import PROFILES, install_module, write_pam_auth_update_profiles
    from provisioner.runner import run

    if enable and disable:
        raise BadInput("give --enable or --disable, not both")
    if disable:
        data: dict[str, Any] = {"profiles": list(PROFILES), "enabled": False, "disabled": not dry_run,
                                "dry_run": dry_run}
        if not dry_run:
            run(["pam-auth-update", "--package", "--remove", *PROFILES])
        emit(data, _lines("(dry run: nothing changed)" if dry_run else
                          f"guard profiles {' '.join(PROFILES)} disabled host-wide"))
        return
    cfg = guard_config()
    paths = write_pam_auth_update_profiles(cfg, directory, dry_run=dry_run)
    data = {"profiles": paths, "enabled": False, "dry_run": dry_run}
    if enable and not dry_run:
        install_module_path = install_module()
        run(["pam-auth-update", "--package", "--enable", *PROFILES])
        data.update(enabled=True, module=str(install_module_path))
    hint = "" if data["enabled"] else f"enable with: pam-auth-update --enable {' '.join(PROFILES)}"
    emit(data, _lines(*paths, hint))


@guard.command("supervise")
@click.option("--dry-run", is_flag=True)
@json_option
def supervise_cmd(dry_run: bool) -> None:
    """Keep 'guard serve' running under the host's supervisor (supervisord or systemd)."""
    from pam_hooks.config import config_path

    guard_config()  # refuse a bad config before the supervisor restarts a failing service
    data = supervise_guard(config_path(), dry_run=dry_run)
    emit(data, _lines(f"{data['program']} under {data['supervisor']}"))


@guard.command("serve")
@click.option("-v", "--verbose", is_flag=True)
def serve_cmd(verbose: bool) -> None:
    """Run the guard service in the foreground (for a supervisor)."""
    from pam_hooks.service import GuardService, setup_logging

    cfg = guard_config()
    setup_logging(verbose, cfg.syslog_socket)
    try:
        GuardService(cfg).run()
    except RuntimeError as exc:
        from provisioner.errors import SlotError

        raise SlotError(str(exc)) from None


@guard.command("status")
@json_option
def status_cmd() -> None:
    """Is the guard deciding: one line first ("up", "degraded ...", or "down" with exit 1), then counts and locks."""
    d = guard_status(guard_config())

    def render(c: Console) -> None:
        svc = d["service"]
        for line in (f"guard: {d['state']} (pid {svc['pid']}, up {svc['uptime']}s) on {svc['socket']}",
                     *(f"degraded: {note}" for note in svc.get("degraded", [])),
                     f"records: {d['attempts']} attempts, {d['pairs']} user/address pairs, {d['pending']} pending"):
            c.print(Text(line), markup=False, highlight=False, emoji=False)
        for lk in d["active_locks"]:
            c.print(Text(f"locked {lk['kind']:<4} {lk['key']:<40} until {lk['locked_until']} (level {lk['level']})"),
                    markup=False, highlight=False, emoji=False)
        for net in d["blocks"]:
            c.print(Text(f"blackhole route: {net}"), markup=False, highlight=False, emoji=False)

    emit(d, render)


@guard.command("stats")
@json_option
def stats_cmd() -> None:
    """The service's counters (decisions, refusals, accept errors, store recoveries, locks), e.g. for alerting."""
    d = guard_request(guard_config(), "stats", direct_ok=False)
    emit(d, _lines(*(f"{k}: {v}" for k, v in sorted(d.items()))))


@guard.command("list")
@click.option("--user", "user", default=None, help="Username as typed.")
@click.option("--ip", "ip", default=None)
@click.option("--locked", is_flag=True, help="Only records that are locked now.")
@json_option
def list_cmd(user: str | None, ip: str | None, locked: bool) -> None:
    """Attempt records: username as typed, address, service, count, last attempt, lock."""
    _check(user, ip)
    rows = guard_request(guard_config(), "list", user=user, ip=ip, locked=locked)

    def render(c: Console) -> None:
        from rich.table import Table

        t = Table("username", "ip", "service", "count", "refused", "last attempt", "locked until", "rule")
        for r in rows:
            # Text cells: a name like "[/x]" or "[link=...]" is shown, never parsed as markup.
            t.add_row(*(Text(str(v)) for v in (r["username"], r["ip"] or "-", r["service"], r["count"],
                                                r["refused"], r["last_attempt"], r["locked_until"] or "-",
                                                r["rule"] or "-")))
        c.print(t)

    emit(rows, render)


@guard.command("explain")
@click.option("--user", "user", required=True)
@click.option("--ip", "ip", required=True, help="An address, or local:USER for su/sudo/login run by USER.")
@json_option
def explain_cmd(user: str, ip: str) -> None:
    """Would USER from IP (or local:CALLER) be let through now; which rule refuses, until when."""
    _check(user, ip)
    d = guard_request(guard_config(), "explain", user=user, ip=ip)
    who = f"{d['username']} from {d['ip'] or '-'}"  # as recorded: escaped, printable
    if d["allowed"]:
        head = f"allowed: {who}" + (f" ({d['note']})" if d["note"] else "")
    else:
        head = f"refused: {who} by the {d['rule']} rule" + (f" until {d['until']}" if d["until"] else "")
    counts = [f"  {k:<4} {c['count']}/{c['limit']} failures in the window" for k, c in d["counts"].items()]
    emit(d, _lines(head, *counts))


@guard.command("lift")
@click.option("--user", "user", default=None)
@click.option("--ip", "ip", default=None)
@json_option
def lift_cmd(user: str | None, ip: str | None) -> None:
    """End a lock for a user, an address, or the pair (works for names that no longer exist)."""
    if user is None and ip is None:
        raise BadInput("give --user, --ip or both")
    _check(user, ip)
    d = guard_request(guard_config(), "lift", user=user, ip=ip)
    emit(d, _lines(f"{d['lifted']} lock(s) lifted"))


@guard.command("forget")
@click.option("--user", "user", default=None)
@click.option("--ip", "ip", default=None)
@json_option
def forget_cmd(user: str | None, ip: str | None) -> None:
    """Delete the attempt records of a user or an address (on request)."""
    if (user is None) == (ip is None):
        raise BadInput("give exactly one of --user or --ip")
    _check(user, ip)
    d = guard_request(guard_config(), "forget", user=user, ip=ip)
    emit(d, _lines(f"{d['deleted']} record(s) deleted"))


@guard.command("purge")
@json_option
def purge_cmd() -> None:
    """Drop records older than the retention (the service also does this by itself)."""
    d = guard_request(guard_config(), "purge")
    emit(d, _lines(f"{d['deleted']} record(s) purged"))
