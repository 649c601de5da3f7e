"""``slotctl data ...``: what is held about a user, and forgetting attempt records on request."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from provisioner.cli.output import emit, json_option
from provisioner.context import Context


@click.group()
@json_option
def data() -> None:
    """The data report and the user's requests under the data-handling policy."""


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


@data.command("report")
@click.argument("username")
@json_option
def report(username: str) -> None:
    """Everything held about USERNAME: each item, its value, where it is stored, how long it is kept."""
    from provisioner.datareport import data_report

    ctx = Context()
    rep = data_report(ctx, username)

    def render(c: Console) -> None:
        kind = "slot" if rep["is_slot"] else "not a slot: login records only"
        c.print(f"data held about [bold]{username}[/bold] ({kind})", markup=True, highlight=False)
        t = Table("item", "value", "stored", "kept", show_lines=True)
        for i in rep["items"]:
            t.add_row(i["item"], _show(i["value"]), i["stored"], i["kept"])
        c.print(t)

    emit(rep, render)


@data.command("forget-attempts")
@click.option("--user", "username", required=True, metavar="NAME", help="The username as typed at login.")
@json_option
def forget_attempts(username: str) -> None:
    """Remove every failed-attempt record of NAME (the policy lets users ask for it)."""
    from provisioner.retention import forget_attempts as forget

    ctx = Context()
    n = forget(ctx, username)
    emit({"user": username, "removed": n}, lambda c: c.print(f"removed {n} attempt records of {username!r}"))
