"""``slotctl metrics``: per-slot CPU, swap, RAM, load, processes, I/O, disk, quota, physical disk.

``slotctl metrics USERNAME`` (one slot), ``--all`` (every slot), ``--format prometheus`` (the
text exposition), ``slotctl metrics serve --listen 127.0.0.1:PORT`` (the same over HTTP).
"""

from __future__ import annotations

import json
import time

import click
from rich.console import Console

from provisioner.cli.output import emit, json_option, wants_json
from provisioner.context import Context
from provisioner.errors import BadInput


class DefaultToShow(click.Group):
    """``slotctl metrics alice`` means ``slotctl metrics show alice`` (so a slot may be named 'serve')."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = ["show", *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultToShow)
@json_option
def metrics() -> None:
    """Per-slot metrics, read live: show one slot or all, Prometheus text, or serve it over HTTP."""


@metrics.command("show")
@click.argument("username", required=False)
@click.option("--all", "all_", is_flag=True, help="Every slot on this host.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "prometheus"]), default=None,
              help="Output format [default: text; json with --json].")
@click.option("--sample", type=float, default=None, metavar="SECONDS",
              help="Measure CPU %% over this interval [default: 0.5 for one slot, 0 with --all].")
@json_option
def show(username: str | None, all_: bool, fmt: str | None, sample: float | None) -> None:
    """Show the metrics of slot USERNAME (or of every slot with --all)."""
    from provisioner.metrics import collect
    from provisioner.metrics.kernel import render_text
    from provisioner.metrics.prometheus import render

    if bool(username) == all_:
        raise BadInput("name one slot or pass --all")
    if sample is None:
        sample = 0.0 if all_ else 0.5
    if not 0 <= sample <= 60:
        raise BadInput("--sample must be between 0 and 60")
    if fmt is None:
        fmt = "json" if wants_json() else "text"
    ctx = Context()
    t0 = time.perf_counter()
    result = collect(ctx, None if all_ else [username or ""], sample=sample)
    if fmt == "prometheus":
        click.echo(render(result, time.perf_counter() - t0), nl=False)
        return
    data = [m.as_dict() for m in result]
    if fmt == "json" and not wants_json():
        click.echo(json.dumps(data if all_ else data[0], indent=2, sort_keys=True))
        return

    def text(c: Console) -> None:
        for m in result:
            c.print(render_text(m), markup=False)

    emit(data if all_ else data[0], text)


@metrics.command("serve")
@click.option("--listen", default="127.0.0.1:9464", show_default=True, metavar="ADDRESS:PORT",
              help="Where to serve /metrics.")
@json_option
def serve(listen: str) -> None:
    """Serve the Prometheus exposition of every slot at http://ADDRESS:PORT/metrics."""
    from provisioner.config import load_config
    from provisioner.metrics.serve import make_server, parse_listen

    host, port = parse_listen(listen)
    server = make_server(load_config(), host, port)
    emit({"listening": f"http://{listen}/metrics"}, lambda c: c.print(f"serving http://{listen}/metrics"))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
