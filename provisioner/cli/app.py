"""``slotctl app ...``: the app catalog, installs, credentials and their rotation."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from provisioner.apps import catalog, settings_of
from provisioner.cli import fleet
from provisioner.cli.output import emit, json_option, kv_table
from provisioner.context import Context
from provisioner.executors import SlotChange
from provisioner.operations import app_credentials, app_status, install_app, rotate_app, uninstall_app


@click.group()
@json_option
def app() -> None:
    """Install apps into slots, with generated credentials."""


@app.command("list")
@json_option
def list_() -> None:
    """The catalog: each app, its version on this host and what it needs."""
    ctx = Context()
    settings = settings_of(ctx)
    rows = [a.describe(settings) for a in sorted(catalog().values(), key=lambda a: a.name)]

    def render(c: Console) -> None:
        t = Table("app", "version", "needs", "description")
        for r in rows:
            t.add_row(r["app"], r["version"] or "[red]not installed[/red]", ", ".join(r["needs"]), r["description"])
        c.print(t)

    emit(rows, render)


def _creds_out(data: dict[str, object], headline: str) -> None:
    def render(c: Console) -> None:
        c.print(headline)
        kv_table(c, data)

    emit(data, render)


@app.command("install")
@click.argument("username")
@click.argument("app_name", metavar="APP")
@json_option
@fleet.fleet_options
def install(username: str, app_name: str) -> None:
    """Install APP into slot USERNAME; prints where to log in and the generated credentials."""
    if fleet.requested():
        fleet.emit_outcomes(fleet.run_changes([SlotChange(username, apps=(app_name,))]))
        return
    ctx = Context()
    creds = install_app(ctx, username, app_name)
    _creds_out(creds.as_dict(), f"{creds.app} installed in slot {username}")


@app.command("uninstall")
@click.argument("username")
@click.argument("app_name", metavar="APP")
@json_option
def uninstall(username: str, app_name: str) -> None:
    """Stop APP and remove its files, port, credentials (and database) from slot USERNAME."""
    ctx = Context()
    plan = uninstall_app(ctx, username, app_name)
    emit({"uninstalled": app_name, "username": username, "steps": plan.describe()},
         lambda c: c.print(f"{app_name} uninstalled from slot {username}"))


@app.command("creds")
@click.argument("username")
@click.argument("app_name", metavar="APP")
@json_option
def creds(username: str, app_name: str) -> None:
    """Reveal the credentials of APP in slot USERNAME (the reveal is audited)."""
    ctx = Context()
    c = app_credentials(ctx, username, app_name)
    _creds_out(c.as_dict(), f"{c.app} in slot {username}")


@app.command("rotate")
@click.argument("username")
@click.argument("app_name", metavar="APP")
@json_option
def rotate(username: str, app_name: str) -> None:
    """Give APP in slot USERNAME new credentials, applied to the running app."""
    ctx = Context()
    c = rotate_app(ctx, username, app_name)
    _creds_out(c.as_dict(), f"new credentials for {c.app} in slot {username}")


@app.command("status")
@click.argument("username")
@json_option
def status(username: str) -> None:
    """Each app of slot USERNAME: running?, pid, port, since."""
    ctx = Context()
    rows = app_status(ctx, username)

    def render(c: Console) -> None:
        import time

        t = Table("app", "state", "running", "pid", "port", "since")
        for r in rows:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["since"])) if r.get("since") else "-"
            t.add_row(r["app"], r["state"], "yes" if r.get("running") else "NO", str(r.get("pid") or "-"),
                      str(r["port"]), since)
        c.print(t if rows else f"no apps in slot {username}")

    emit(rows, render)
