"""``slotctl``: the operator's command line, a thin layer over the provisioner's functions.

Exit codes: 0 success, 2 bad input, 1 the system refused. Expected failures print one line on
stderr (and, with ``--json``, ``{"ok": false, "error": ...}`` on stdout) — never a traceback.
Each command group lives in its own module and is registered in :data:`GROUPS`.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys

import click

from provisioner.cli.fleet import inventory_option, refuse_if_unsupported
from provisioner.cli.output import json_option, wants_json
from provisioner.errors import SlotError

# module:attribute of each command or group; imported lazily so `slotctl slot show` does not
# pay for the API server's imports.
GROUPS: dict[str, str] = {
    "host": "provisioner.cli.host:host",
    "slot": "provisioner.cli.slot:slot",
    "doctor": "provisioner.cli.slot:doctor",
    "app": "provisioner.cli.app:app",
    "metrics": "provisioner.cli.metrics:metrics",
    "data": "provisioner.cli.data:data",
    "db": "provisioner.cli.db:db",
    "retention": "provisioner.cli.retention:retention",
    "plan": "provisioner.cli.plan:plan",
    "api": "provisioner.cli.api:api",
    "fleet": "provisioner.cli.fleet_controller:fleet",
    "guard": "provisioner.cli.guard:guard",
    "support": "provisioner.cli.support:support",
    "notice": "provisioner.cli.notice:notice",
    "hub": "provisioner.cli.hub:hub",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(GROUPS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = GROUPS.get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        cmd: click.Command = getattr(importlib.import_module(module), attr)
        return cmd

    def invoke(self, ctx: click.Context) -> object:
        # Inside the root context, so a --json anywhere on the line still shapes the error.
        try:
            return super().invoke(ctx)
        except SlotError as exc:
            _fail(str(exc), exc.exit_code)
            raise AssertionError("unreachable") from None

    def resolve_command(self, ctx: click.Context,
                        args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        name, cmd, rest = super().resolve_command(ctx, args)
        refuse_if_unsupported(ctx, cmd, rest)  # `--inventory` given to a command that would run here
        return name, cmd, rest


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="slotwarden", prog_name="slotctl", message="%(prog)s %(version)s")
@json_option
@inventory_option
@click.option("-v", "--verbose", is_flag=True, help="Log every system command (never secrets) on stderr.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Provision and guard slots on shared Linux servers.

    Configuration: $SLOTWARDEN_CONFIG or /etc/slotwarden/slotwarden.toml. Exit codes: 0 ok,
    2 bad input, 1 the system refused.
    """
    ctx.ensure_object(dict)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="slotctl: %(name)s: %(message)s", stream=sys.stderr)


def _fail(message: str, code: int) -> None:
    message = " ".join(message.split())  # one line, whatever the cause carried
    if wants_json():
        click.echo(json.dumps({"ok": False, "error": message}))
    click.echo(f"slotctl: error: {message}", err=True)
    sys.exit(code)


def main() -> None:
    """Console-script entry point: click's own (so shell completion works) with the exit-code contract.

    ``_SLOTCTL_COMPLETE=bash_source slotctl`` prints the bash completion script (``zsh_source``:
    zsh's); usage errors exit 2, a refusal 1, an interrupt 130.
    """
    try:
        code = cli.main(args=sys.argv[1:], prog_name="slotctl", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError | click.BadParameter) else exc.exit_code)
    except click.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):
            sys.exit(130)
        click.echo("slotctl: aborted", err=True)
        sys.exit(1)
    except SlotError as exc:  # raised while parsing, before the root group's invoke
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
