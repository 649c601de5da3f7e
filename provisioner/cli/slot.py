"""``slotctl slot ...`` and ``slotctl doctor``: create, show, list, remove slots; reset passwords."""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from provisioner import operations
from provisioner.cli import fleet
from provisioner.cli.output import emit, err_console, json_option, kv_table, wants_json
from provisioner.context import Context
from provisioner.doctor import enforce_quotas, find_drift
from provisioner.errors import BadInput
from provisioner.executors import SlotChange
from provisioner.names import format_size
from provisioner.operations import BatchRow, Created, Removed
from provisioner.steps import Plan


@click.group()
@json_option
def slot() -> None:
    """Create, inspect and remove slots."""


def _plan_out(plan: Plan, dry_run: bool) -> None:
    def render(c: Console) -> None:
        c.print(f"[bold]{plan.title}[/bold]{' (dry run)' if dry_run else ''}")
        for i, s in enumerate(plan.steps, 1):
            c.print(f"  {i}. {s.name}: {s.detail}")

    emit({"plan": plan.title, "dry_run": dry_run, "steps": plan.describe()}, render)


@slot.command("create")
@click.argument("username")
@click.option("--email", required=True, help="The customer's email.")
@click.option("--country", required=True, help="ISO 3166-1 alpha-2 country code (for tax).")
@click.option("--quota", metavar="SIZE", help="Disk quota, e.g. 5G [default: slots.default_quota].")
@click.option("--payment-ref", metavar="REF", help="PayPal transaction id / Coinbase payment id.")
@click.option("--app", "apps", metavar="APP", multiple=True, help="Install APP too (repeatable; slotctl app list).")
@click.option("--plan", "plan_name", metavar="PLAN", help="A plan from 'slotctl plan list' (its quota "
              "unless --quota is given too).")
@click.option("--dry-run", is_flag=True, help="Print the plan, change nothing.")
@json_option
@fleet.fleet_options
def create(username: str, email: str, country: str, quota: str | None, payment_ref: str | None,
           apps: tuple[str, ...], plan_name: str | None, dry_run: bool) -> None:
    """Create slot USERNAME; prints its generated password once (it is never stored)."""
    if fleet.requested():
        fleet.emit_outcomes(fleet.run_changes([SlotChange.parse(
            {"username": username, "email": email, "country": country, "quota": quota,
             "payment_ref": payment_ref, "strict": True})], check=dry_run), check=dry_run)
        return
    ctx = Context()
    result = operations.create_slot(ctx, username, email, country, plan=plan_name, quota=quota,
                              payment_ref=payment_ref, dry_run=dry_run, apps=apps)  # under the slot's lock
    if isinstance(result, Plan):
        _plan_out(result, True)
        return
    app_creds: list[dict[str, Any]] = []
    if apps:
        from provisioner.apps import app_credentials

        app_creds = [app_credentials(ctx, username, a).as_dict() for a in dict.fromkeys(apps)]
    _created_out(result, app_creds)


def _created_out(result: Created, app_creds: list[dict[str, Any]] | None = None) -> None:
    rec = result.record

    def render(c: Console) -> None:
        c.print(f"slot [bold]{rec.username}[/bold] created{' (resumed)' if result.resumed else ''}")
        kv_table(c, {"home": rec.home, "quota": format_size(rec.quota_bytes) if rec.quota_bytes else "none",
                     "password": result.password})
        c.print("The password is shown once and not stored; 'slotctl slot passwd' makes a new one.")
        for a in app_creds or []:
            c.print(f"app {a['app']}: {a['url']}  user {a['username']}  password {a['password']}")

    emit({**result.as_dict(), **({"apps": app_creds} if app_creds else {})}, render)


@slot.command("show")
@click.argument("username")
@json_option
def show(username: str) -> None:
    """Show slot USERNAME: store record, live disk usage, plan and suspension."""
    from provisioner.operations import slot_status

    ctx = Context()
    data = slot_status(ctx, username)
    emit(data, lambda c: kv_table(c, data))


@slot.command("list")
@json_option
def list_() -> None:
    """List every slot."""
    ctx = Context()
    rows = [r.as_dict() for r in ctx.store.list_slots()]

    def render(c: Console) -> None:
        t = Table("username", "state", "email", "country", "quota", "home")
        for r in rows:
            t.add_row(r["username"], r["state"], r["email"], r["country"],
                      format_size(r["quota_bytes"]) if r["quota_bytes"] else "none", r["home"])
        c.print(t)

    emit(rows, render)


