"""``slotctl fleet ...``: the controller's view of the fleet — hosts, their facts, placement.

A controller is a slotwarden install that knows the fleet's hosts; it reaches each through the
host's own provisioning API over TLS (:mod:`provisioner.fleet.client`). ``slotctl api serve
--fleet`` serves the billing API from it, placing new slots by :data:`provisioner.fleet.RULE`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from provisioner.cli.output import emit, json_option, wants_json
from provisioner.context import Context
from provisioner.errors import BadInput
from provisioner.names import format_size


def _size(n: object) -> str:
    return format_size(n) if isinstance(n, int) and not isinstance(n, bool) and n > 0 else ("0" if n == 0 else "-")


@click.group()
@json_option
def fleet() -> None:
    """The fleet controller: hosts, their facts, slot placement (see 'api serve --fleet')."""


@fleet.group("host")
@json_option
def host() -> None:
    """Register and forget fleet hosts."""


@host.command("add")
@click.argument("name")
@click.option("--url", required=True, metavar="URL", help="The host's API: https://HOST:PORT.")
@click.option("--ca", "ca", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="PEM certificate the host's TLS certificate must chain to.")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Root-only file with the host's API token; default: read it from stdin.")
@json_option
def host_add(name: str, url: str, ca: Path, token_file: Path | None) -> None:
    """Register host NAME (token sealed in the store, never on a command line), then gather its facts."""
    from provisioner.fleet import controller

    try:
        ca_pem = ca.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"--ca {ca}: cannot read: {exc}") from None
    if token_file is not None:
        token = controller.read_root_only(str(token_file.absolute()), "--token-file")
    else:
        if sys.stdin.isatty():
            click.echo("host API token: ", err=True, nl=False)
        token = sys.stdin.readline().strip()
    ctx = Context()
    out = controller.add_host(ctx, name, url, ca_pem, token)
    emit(out, lambda c: _print_refresh(c, [out], verb=out["change"]))
    if not out["ok"]:
        sys.exit(1)


@host.command("import")
@click.argument("inventory", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--group", default="slotwarden", show_default=True, help="The inventory group of slot hosts.")
@json_option
def host_import(inventory: Path, group: str) -> None:
    """Register the hosts of an Ansible inventory (vars slotwarden_api_url, _api_ca, _api_token_file)."""
    from provisioner.fleet import controller

    results = controller.import_inventory(Context(), inventory, group)
    emit({"ok": all(r["ok"] for r in results), "results": results},
         lambda c: _print_refresh(c, results, verb=None))
    if not all(r["ok"] for r in results):
        sys.exit(1)


@host.command("remove")
@click.argument("name")
@json_option
def host_remove(name: str) -> None:
    """Forget host NAME (refused while the controller knows slots on it)."""
    from provisioner.fleet import controller

    controller.remove_host(Context(), name)
    emit({"host": name, "removed": True}, lambda c: c.print(Text(f"host {name} forgotten")))


@fleet.command("refresh")
@click.argument("names", nargs=-1)
@json_option
def refresh(names: tuple[str, ...]) -> None:
    """Gather facts and slot lists from NAMES (default: every host), all at once; exit 1 if any failed."""
    from provisioner.fleet import controller

    results = controller.refresh(Context(), list(names) or None)
    emit({"ok": all(r["ok"] for r in results), "results": results},
         lambda c: _print_refresh(c, results, verb="refreshed"))
    if not all(r["ok"] for r in results):
        sys.exit(1)


def _print_refresh(c: Console, results: list[dict[str, Any]], verb: str | None) -> None:
    for r in results:
        if r["ok"]:
            line = f"{r['host']}: {verb or r.get('change', 'ok')}"
            if "slots" in r:
                line += f", {r['slots']} slots"
            if r.get("error"):
                line += f" ({r['error']})"
            if r.get("conflicts"):
                line += f"; also placed on another host: {', '.join(r['conflicts'])}"
        else:
            line = f"{r['host']}: FAILED: {r['error']}"
        c.print(Text(line))


@fleet.command("status")
@click.option("--slots", "with_slots", is_flag=True, help="Also list every slot and its host.")
@json_option
def status(with_slots: bool) -> None:
    """Hosts: up?, slots, committed quota against disk, room, memory, load (from the last facts)."""
    from provisioner.fleet import controller

    data = controller.status(Context(), with_slots=with_slots)

    def render(c: Console) -> None:
        t = Table("host", "state", "slots", "committed / disk", "room", "memory avail / total", "load 1/5/15",
                  "facts age")
        for h in data["hosts"]:
            load = h["load"]
            t.add_row(Text(h["host"]), Text("up" if h["up"] else f"DOWN: {h['error'] or 'no facts yet'}"),
                      Text(str(h["slots"])), Text(f"{_size(h['committed_bytes'])} / {_size(h['disk_bytes'])}"),
                      Text(_size(h["room_bytes"])),
                      Text(f"{_size(h['mem_available_bytes'])} / {_size(h['mem_total_bytes'])}"),
                      Text(" ".join(f"{x:.2f}" for x in load) if load else "-"),
                      Text("-" if h["facts_age_s"] is None else f"{h['facts_age_s']:.0f} s"))
        c.print(t)
        tot = data["totals"]
        c.print(Text(f"{tot['up']} of {tot['hosts']} hosts up; {tot['slots']} slots; "
                     f"{_size(tot['committed_bytes'])} committed of {_size(tot['disk_bytes'])}"))
        if with_slots:
            st = Table("slot", "host", "state", "quota")
            for s in data["slots"]:
                st.add_row(Text(s["username"]), Text(s["host"]), Text(s["state"]), Text(_size(s["quota_bytes"])))
            c.print(st)

    emit(data, render)


@fleet.command("place")
@click.option("--quota", metavar="SIZE", help="The slot's quota (default: the plan's, else [slots] default_quota).")
@click.option("--plan", metavar="PLAN", help="A configured plan.")
@click.option("--explain", is_flag=True, help="Show the rule and every host's figures and verdict.")
@json_option
def place_cmd(quota: str | None, plan: str | None, explain: bool) -> None:
    """Where a new slot would be placed now (nothing is created); exit 1 if no host has room."""
    from provisioner.fleet import controller

    ctx = Context()
    p = controller.explain(ctx, controller.quota_of(ctx, quota, plan))

    def render(c: Console) -> None:
        c.print(Text(f"host: {p.host or 'none has room'} (slot quota {_size(p.quota_bytes)})"))
        if explain:
            c.print(Text(f"rule: {p.rule}"))
            t = Table("host", "room", "disk", "committed", "slots", "mem avail", "load 1", "verdict")
            for r in p.candidates:
                t.add_row(Text(r["host"]), Text(_size(r["room_bytes"]) if r["up"] else "-"),
                          Text(_size(r["disk_bytes"])), Text(_size(r["committed_bytes"])), Text(str(r["slots"])),
                          Text(_size(r["mem_available_bytes"])), Text(f"{r['load1']:.2f}"), Text(r["verdict"]))
            c.print(t)

    emit(p.as_dict() if explain or wants_json() else {"host": p.host}, render)
    if p.host is None:
        sys.exit(1)
