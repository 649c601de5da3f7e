"""``--inventory FILE`` / ``--host NAME``: run a slot command on fleet hosts instead of this one.

``slotctl --inventory fleet.ini slot create alice --host web1 ...`` runs the same change through
the fleet executor of :data:`~provisioner.executors.EXECUTORS` (``playbooks/slot.yml`` and
ansible-runner; a caller may hand the root command another map as ``obj={"executors": {...}}``),
shows progress from the runner's events on stderr, and prints one result per host — in the
same shape as a local run, plus ``host``/``ok``/``action``. A failing host is reported for its
own slots and exits 1 after the others' results are printed. A generated password is printed
here once and is in no runner artifact.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from provisioner.cli.output import emit, err_console, kv_table, wants_json
from provisioner.errors import BadInput
from provisioner.executors import EXECUTORS, FLEET_EXECUTOR, SlotChange, SlotOutcome, load_executor
from provisioner.names import format_size

F = TypeVar("F", bound=Callable[..., Any])


def _store(key: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value:
            root = ctx.find_root().ensure_object(dict)
            if isinstance(value, tuple):
                root[key] = [*root.get(key, []), *value]
            else:
                root[key] = value

    return callback


def inventory_option(f: F) -> F:
    """Add ``--inventory FILE`` (on the root group and on each fleet-capable command)."""
    return click.option("--inventory", metavar="FILE", expose_value=False, is_eager=True,
                        callback=_store("inventory"),
                        help="Ansible inventory: run on its hosts (with --host) instead of this one.")(f)


def fleet_options(f: F) -> F:
    """Add ``--inventory FILE`` and ``--host NAME`` (repeatable) to a command."""
    setattr(f, "_fleet_capable", True)  # noqa: B010 - read by refuse_if_unsupported
    f = click.option("--host", "hosts_", metavar="NAME", multiple=True, expose_value=False,
                     callback=_store("hosts"),
                     help="With --inventory: the host (or Ansible pattern) to run on; repeatable.")(f)
    return inventory_option(f)


def refuse_if_unsupported(ctx: click.Context, cmd: click.Command | None, args: list[str]) -> None:
    """Refuse ``slotctl --inventory FILE CMD`` when CMD has no fleet path, before it runs here.

    Otherwise ``slotctl --inventory fleet.ini slot passwd alice`` would quietly change the
    local slot instead of the fleet's. CMD is the root's subcommand, ARGS what follows it.
    """
    obj = ctx.find_root().obj
    if cmd is None or not (isinstance(obj, dict) and obj.get("inventory")):
        return
    path = [cmd.name or "?"]
    for tok in args:
        if tok.startswith("-"):
            continue
        if not isinstance(cmd, click.Group):
            break
        sub = cmd.get_command(ctx, tok)
        if sub is None:
            break
        cmd, path = sub, [*path, tok]
    if not isinstance(cmd, click.Group) and not getattr(cmd.callback, "_fleet_capable", False):
        raise BadInput(f"--inventory does not apply to 'slotctl {' '.join(path)}': it runs on this host only")


def requested() -> bool:
    """Whether this command should go through the fleet (``--inventory`` or ``--host`` given)."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx else None
    return bool(isinstance(obj, dict) and (obj.get("inventory") or obj.get("hosts")))


def _target() -> tuple[str, list[str]]:
    obj = click.get_current_context().find_root().obj or {}
    inventory, hosts = obj.get("inventory"), obj.get("hosts") or []
    if not inventory:
        raise BadInput("--host needs --inventory FILE")
    if not hosts:
        raise BadInput("--inventory needs --host NAME (or an Ansible pattern such as 'all')")
    if not Path(inventory).is_file():
        raise BadInput(f"--inventory {inventory}: no such file")
    return inventory, hosts


def _progress(line: str) -> None:
    if not line.startswith("task: "):
        err_console.print(f"fleet: {line}", markup=False)


def run_changes(changes: list[SlotChange], *, check: bool = False) -> list[SlotOutcome]:
    """Apply CHANGES on the hosts given by --inventory/--host through the fleet executor; progress on stderr."""
    inventory, hosts = _target()
    show = None if wants_json() and not sys.stderr.isatty() else _progress
    obj = click.get_current_context().find_root().obj or {}
    executor = load_executor(FLEET_EXECUTOR, executors=obj.get("executors", EXECUTORS), inventory=inventory,
                             hosts=hosts, progress=show)
    if sys.stderr.isatty():
        with err_console.status(f"running on {', '.join(hosts)} through {FLEET_EXECUTOR}"):
            return executor.apply(changes, check=check)
    return executor.apply(changes, check=check)


def _render_one(c: Console, o: SlotOutcome, check: bool) -> None:
    if not o.ok:
        c.print(f"{o.host}: {o.username} FAILED: {o.error}", markup=False)
        return
    if check:
        verb = {"created": "would create", "resumed": "would finish creating", "removed": "would remove",
                "updated": "would update"}.get(o.action, "nothing to change for")
        c.print(f"{o.host}: {verb} slot {o.username}", markup=False)
        for i, s in enumerate(o.steps, 1):
            c.print(f"  {i}. {s['step']}: {s['detail']}", markup=False)
        return
    c.print(f"{o.host}: slot [bold]{o.username}[/bold] {o.action}")
    if o.password is not None and o.record:
        quota = o.record.get("quota_bytes")
        kv_table(c, {"home": o.record.get("home"), "quota": format_size(quota) if quota else "none",
                     "password": o.password})
    for a in o.apps:
        c.print(f"{o.host}: app {a.get('app')}: {a.get('url')}  user {a.get('username')}  "
                f"password {a.get('password')}", markup=False)


def emit_outcomes(outcomes: list[SlotOutcome], *, check: bool = False) -> None:
    """Print the per-host results (``--json``: ``{"ok", "check", "results": [...]}``); exit 1 on a failure.

    A created slot's entry has the same keys as a local ``slot create --json`` (its record,
    ``password``, ``resumed``) plus ``host``, ``ok``, ``action`` and ``changed``.
    """
    results: list[dict[str, Any]] = []
    for o in outcomes:
        item = o.as_dict(with_password=True)
        if o.action in ("created", "resumed") and not check:
            item["resumed"] = o.action == "resumed"
        results.append(item)
    failed = [o for o in outcomes if not o.ok]
    data = {"ok": not failed, "check": check, "results": results}

    def render(c: Console) -> None:
        for o in outcomes:
            _render_one(c, o, check)
        if any(o.password or o.apps for o in outcomes):
            c.print("Passwords are shown once and not stored; 'slotctl slot passwd' makes a new one.")

    emit(data, render)
    if failed:
        if not wants_json():
            click.echo(f"slotctl: error: {len(failed)} of {len(outcomes)} changes failed", err=True)
        sys.exit(1 if any(o.exit_code != 2 for o in failed) else 2)
