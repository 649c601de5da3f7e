"""``slotctl api ...``: serve the provisioning API and manage its bearer tokens."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from provisioner.api.server import DEFAULT_LISTEN, serve
from provisioner.api.tokens import ApiTokens
from provisioner.cli.output import emit, json_option
from provisioner.context import Context


@click.group()
@json_option
def api() -> None:
    """The HTTP provisioning API for the billing system."""


@api.command("serve")
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, metavar="HOST:PORT",
              help="Address to listen on; anything but loopback needs --cert and --key.")
@click.option("--cert", type=click.Path(dir_okay=False, path_type=Path), help="TLS certificate (PEM).")
@click.option("--key", type=click.Path(dir_okay=False, path_type=Path), help="TLS private key (PEM).")
@click.option("--fleet", is_flag=True,
              help="Serve as the fleet controller: place new slots on the host with most room, "
                   "send every other call to the slot's host (see 'slotctl fleet').")
def serve_cmd(listen: str, cert: Path | None, key: Path | None, fleet: bool) -> None:
    """Serve the API (OpenAPI document at /openapi.json) until interrupted."""
    ctx = Context()
    if not fleet:  # a controller needs no slots filesystem of its own
        ctx.settings  # noqa: B018 - refuse to start on a host that is not initialised
    ctx.close()
    serve(ctx.config, listen, cert, key, fleet=fleet)


@api.group("token")
@json_option
def token() -> None:
    """Bearer tokens: shown once, stored hashed, revocable."""


@token.command("create")
@click.argument("name")
@json_option
def token_create(name: str) -> None:
    """Create a token NAME (e.g. the billing system's name); prints it once."""
    ctx = Context()
    value = ApiTokens(ctx.store).create(name)
    emit({"name": name, "token": value},
         lambda c: c.print(f"token {name}: {value}\n(shown once, stored hashed; send it as "
                           "'Authorization: Bearer <token>')"))


@token.command("revoke")
@click.argument("name")
@json_option
def token_revoke(name: str) -> None:
    """Revoke token NAME at once."""
    ctx = Context()
    ApiTokens(ctx.store).revoke(name)
    emit({"name": name, "revoked": True}, lambda c: c.print(f"token {name} revoked"))


@token.command("list")
@json_option
def token_list() -> None:
    """List tokens (names and dates, never the tokens)."""
    rows = [t.as_dict() for t in ApiTokens(Context().store).list()]

    def render(c: Console) -> None:
        t = Table("name", "created", "state")
        for r in rows:
            t.add_row(r["name"], time.strftime("%Y-%m-%d %H:%M", time.gmtime(r["created_at"])),
                      "active" if r["active"] else "revoked")
        c.print(t)

    emit(rows, render)
