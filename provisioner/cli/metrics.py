"""``slotctl metrics``: per-slot CPU, swap, RAM, load, processes, I/O, disk, quota, physical disk.

``slotctl metrics USERNAME`` (one slot), ``--all`` (every slot), ``--format prometheus`` (the
text exposition), ``slotctl metrics serve --listen 127.0.0.1:PORT`` (the same over HTTP).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

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
              help="Where to serve /metrics; anything but loopback needs --cert/--key and a scrape token.")
@click.option("--cert", type=click.Path(dir_okay=False, path_type=Path), help="TLS certificate (PEM).")
@click.option("--key", type=click.Path(dir_okay=False, path_type=Path), help="TLS private key (PEM).")
@json_option
def serve(listen: str, cert: Path | None, key: Path | None) -> None:
    """Serve the Prometheus exposition of every slot at http(s)://ADDRESS:PORT/metrics."""
    from provisioner.config import load_config
    from provisioner.listen import parse_listen
    from provisioner.metrics.serve import make_server

    host, port = parse_listen(listen)
    server = make_server(load_config(), host, port, cert, key)
    url = f"{'https' if cert else 'http'}://{listen}/metrics"
    emit({"listening": url}, lambda c: c.print(f"serving {url}", markup=False))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@metrics.group("token")
@json_option
def token() -> None:
    """The scrape token: once made, every scrape must send it (required off loopback)."""


@token.command("create")
@json_option
def token_create() -> None:
    """Make a new scrape token (replacing the old one); prints it once."""
    from provisioner.config import load_config
    from provisioner.metrics.serve import create_scrape_token

    value = create_scrape_token(load_config())
    emit({"token": value}, lambda c: c.print(f"scrape token: {value}\n(shown once, stored hashed; give it "
                                             "to Prometheus as authorization.credentials_file; restart "
                                             "metrics serve)", markup=False))


@token.command("revoke")
@json_option
def token_revoke() -> None:
    """Forget the scrape token (metrics serve then answers only on loopback, to anyone there)."""
    from provisioner.config import load_config
    from provisioner.metrics.serve import revoke_scrape_token

    had = revoke_scrape_token(load_config())
    emit({"revoked": had}, lambda c: c.print("scrape token revoked" if had else "no scrape token"))
