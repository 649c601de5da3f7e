"""``slotctl support request | list | show | revoke | sync``: staff access with the tenant's consent."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from provisioner.cli.output import emit, json_option, kv_table
from provisioner.context import Context


@click.group()
@json_option
def support() -> None:
    """Support access to a slot's home, approved by the tenant, for a limited time.

    The tenant answers with ``slotwarden-me support approve|refuse ID``; the answer takes effect
    at the next support command or ``slotctl retention run`` (the timer).
    """


def _table(c: Console, grants: list[dict[str, object]]) -> None:
    t = Table("id", "slot", "staff", "state", "write", "expires", "reason")
    for g in grants:
        t.add_row(str(g["id"]), str(g["username"]), str(g["staff"]), str(g["state"]), "yes" if g["write"] else "no",
                  str(g["expires"] or "-"), str(g["reason"]))
    c.print(t)


def _rows(grants: list[object]) -> list[dict[str, object]]:
    from provisioner.support import Grant, _when

    out = []
    for g in grants:
        assert isinstance(g, Grant)
        out.append({**g.as_dict(), "expires": _when(g.expires_at)})
    return out


@support.command("request")
@click.argument("username")
@click.option("--by", "staff", required=True, metavar="STAFF", help="The staff account (in the admin group).")
@click.option("--reason", required=True, help="Why (the tenant sees it; kept in the audit).")
@click.option("--for", "duration", required=True, metavar="DURATION",
              help="How long the access lasts once approved: 30m, 2h, 1d (at most support.max_duration).")
@click.option("--write", is_flag=True, help="Ask for write access too (read-only otherwise).")
@json_option
def request_cmd(username: str, staff: str, reason: str, duration: str, write: bool) -> None:
    """Ask the tenant of USERNAME to let STAFF into the slot's home."""
    from provisioner.support import request_support

    g = request_support(Context(), username, staff, reason, duration, write)
    emit(g.as_dict(), lambda c: c.print(
        f"support request {g.id} opened: {staff} asks {'read-write' if write else 'read-only'} access to "
        f"{username} for {g.duration}s; the tenant answers with 'slotwarden-me support approve {g.id}'",
        markup=False))


@support.command("list")
@click.argument("username", required=False)
@click.option("--open", "open_only", is_flag=True, help="Only requests waiting and grants in force.")
@json_option
def list_cmd(username: str | None, open_only: bool) -> None:
    """Support requests and grants (of USERNAME)."""
    from provisioner.support import list_grants

    rows = _rows(list(list_grants(Context(), username, open_only=open_only)))
    emit(rows, lambda c: _table(c, rows))


@support.command("show")
@click.argument("grant_id", type=click.IntRange(min=1), metavar="ID")
@json_option
def show_cmd(grant_id: int) -> None:
    """One request or grant: its state, window and where STAFF finds the home."""
    from provisioner.support import get_grant

    row = _rows([get_grant(Context(), grant_id)])[0]
    emit(row, lambda c: kv_table(c, row))


@support.command("revoke")
@click.argument("grant_id", type=click.IntRange(min=1), metavar="ID")
@json_option
def revoke_cmd(grant_id: int) -> None:
    """End grant ID now (the staff's processes inside the home are stopped)."""
    from provisioner.support import revoke

    g = revoke(Context(), grant_id)
    emit(g.as_dict(), lambda c: c.print(f"support grant {g.id} revoked", markup=False))


@support.command("sync")
@json_option
def sync_cmd() -> None:
    """Apply the tenants' answers and end expired grants now."""
    from provisioner.support import sync

    expired = sync(Context())
    emit({"expired": expired}, lambda c: c.print(f"{len(expired)} grant(s) expired", markup=False))
