"""``slotctl retention run``: apply every retention rule of the data-handling policy."""

from __future__ import annotations

import click
from rich.console import Console

from provisioner.cli.output import emit, json_option


@click.group()
@json_option
def retention() -> None:
    """Retention rules, enforced by code (safe to run from cron every few minutes)."""


@retention.command("run")
@click.option("--dry-run", is_flag=True, help="Say what would be removed, remove nothing.")
@json_option
def run(dry_run: bool) -> None:
    """Apply every rule and say what each removed."""
    from provisioner.context import Context
    from provisioner.retention import run_retention

    ctx = Context()
    results = run_retention(ctx, dry_run=dry_run)

    def render(c: Console) -> None:
        verb = "would remove" if dry_run else "removed"
        for r in results:
            line = f"{r.rule}: {verb} {len(r.removed)} ({r.description})"
            if r.note:
                line += f" — {r.note}"
            c.print(line, markup=False)
            for item in r.removed:
                c.print(f"  {item}", markup=False)

    emit({"dry_run": dry_run, "rules": [r.as_dict() for r in results]}, render)
