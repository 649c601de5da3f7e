"""Man pages written from the click commands: every group has one, and text stays literal roff."""

from __future__ import annotations

import click
from hypothesis import given
from hypothesis import strategies as st

from provisioner.cli import GROUPS, cli
from provisioner.cli.manpage import man_pages, roff, unroff

REQUESTS = (".", "'")


@given(st.text())
def test_roff_round_trips_and_never_starts_a_request(text: str) -> None:
    out = roff(text)
    assert unroff(out) == text
    assert not any(line.startswith(REQUESTS) for line in out.split("\n"))
    # every backslash left is one of our escapes
    assert out.replace("\\e", "").replace("\\-", "").replace("\\&", "").count("\\") == 0


def test_a_page_per_group_and_one_for_slotctl() -> None:
    pages = {p.name: p.text for p in man_pages(cli, version="9.9", date="2026-01-01")}
    assert set(pages) == {"slotctl.8"} | {f"slotctl-{g}.8" for g in GROUPS}
    for name, text in pages.items():
        assert text.startswith(f'.TH "{name[:-2].upper()}" "8" "2026-01-01" "slotwarden 9.9"'), name
        for section in (".SH NAME", ".SH SYNOPSIS", ".SH DESCRIPTION", ".SH EXIT STATUS", ".SH SEE ALSO"):
            assert section in text, (name, section)
    # the subcommands and their options, as --help shows them
    guard = pages["slotctl-guard.8"]
    assert '.SS "slotctl guard lift"' in guard and "\\fB\\-\\-user TEXT\\fR" in guard
    assert '.SS "slotctl api token create"' in pages["slotctl-api.8"]  # nested groups too
    assert "\\fB\\-\\-version\\fR" in pages["slotctl.8"]


def test_hostile_help_text_stays_text() -> None:
    @click.group()
    def tool() -> None:
        """.TH injected\n\n'also \\fB bold"""

    @tool.command("x")
    @click.option("--opt", help=".so /etc/shadow")
    def x(opt: str) -> None:
        """Sub."""

    pages = {p.name: p.text for p in man_pages(tool, prog="tool")}
    for text in pages.values():
        lines = text.split("\n")
        assert not any(ln.startswith((".so", ".TH injected", "'also")) for ln in lines)
    assert "\\&.TH injected" in pages["tool.8"] and "\\&.so /etc/shadow" in pages["tool-x.8"]
