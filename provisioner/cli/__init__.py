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

# name -> (module:attribute, the one line `slotctl --help` lists). A command is imported on first
# use, so `slotctl slot show` does not pay for the API server's imports and `slotctl --help`
# imports none of them (nor the configuration model). Each line is its command's own summary
# (the first sentence of its docstring): tests/unit/provisioner/test_cli_entry.py checks they agree.
GROUPS: dict[str, tuple[str, str]] = {
    "host": ("provisioner.cli.host:host", "Prepare this host: slots filesystem, quota backend, hidepid, admin group."),
    "slot": ("provisioner.cli.slot:slot", "Create, inspect and remove slots."),
    "doctor": ("provisioner.cli.slot:doctor", "Compare the store with the system; exit 1 if anything drifted."),
    "app": ("provisioner.cli.app:app", "Install apps into slots, with generated credentials."),
    "metrics": ("provisioner.cli.metrics:metrics",
                "Per-slot metrics, read live: show one slot or all, Prometheus text, or serve it over HTTP."),
    "data": ("provisioner.cli.data:data", "The data report and the user's requests under the data-handling policy."),
    "db": ("provisioner.cli.db:db", "The state store: schema version, upgrade, copy (SQLite into the fleet's "
                                   "PostgreSQL, say)."),
    "retention": ("provisioner.cli.retention:retention",
                  "Retention rules, enforced by code (safe to run from cron every few minutes)."),
    "plan": ("provisioner.cli.plan:plan", "Plans sold to customers: quota, allowed apps, limits."),
    "api": ("provisioner.cli.api:api", "The HTTP provisioning API for the billing system."),
    "fleet": ("provisioner.cli.fleet_controller:fleet",
              "The fleet controller: hosts, their facts, slot placement (see 'api serve --fleet')."),
    "guard": ("provisioner.cli.guard:guard", "Login guard: record failed logins, lock whoever keeps failing."),
    "support": ("provisioner.cli.support:support",
                "Support access to a slot's home, approved by the tenant, for a limited time."),
    "notice": ("provisioner.cli.notice:notice",
               "Takedown notices: the tenant is told at once; after 24 h the file is quarantined."),
    "hub": ("provisioner.cli.hub:hub", "The Hub: tenants log in with the slot password (HTTPS, PAM, the login guard)."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use (listing them imports none)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(GROUPS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in GROUPS:
            return None
        module, _, attr = GROUPS[cmd_name][0].partition(":")
        cmd: click.Command = getattr(importlib.import_module(module), attr)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of ``--help``, from :data:`GROUPS` (as click would print it)."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(n) for n in names)
        with formatter.section("Commands"):
            formatter.write_dl([(n, click.Command(n, help=GROUPS[n][1]).get_short_help_str(limit)) for n in names])

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