@slot.command("remove")
@click.argument("username")
@click.option("--keep-data", is_flag=True, help="Keep the home, moved aside and owned by root.")
@click.option("--dry-run", is_flag=True, help="Print the plan, change nothing.")
@json_option
@fleet.fleet_options
def remove(username: str, keep_data: bool, dry_run: bool) -> None:
    """Remove slot USERNAME (exact name): processes, apps, home, quota, user, store rows."""
    if fleet.requested():
        fleet.emit_outcomes(fleet.run_changes([SlotChange.parse(
            {"username": username, "state": "absent", "keep_data": keep_data, "strict": True})],
            check=dry_run), check=dry_run)
        return
    ctx = Context()
    # Under the slot's lock, so it never interleaves with an API request.
    plan = operations.remove_slot(ctx, username, keep_data=keep_data, dry_run=dry_run)
    if dry_run:
        _plan_out(plan, True)
    else:
        emit({"removed": username, "keep_data": keep_data, "steps": plan.describe(), **plan.results},
             lambda c: _removed_out(c, username, plan.results))


def _removed_out(c: Console, username: str, results: dict[str, Any]) -> None:
    c.print(f"slot {escape(username)} removed")
    if "kept" in results:
        c.print(f"home kept at {escape(results['kept'])} (root only)")
    found = results.get("sweep")
    if found and (found["removed_paths"] or found["ipc"] or found["mqueues"] or found["systemd"]):
        c.print(f"swept {found['removed_paths']} paths outside the home, {len(found['ipc'])} IPC objects, "
                f"{len(found['mqueues'])} message queues, systemd: {', '.join(found['systemd']) or 'nothing'}")
        for p in found["paths"]:
            c.print(Text(f"  {p}"))


@slot.command("passwd")
@click.argument("username")
@json_option
def passwd(username: str) -> None:
    """Give slot USERNAME a new generated password, shown once (a suspended slot stays locked)."""
    ctx = Context()
    password = operations.change_password(ctx, username)  # under the slot's lock, like the API
    emit({"username": username, "password": password},
         lambda c: c.print(f"new password for {username}: {password}\n(shown once, not stored)"))


def _emit_batch(summary: dict[str, Any], render: Callable[[Console], None], failed: int, of: str) -> None:
    """Print a batch's results; exit 1 (one line on stderr) if any row failed."""
    emit(summary, render)
    if failed:
        if not wants_json():
            click.echo(f"slotctl: error: {failed} of {of} failed", err=True)
        sys.exit(1)


def read_names(text: str) -> list[str]:
    """The names of a remove-many file: one a line (blank lines and ``#`` comments skipped), or a
    create-many CSV (its ``username`` column)."""
    lines = text.removeprefix("\ufeff").splitlines()
    first = next((ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), "")
    if "," in first and "username" in [f.strip() for f in first.split(",")]:
        return [r["username"] for r in read_slots_csv(text)]
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


@slot.command("remove-many")
@click.argument("names", nargs=-1, required=True, metavar="FILE|NAMES...")
@click.option("--keep-data", is_flag=True, help="Keep each home, moved aside into the root-only .kept directory.")
@json_option
def remove_many(names: tuple[str, ...], keep_data: bool) -> None:
    """Remove many slots: NAMES, or a FILE of names (one a line, or create-many's CSV).

    Every slot gets the whole removal and its own result line; a failing one does not stop
    the rest. Exit 1 if any failed.
    """
    if len(names) == 1 and Path(names[0]).is_file():
        try:
            wanted = read_names(Path(names[0]).read_text(encoding="utf-8-sig"))  # spreadsheets write a BOM
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInput(f"{names[0]}: cannot read: {exc}") from None
    else:
        wanted = list(names)
    if not wanted:
        raise BadInput("no slot names given")
    ctx = Context()
    with err_console.status(f"removing {len(wanted)} slots", spinner="dots") if sys.stderr.isatty() else nullcontext():
        outcomes = operations.remove_many(ctx, wanted, keep_data=keep_data)
    results: list[dict[str, Any]] = []
    for name, out in zip(wanted, outcomes, strict=True):
        if isinstance(out, Removed):
            results.append({"ok": True, **out.as_dict()})
        else:
            results.append({"ok": False, "username": name, "error": str(out)})
    failed = [r for r in results if not r["ok"]]
    summary = {"removed": len(results) - len(failed), "failed": len(failed), "results": results}

    def render(c: Console) -> None:
        for r in results:
            if r["ok"]:
                swept = r["sweep"]["removed_paths"] if r["sweep"] else 0
                c.print(Text(f"{r['username']}: removed (swept {swept} paths outside the home)"
                             + (f", kept at {r['kept']}" if r["kept"] else "")))
            else:
                c.print(Text(f"{r['username']!r}: FAILED: {r['error']}"))
        c.print(f"{summary['removed']} removed, {summary['failed']} failed")

    _emit_batch(summary, render, len(failed), f"{len(wanted)} slots")


