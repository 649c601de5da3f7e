"""``slotctl db``: the store's schema version, its upgrade, and moving it to another store."""

from __future__ import annotations

import click
from rich.console import Console

from provisioner.cli.output import emit, json_option


@click.group()
@json_option
def db() -> None:
    """The state store: schema version, upgrade, copy (SQLite into the fleet's PostgreSQL, say).

    The store is [store] url in the configuration (default: SQLite in the state dir).
    """


@db.command("status")
@json_option
def status() -> None:
    """Show the store, its schema version and the migrations applied."""
    from provisioner.config import load_config
    from provisioner.db.migrations import LATEST, applied, current_version, describe
    from provisioner.store import open_database

    database = open_database(load_config())
    try:
        version = current_version(database)
        data = {"store": database.where, "engine": database.dialect, "version": version, "latest": LATEST,
                "migrations": applied(database)}
    finally:
        database.close()

    def render(c: Console) -> None:
        c.print(f"store {data['store']} ({data['engine']}): schema version {describe(version)}, "
                f"this slotwarden's {LATEST}", markup=False)
        if version is not None and version < LATEST:
            c.print("run 'slotctl db upgrade' (after a backup)")

    emit(data, render)


@db.command("upgrade")
@json_option
def upgrade_cmd() -> None:
    """Bring the store to this slotwarden's schema version, keeping every row (one transaction).

    A store from a newer slotwarden is refused. Also run by 'slotctl host init' and by the
    package on upgrade; safe to run again (nothing to do).
    """
    from provisioner.config import load_config
    from provisioner.db.migrations import describe
    from provisioner.store import upgrade_store

    where, before, after = upgrade_store(load_config())

    def render(c: Console) -> None:
        if before == after:
            c.print(f"store {where}: schema version {after}, nothing to do", markup=False)
        else:
            c.print(f"store {where}: schema version {describe(before)} -> {after}", markup=False)

    emit({"store": where, "before": before, "after": after, "changed": before != after}, render)


@db.command("copy")
@click.option("--to", "target", required=True, metavar="URL",
              help="The empty store to fill: postgresql://user@host:port/db or sqlite:///path.")
@click.option("--password-file", type=click.Path(dir_okay=False), metavar="FILE",
              help="Root-only file (0600) holding the target's password (never the URL).")
@json_option
def copy_cmd(target: str, password_file: str | None) -> None:
    """Copy every row of this host's store into an empty store at URL (schema made there first).

    Stop the API, the Hub and timers first so nothing writes meanwhile; then point [store] url
    at the target. The source is left as it was; counts per table are checked after the copy.
    """
    from pathlib import Path

    from provisioner.config import load_config
    from provisioner.db.copy import copy_store
    from provisioner.db.database import connect
    from provisioner.store import open_database

    src = open_database(load_config())
    try:
        dst = connect(target, Path(password_file) if password_file else None)
        try:
            copied = copy_store(src, dst)
            where = dst.where
        finally:
            dst.close()
    finally:
        src.close()

    def render(c: Console) -> None:
        c.print(f"copied {sum(copied.values())} rows of {len(copied)} tables into {where}", markup=False)
        for table, n in copied.items():
            c.print(f"  {table}: {n}", markup=False)

    emit({"to": where, "tables": copied}, render)
