"""Output for every command: ``--json`` (one JSON document on stdout) or text through Rich.

``--json`` is accepted on the root group and on every command, so
``slotctl --json slot show alice`` and ``slotctl slot show alice --json`` are the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])
console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(dict)
        ctx.find_root().ensure_object(dict)["json"] = True


def json_option(f: F) -> F:
    """Add ``--json`` to a command or group."""
    return click.option("--json", "json_", is_flag=True, expose_value=False, is_eager=True,
                        callback=_set_json, help="Print one JSON document on stdout.")(f)


def wants_json() -> bool:
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return False
    obj = ctx.find_root().obj
    return bool(isinstance(obj, dict) and obj.get("json"))


def emit(data: Any, render: Callable[[Console], None] | None = None) -> None:
    """Print DATA as JSON when asked, otherwise call RENDER (or pretty-print DATA)."""
    if wants_json():
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    elif render is not None:
        render(console)
    else:
        console.print(data)


def kv_table(console: Console, rows: dict[str, Any]) -> None:
    """A two-column key/value listing."""
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows.items():
        table.add_row(k, "-" if v is None else str(v))
    console.print(table)
