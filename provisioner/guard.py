"""The login guard's front door for the provisioner: install into PAM, keep the service up.

The guard itself lives in ``pam_hooks`` (stdlib only, never imports the
provisioner); this module adds what needs the provisioner: the host's process
supervisor (supervisord here, systemd elsewhere) and the exit-code contract.

>>> guard_program(Path("/etc/slotwarden/slotwarden.toml")).name
'slotwarden-guard@root'
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pam_hooks import install as pam_install
from pam_hooks.client import GuardRequestError, GuardUnavailable, admin
from pam_hooks.config import GuardConfig, GuardConfigError, load_guard_config
from provisioner.errors import BadInput, SlotError
from provisioner.supervisor import Program, supervisor_for

REPO = Path(__file__).resolve().parents[1]


def guard_config(path: Path | None = None) -> GuardConfig:
    """The ``[guard]`` section in force; a bad value is BadInput naming the key."""
    try:
        return load_guard_config(path)
    except GuardConfigError as exc:
        raise BadInput(str(exc)) from None


def guard_program(config_file: Path) -> Program:
    """``guard serve`` as a supervised program (root; restarted on crash)."""
    return Program(app="guard", user="root", cwd=str(REPO),
                   argv=[sys.executable, "-m", "pam_hooks", "serve", "--config", str(config_file)])


def supervise_guard(config_file: Path, dry_run: bool = False) -> dict[str, Any]:
    """Put the guard service under the host's supervisor and wait until it runs."""
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


def install_guard(cfg: GuardConfig, service: str, pam_dir: Path, dry_run: bool = False,
                  with_module: bool = True) -> pam_install.InstallResult:
    """Add the guard's PAM lines (and the module); InstallError becomes SlotError."""
    try:
        return pam_install.install(cfg, service, pam_dir, dry_run=dry_run, with_module=with_module)
    except pam_install.InstallError as exc:
        raise SlotError(str(exc)) from None


def uninstall_guard(cfg: GuardConfig, service: str, pam_dir: Path, dry_run: bool = False) -> pam_install.InstallResult:
    """Take the guard's PAM lines out again (byte for byte when untouched since)."""
    try:
        return pam_install.uninstall(cfg, service, pam_dir, dry_run=dry_run)
    except pam_install.InstallError as exc:
        raise SlotError(str(exc)) from None


def guard_request(cfg: GuardConfig, op: str, **args: Any) -> Any:
    """An operator request to the service (or to the store when the service is down)."""
    try:
        return admin(cfg, op, **args)
    except (GuardRequestError, GuardUnavailable, OSError) as exc:
        raise SlotError(str(exc)) from None
