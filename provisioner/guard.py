"""The login guard's front door for the provisioner: install into PAM, keep the service up.

The guard itself lives in ``pam_hooks`` (stdlib only, never imports the
provisioner); this module adds what needs the provisioner: the host's process
supervisor (supervisord here, systemd elsewhere) and the exit-code contract.

>>> guard_program(Path("/etc/slotwarden/slotwarden.toml")).name
'slotwarden-guard@root'
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import Any

from pam_hooks import install as pam_install
from pam_hooks.client import GuardRequestError, GuardUnavailable, admin
from pam_hooks.config import GuardConfig
from provisioner.errors import SlotError
from provisioner.supervisor import Program, supervisor_for

REPO = Path(__file__).resolve().parents[1]


def guard_config(path: Path | None = None) -> GuardConfig:
    """The guard's settings from the file in force, as the guard service reads them.

    Read through the one model (:meth:`provisioner.config.Config.guard_config`); a bad value is a
    ConfigError (BadInput) naming the key.
    """
    from provisioner.config import load_config

    return load_config(path).guard_config()


def guard_program(config_file: Path) -> Program:
    """``guard keep`` as a supervised program: it holds the socket and restarts ``serve`` behind it.

    So a crash or restart of the service never leaves the socket missing
    (a login waits in its backlog); supervisord restarts the keeper itself.
    """
    return Program(app="guard", user="root", cwd=str(REPO),
                   argv=[sys.executable, "-m", "pam_hooks", "keep", "--config", str(config_file)])


def supervise_guard(config_file: Path, dry_run: bool = False) -> dict[str, Any]:
    """Put the guard service under the host's supervisor and wait until it runs.

    Under systemd: the socket unit before ssh.service and the socket-activated service
    (:func:`supervise_guard_systemd`); elsewhere the supervisord program of :func:`guard_program`.
    """
    from provisioner.context import Context

    ctx = Context()
    try:
        systemd = supervisor_for(ctx).name == "systemd"
    finally:
        ctx.close()
    if systemd:
        return supervise_guard_systemd(guard_config(config_file), config_file, dry_run=dry_run)
    return supervise_program(guard_program(config_file), dry_run)


def supervise_program(program: Program, dry_run: bool = False) -> dict[str, Any]:
    """Put a root service (the guard, the Hub) under the host's supervisor and wait until it runs."""
    from provisioner.context import Context

    ctx = Context()
    try:
        backend = supervisor_for(ctx)
        out: dict[str, Any] = {"supervisor": backend.name, "program": program.name, "changed": False}
        before = backend.status(program.name) if backend.is_running() else None
        out["before"] = before.as_dict() if before else None
        if dry_run:
            out["changed"] = before is None or not before.known or before.state not in ("running", "starting")
            return out
        backend.ensure_running()
        backend.ensure_program(program)
        status = backend.wait_running(program.name)
        out["status"] = status.as_dict()
        # Up before (running, or still "starting" after a crash restart) and the same process: unchanged.
        up = before is not None and before.known and before.state in ("running", "starting")
        out["changed"] = not up or (before is not None and before.pid is not None and before.pid != status.pid)
        return out
    finally:
        ctx.close()


def supervise_guard_systemd(cfg: GuardConfig, config_file: Path, unit_dir: Path = Path("/etc/systemd/system"),
                            dry_run: bool = False) -> dict[str, Any]:
    """Under systemd: slotwarden-guard.socket (before ssh.service) and .service, enabled and started.

    The socket unit owns the socket from early boot and across restarts; the
    service gets it by socket activation. Unchanged unit files are not rewritten.
    """
    from provisioner.runner import run

    try:
        units = pam_install.systemd_units(cfg, sys.executable, str(REPO), str(config_file.resolve()))
    except pam_install.InstallError as exc:
        raise SlotError(str(exc)) from None
    changed = [name for name, text in units.items()
               if not (unit_dir / name).exists() or (unit_dir / name).read_text() != text]
    out: dict[str, Any] = {"supervisor": "systemd", "program": pam_install.UNITS[1], "changed": bool(changed),
                           "units": [str(unit_dir / n) for n in units], "dry_run": dry_run}
    if dry_run:
        return out
    for name in changed:
        tmp = unit_dir / f".{name}.tmp"
        tmp.write_text(units[name])
        tmp.chmod(0o644)
        tmp.replace(unit_dir / name)
    if changed:
        run(["systemctl", "daemon-reload"])
    run(["systemctl", "enable", "--now", *pam_install.UNITS])
    if changed:
        run(["systemctl", "restart", pam_install.UNITS[1]])  # the socket stays: no login finds it missing
    state = run(["systemctl", "is-active", pam_install.UNITS[1]], check=False).stdout.strip()
    out["status"] = {"name": pam_install.UNITS[1], "state": state, "running": state == "active"}
    return out


def install_guard(cfg: GuardConfig, service: str, pam_dir: Path, dry_run: bool = False,
                  with_module: bool = True, module_path: Path | None = None) -> pam_install.InstallResult:
    """Add the guard's PAM lines (and the module); InstallError becomes SlotError."""
    try:
        return pam_install.install(cfg, service, pam_dir, dry_run=dry_run, with_module=with_module,
                                   module_path=module_path)
    except pam_install.InstallError as exc:
        raise SlotError(str(exc)) from None


def uninstall_guard(cfg: GuardConfig, service: str, pam_dir: Path, dry_run: bool = False) -> pam_install.InstallResult:
    """Take the guard's PAM lines out again (byte for byte when untouched since)."""
    try:
        return pam_install.uninstall(cfg, service, pam_dir, dry_run=dry_run)
    except pam_install.InstallError as exc:
        raise SlotError(str(exc)) from None


def guard_request(cfg: GuardConfig, op: str, direct_ok: bool = True, **args: Any) -> Any:
    """An operator request to the service (or to the store when the service is down)."""
    try:
        return admin(cfg, op, direct_ok=direct_ok, **args)
    except (GuardRequestError, GuardUnavailable, OSError) as exc:
        raise SlotError(str(exc)) from None
    except sqlite3.DatabaseError as exc:
        raise SlotError(f"guard store {cfg.db_path} cannot be read ({exc}); the service sets a damaged "
                        "store aside when it starts") from None


def guard_status(cfg: GuardConfig) -> dict[str, Any]:
    """The service's status with ``state`` "up" or "degraded"; SlotError "guard: down ..." when it is not deciding.

    Only the service itself answers: a store on disk says nothing about whether
    logins are being decided.
    """
    try:
        d: dict[str, Any] = admin(cfg, "status", direct_ok=False)
    except GuardUnavailable as exc:
        raise SlotError(f"guard: down ({exc})") from None
    except (GuardRequestError, OSError, ValueError) as exc:
        raise SlotError(f"guard: down (the service on {cfg.socket} does not decide: {exc})") from None
    d["state"] = "degraded" if d["service"].get("degraded") else "up"
    return d
