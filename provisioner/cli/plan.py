"""``slotctl plan ...``: the plans configured in ``[plans.NAME]`` tables."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from provisioner.cli.output import emit, json_option, kv_table
from provisioner.config import load_config
from provisioner.plans import get_plan, list_plans, plan_as_dict


@click.group()
@json_option
def plan() -> None:
    """Plans sold to customers: quota, allowed apps, limits."""


@plan.command("list")
@json_option
def list_() -> None:
    """List the configured plans, smallest quota first."""
    rows = [plan_as_dict(p) for p in list_plans(load_config())]

    def render(c: Console) -> None:
        if not rows:
            c.print("no plans configured (add [plans.NAME] tables to the configuration)")
            return
        t = Table("plan", "quota", "apps", "max apps", "max processes", "description")
        for r in rows:
            t.add_row(r["name"], r["quota"], "all" if r["apps"] is None else ", ".join(r["apps"]) or "none",
                      _limit(r["max_apps"]), _limit(r["max_processes"]), r["description"])
        c.print(t)

    emit(rows, render)


@plan.command("show")
@click.argument("name")
@json_option
def show(name: str) -> None:
    """Show plan NAME."""
    data = plan_as_dict(get_plan(load_config(), name))
    emit(data, lambda c: kv_table(c, data))


def _limit(value: int | None) -> str:
    return "unlimited" if value is None else str(value)