CSV_FIELDS = ("username", "email", "country", "quota", "payment_ref")


def read_slots_csv(text: str) -> list[dict[str, str]]:
    """Rows of a create-many CSV (header: username,email,country[,quota][,payment_ref]); a BOM is ignored."""
    reader = csv.DictReader(io.StringIO(text.removeprefix("\ufeff")))
    header = reader.fieldnames or []
    missing = [f for f in CSV_FIELDS[:3] if f not in header]
    if missing:
        raise BadInput(f"CSV header lacks {', '.join(missing)} (expected {','.join(CSV_FIELDS)})")
    unknown = [f for f in header if f not in CSV_FIELDS]
    if unknown:
        raise BadInput(f"CSV header has unknown column {unknown[0]!r}")
    try:
        return [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except csv.Error as exc:
        raise BadInput(f"CSV is malformed: {exc}") from None


@slot.command("create-many")
@click.argument("csv_file", type=click.Path(dir_okay=False, path_type=Path))
@json_option
@fleet.fleet_options
def create_many(csv_file: Path) -> None:
    """Create a slot per CSV row; a failing row does not stop the rest. Exit 1 if any failed."""
    try:
        text = csv_file.read_text(encoding="utf-8-sig")  # spreadsheets write a BOM
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{csv_file}: cannot read: {exc}") from None
    rows = read_slots_csv(text)
    if fleet.requested():  # one module call per host for the whole file
        fleet.emit_outcomes(fleet.run_changes([SlotChange.parse({**row, "strict": True}) for row in rows]))
        return
    ctx = Context()
    batch = [BatchRow(r["username"], r["email"], r["country"], r.get("quota") or None, r.get("payment_ref") or None)
             for r in rows]
    with err_console.status(f"creating {len(batch)} slots", spinner="dots") if sys.stderr.isatty() else nullcontext():
        outcomes = operations.create_many(ctx, batch)  # each slot under its lock
    results: list[dict[str, Any]] = []
    for line, row, out in zip(range(2, len(rows) + 2), rows, outcomes, strict=True):
        if isinstance(out, Created):
            results.append({"line": line, "ok": True, **out.as_dict()})
        else:
            results.append({"line": line, "ok": False, "username": row.get("username"), "error": str(out)})
    failed = [r for r in results if not r["ok"]]
    summary = {"created": len(results) - len(failed), "failed": len(failed), "results": results}

    def render(c: Console) -> None:
        for r in results:
            if r["ok"]:
                c.print(f"line {r['line']}: {r['username']} created, password {r['password']}")
            else:
                c.print(f"line {r['line']}: {r['username']!r} FAILED: {r['error']}")
        c.print(f"{summary['created']} created, {summary['failed']} failed")

    _emit_batch(summary, render, len(failed), f"{len(rows)} rows")


@click.command("doctor")
@click.option("--enforce", is_flag=True,
              help="first bring escaped usage back under each slot's cap (btrfs: nested subvolumes "
                   "into the slot's quota group), and list what was moved")
@json_option
def doctor(enforce: bool) -> None:
    """Compare the store with the system; exit 1 if anything drifted."""
    ctx = Context()
    enforced = enforce_quotas(ctx) if enforce else []
    drift = find_drift(ctx)

    def render(c: Console) -> None:
        for d in enforced:
            c.print(f"{d.subject}: {d.problem}", markup=False, highlight=False)
        for d in drift:
            c.print(f"{d.subject}: {d.problem}")
        if not drift:
            c.print("no drift")

    emit({"ok": not drift, "drift": [d.as_dict() for d in drift],
          "enforced": [d.as_dict() for d in enforced]}, render)
    if drift:
        sys.exit(1)


# change-plan, suspend, unsuspend live in their own module and join this group on import.
from provisioner.cli import lifecycle as _lifecycle  # noqa: E402, F401
