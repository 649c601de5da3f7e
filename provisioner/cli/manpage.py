"""Man pages for ``slotctl`` and each of its command groups, written from the click commands.

One page in section 8 for ``slotctl`` itself (global options, the groups, exit codes) and one
per group (``slotctl-slot(8)``, ``slotctl-guard(8)`` …) with every subcommand's synopsis, help
and options, nested groups included. The package build (``debian/rules``) runs
``python3 -m provisioner.cli.manpage DIR``; the text comes from the same docstrings and option
help that ``--help`` prints, so the two never disagree.

>>> roff("-v\\\\n .dot")
'\\\\-v\\\\en .dot'
>>> roff(".starts with a dot").startswith("\\\\&.")
True
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

SECTION = "8"
MANUAL = "slotwarden manual"


def roff(text: str) -> str:
    """TEXT as literal roff: backslashes and minus signs escaped, no line read as a request."""
    out = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + ln if ln.startswith((".", "'")) else ln for ln in out.split("\n"))


def unroff(text: str) -> str:
    """Undo :func:`roff` (what a reader of the page sees); used by the tests."""
    lines = [ln[2:] if ln.startswith("\\&") else ln for ln in text.split("\n")]
    return "\n".join(lines).replace("\\-", "-").replace("\\e", "\\")


def _paragraphs(help_text: str) -> list[str]:
    """Click's help text as paragraphs (``\\b`` blocks kept as they are)."""
    paras = [p.strip("\n") for p in click.unstyle(help_text).split("\n\n")]
    return [p for p in paras if p.strip()]


def _body(help_text: str | None) -> list[str]:
    out: list[str] = []
    for para in _paragraphs(help_text or ""):
        if para.startswith("\b\n"):
            out += [".PP", ".nf", roff(para[2:]), ".fi"]
        else:
            out += [".PP", roff(" ".join(para.split()))]
    return out


def _options(cmd: click.Command, ctx: click.Context) -> list[str]:
    out: list[str] = []
    for param in cmd.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, help_text = record
        out += [".TP", f"\\fB{roff(names)}\\fR", roff(" ".join(help_text.split())) if help_text else ""]
    return [ln for ln in out if ln != ""]


def _usage(cmd: click.Command, ctx: click.Context) -> str:
    pieces = cmd.collect_usage_pieces(ctx)
    return f"\\fB{roff(ctx.command_path)}\\fR {roff(' '.join(pieces))}".rstrip()


def _command_section(cmd: click.Command, ctx: click.Context, level: str = ".SS") -> list[str]:
    out = [f'{level} "{roff(ctx.command_path)}"', ".PP", _usage(cmd, ctx)]
    out += _body(cmd.help)
    opts = _options(cmd, ctx)
    if opts:
        out += [".PP", "Options:", ".RS", *opts, ".RE"]
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                out += _command_section(sub, click.Context(sub, info_name=name, parent=ctx))
    return out


@dataclass(frozen=True)
class ManPage:
    """One page: its file name (``slotctl-slot.8``) and its roff source."""

    name: str
    text: str


def _header(title: str, summary: str, date: str, version: str) -> list[str]:
    return [
        f'.TH "{title.upper()}" "{SECTION}" "{date}" "slotwarden {roff(version)}" "{MANUAL}"',
        ".SH NAME",
        f"{roff(title)} \\- {roff(summary)}",
    ]


EXIT_STATUS = [".SH EXIT STATUS", ".TP", "0", "success", ".TP", "1", "the system refused (the error says why)",
               ".TP", "2", "bad input; nothing was changed"]
FILES = [".SH FILES", ".TP", "/etc/slotwarden/slotwarden.toml",
         "the configuration (or \\fB$SLOTWARDEN_CONFIG\\fR)",
         ".TP", "/var/lib/slotwarden", "the store, the guard's records, the credential key (root only)",
         ".TP", "/run/slotwarden/guard.sock", "the guard service's socket"]


def man_pages(root: click.Group, prog: str = "slotctl", version: str = "", date: str = "") -> list[ManPage]:
    """Every page for ROOT: ``prog.8`` and ``prog-GROUP.8`` per command of ROOT."""
    root_ctx = click.Context(root, info_name=prog, **root.context_settings)
    names = [n for n in root.list_commands(root_ctx)]
    commands = {n: root.get_command(root_ctx, n) for n in names}
    see_also = ", ".join(f"\\fB{prog}\\-{roff(n)}\\fR({SECTION})" for n in names)
    top = _header(prog, (root.help or "").split("\n")[0].rstrip("."), date, version)
    top += [".SH SYNOPSIS", _usage(root, root_ctx), ".SH DESCRIPTION", *_body(root.help)]
    top += [".SH OPTIONS", *_options(root, root_ctx), ".SH COMMANDS"]
    for n, cmd in commands.items():
        if cmd is not None:
            top += [".TP", f"\\fB{roff(n)}\\fR", f"{roff(cmd.get_short_help_str(limit=200))} "
                    f"See \\fB{prog}\\-{roff(n)}\\fR({SECTION})."]
    top += EXIT_STATUS + FILES + [".SH SEE ALSO", see_also]
    pages = [ManPage(f"{prog}.{SECTION}", "\n".join(top) + "\n")]
    for n, cmd in commands.items():
        if cmd is None:
            continue
        ctx = click.Context(cmd, info_name=n, parent=root_ctx)
        lines = _header(f"{prog}-{n}", cmd.get_short_help_str(limit=200).rstrip("."), date, version)
        lines += [".SH SYNOPSIS", _usage(cmd, ctx), ".SH DESCRIPTION", *_body(cmd.help)]
        opts = _options(cmd, ctx)
        if opts:
            lines += [".SH OPTIONS", *opts]
        if isinstance(cmd, click.Group):
            lines += [".SH COMMANDS"]
            for sub_name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, sub_name)
                if sub is not None and not sub.hidden:
                    lines += _command_section(sub, click.Context(sub, info_name=sub_name, parent=ctx))
        lines += [*EXIT_STATUS, ".SH SEE ALSO", f"\\fB{prog}\\fR({SECTION})"]
        pages.append(ManPage(f"{prog}-{n}.{SECTION}", "\n".join(lines) + "\n"))
    return pages


def _date() -> str:
    """The page date: SOURCE_DATE_EPOCH when set (reproducible builds), else today."""
    stamp = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    return time.strftime("%Y-%m-%d", time.gmtime(stamp))


def write_man_pages(directory: Path) -> list[Path]:
    """Write every page of ``slotctl`` into DIRECTORY; returns their paths."""
    from importlib.metadata import version

    from provisioner.cli import cli

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for page in man_pages(cli, version=version("slotwarden"), date=_date()):
        path = directory / page.name
        path.write_text(page.text)
        paths.append(path)
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python3 -m provisioner.cli.manpage DIR")
    for p in write_man_pages(Path(sys.argv[1])):
        print(p)
