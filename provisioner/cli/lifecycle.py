"""``slotctl slot change-plan | suspend | unsuspend``: the lifecycle commands of the slot group.

Registered on :data:`provisioner.cli.slot.slot` when this module is imported (cli/slot.py
imports it at its end), so the slot group stays one group.
"""

from __future__ import annotations

import click
from rich.console import Console

from provisioner.cli.output import emit, json_option
from provisioner.cli.slot import slot
from provisioner.context import Context
from provisioner.operations import change_plan, suspend, unsuspend
from provisioner.steps import Plan


def _result(plan: Plan, dry_run: bool, done: str, unchanged: str, **extra: object) -> None:
    data = {"changed": bool(plan.steps), "dry_run": dry_run, "plan": plan.title, "steps": plan.describe(), **extra}

    def render(c: Console) -> None:
        if not plan.steps:
            c.print(unchanged)
            return
        if dry_run:
            c.print(f"[bold]{plan.title}[/bold] (dry run)")
            for i, s in enumerate(plan.steps, 1):
                c.print(f"  {i}. {s.name}: {s.detail}")
        else:
            c.print(done)

    emit(data, render)


@slot.command("change-plan")
@click.argument("username")
@click.argument("plan_name", metavar="PLAN")
@click.option("--dry-run", is_flag=True, help="Print the plan, change nothing.")
@json_option
def change_plan_cmd(username: str, plan_name: str, dry_run: bool) -> None:
    """Move slot USERNAME to PLAN; the new quota applies at once.

    Refuses a plan whose quota is below the data the slot already stores (with the figures).
    """
    plan = change_plan(Context(), username, plan_name, dry_run=dry_run)
    _result(plan, dry_run, f"slot {username} is now on plan {plan_name}",
            f"slot {username} is already on plan {plan_name}", username=username, to=plan_name)


@slot.command("suspend")
@click.argument("username")
@click.option("--reason", required=True, help="Why (kept in the store and the audit log).")
@click.option("--dry-run", is_flag=True, help="Print the plan, change nothing.")
@json_option
def suspend_cmd(username: str, reason: str, dry_run: bool) -> None:
    """Suspend slot USERNAME: no login of any kind, processes and apps stopped, data kept."""
    plan = suspend(Context(), username, reason, dry_run=dry_run)
    _result(plan, dry_run, f"slot {username} suspended", f"slot {username} is already suspended",
            username=username, reason=reason)


@slot.command("unsuspend")
@click.argument("username")
@click.option("--dry-run", is_flag=True, help="Print the plan, change nothing.")
@json_option
def unsuspend_cmd(username: str, dry_run: bool) -> None:
    """Bring slot USERNAME back exactly as it was (logins, apps that were running)."""
    plan = unsuspend(Context(), username, dry_run=dry_run)
    _result(plan, dry_run, f"slot {username} unsuspended", f"slot {username} is not suspended",
            username=username)
