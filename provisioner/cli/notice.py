"""``slotctl notice takedown | list | show | close``: takedown notices about a tenant's files."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from provisioner.cli.output import emit, json_option, kv_table
from provisioner.context import Context


@click.group()
@json_option
def notice() -> None:
    """Takedown notices: the tenant is told at once; after 24 h the file is quarantined."""


def _table(c: Console, rows: list[dict[str, object]]) -> None:
    t = Table("id", "slot", "state", "ref", "deadline", "path")
    for n in rows:
        t.add_row(str(n["id"]), str(n["username"]), str(n["state"]), str(n["ref"]), str(n["deadline_utc"]),
                  str(n["path"]))
    c.print(t)


def _row(n: object) -> dict[str, object]:
    from provisioner.notices import Notice, _when

    assert isinstance(n, Notice)
    return {**n.as_dict(), "deadline_utc": _when(n.deadline)}


@notice.command("takedown")
@click.argument("username")
@click.argument("path")
@click.option("--ref", required=True, metavar="CASE", help="The case reference of the notice.")
@json_option
def takedown_cmd(username: str, path: str, ref: str) -> None:
    """Record a takedown notice for PATH (a file in USERNAME's home) and tell the tenant."""
    from provisioner.notices import takedown

    row = _row(takedown(Context(), username, path, ref))
    emit(row, lambda c: c.print(f"notice {row['id']} recorded; {row['path']} is quarantined after "
                                f"{row['deadline_utc']} if still there", markup=False))


@notice.command("list")
@click.argument("username", required=False)
@json_option
def list_cmd(username: str | None) -> None:
    """Every notice (about USERNAME)."""
    from provisioner.notices import list_notices

    rows = [_row(n) for n in list_notices(Context(), username)]
    emit(rows, lambda c: _table(c, rows))


@notice.command("show")
@click.argument("notice_id", type=click.IntRange(min=1), metavar="ID")
@json_option
def show_cmd(notice_id: int) -> None:
    """One notice: its state, deadline and, once quarantined, the file's hash."""
    from provisioner.notices import get_notice

    row = _row(get_notice(Context(), notice_id))
    emit(row, lambda c: kv_table(c, row))


@notice.command("close")
@click.argument("notice_id", type=click.IntRange(min=1), metavar="ID")
@json_option
def close_cmd(notice_id: int) -> None:
    """Close notice ID (the case is settled)."""
    from provisioner.notices import close

    row = _row(close(Context(), notice_id))
    emit(row, lambda c: c.print(f"notice {row['id']} closed", markup=False))
