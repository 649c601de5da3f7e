"""``slotctl hub ...``: the tenant's web portal — serve it, supervise it, give it its PAM service."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from provisioner.cli.output import emit, json_option
from provisioner.config import config_path, load_config
from provisioner.errors import SlotError
from provisioner.hub.config import hub_config


@click.group()
@json_option
def hub() -> None:
    """The Hub: tenants log in with the slot password (HTTPS, PAM, the login guard)."""


@hub.command("serve")
def serve_cmd() -> None:
    """Serve the Hub until stopped ([hub] listen, cert, key; the web process drops to [hub] user)."""
    from provisioner.hub.server import serve

    serve(load_config())


def hub_program() -> Any:
    """``hub serve`` as a supervised program (root; it drops the web process itself)."""
    from provisioner.guard import REPO
    from provisioner.supervisor import Program

    return Program(app="hub", user="root", cwd=str(REPO),
                   argv=[sys.executable, "-m", "provisioner.hub", "serve", "--config", str(config_path())])


@hub.command("supervise")
@click.option("--dry-run", is_flag=True, help="Say what would change.")
@json_option
def supervise_cmd(dry_run: bool) -> None:
    """Keep 'hub serve' running under the host's supervisor (supervisord here, systemd elsewhere)."""
    from provisioner.guard import supervise_program

    out = supervise_program(hub_program(), dry_run=dry_run)
    emit(out, lambda c: c.print(f"{out['program']}: {'changed' if out['changed'] else 'unchanged'}"))


@hub.command("pam-service")
@click.option("--pam-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("/etc/pam.d"),
              show_default=True)
@json_option
def pam_service_cmd(pam_dir: Path) -> None:
    """Write the Hub's PAM service ([hub] pam_service: common-auth/account) with the guard in it."""
    from provisioner.guard import guard_config, install_guard
    from provisioner.hub.auth import pam_service_text

    hub_cfg = hub_config(load_config())
    path = pam_dir / hub_cfg.pam_service
    created = False
    if not path.exists():
        path.write_text(pam_service_text())
        created = True
    elif "common-auth" not in path.read_text():
        raise SlotError(f"{path} exists and does not include common-auth; not touched")
    res = install_guard(guard_config(), hub_cfg.pam_service, pam_dir)
    out = {"service": hub_cfg.pam_service, "path": str(path), "created": created, "changed": created or res.changed}
    emit(out, lambda c: c.print(f"{path}: {'changed' if out['changed'] else 'unchanged'}"))


@hub.command("totp-enrol")
@click.argument("username")
@json_option
def totp_enrol_cmd(username: str) -> None:
    """Enrol a second factor for USERNAME (staff need one to log in): shows the key once, asks a code.

    The code is read from stdin (never an argument); the recovery codes are printed once.
    """
    from provisioner import accounts
    from provisioner.apps.vault import KEY_FILE_NAME, Vault
    from provisioner.context import Context
    from provisioner.errors import BadInput
    from provisioner.hub.totp import TotpStore

    if accounts.lookup_user(username) is None:
        raise BadInput(f"username: no account {username!r}")
    ctx = Context()
    totp = TotpStore(ctx.store, Vault(ctx.config.state_dir / KEY_FILE_NAME))
    e = totp.begin(username)
    click.echo(f"key for {username}: {e.secret}\n{e.uri}", err=True)
    click.echo("code from the authenticator app: ", err=True, nl=False)
    code = sys.stdin.readline().strip()
    codes = totp.confirm(username, code)
    if codes is None:
        totp.disable(username)
        raise SlotError("that code does not match; nothing enrolled")
    ctx.store.audit("slotctl", "hub.totp-enabled", None, {"account": username})
    emit({"username": username, "recovery_codes": codes},
         lambda c: c.print("recovery codes (shown once):\n" + "\n".join(codes), markup=False, highlight=False))
