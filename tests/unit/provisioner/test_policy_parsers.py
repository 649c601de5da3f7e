"""The data-policy parsers as tables and properties: answers, durations, paths, refs, log lines, config."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioner import tenant_commands
from provisioner.config import validate_section
from provisioner.errors import BadInput, ConfigError
from provisioner.hostlogs import ReportConfig, count_lines
from provisioner.inbox import Answer, InboxConfig, parse_answer
from provisioner.notices import NoticesConfig, home_relative, validate_ref
from provisioner.support import SupportConfig, parse_grant_duration, validate_reason

DAY = 86400


@pytest.mark.parametrize(("text", "expected"), [
    ("approve 1", Answer("approve", 1)),
    ("approve 12 read-only\n", Answer("approve", 12, True)),
    ("refuse 3", Answer("refuse", 3)),
    ("revoke 99", Answer("revoke", 99)),
])
def test_answers(text: str, expected: Answer) -> None:
    assert parse_answer(text) == expected


@pytest.mark.parametrize("text", ["", "approve", "approve 0", "approve -1", "approve 1 2", "refuse 1 read-only",
                                  "approve 1 read-write", "grant 1", "approve ١", "approve 1\napprove 2",
                                  "approve 1234567890123", "APPROVE 1", "approve  1"])
def test_bad_answers(text: str) -> None:
    with pytest.raises(BadInput):
        parse_answer(text)


@given(st.text(max_size=60))
def test_answer_parser_accepts_only_its_grammar(text: str) -> None:
    try:
        a = parse_answer(text)
    except BadInput:
        return
    assert a.verb in ("approve", "refuse", "revoke") and a.grant > 0
    assert re.fullmatch(r"(approve|refuse|revoke) [0-9]{1,12}( read-only)?", text.strip())


@given(st.sampled_from(["approve", "refuse", "revoke"]), st.integers(1, 10**12 - 1), st.booleans())
def test_what_slotwarden_me_writes_root_reads_back(verb: str, grant: int, read_only: bool) -> None:
    read_only = read_only and verb == "approve"
    assert parse_answer(tenant_commands.answer_line(verb, grant, read_only)) == Answer(verb, grant, read_only)


@pytest.mark.parametrize(("value", "seconds"), [("30m", 1800), ("2h", 7200), ("1.5h", 5400), ("1d", DAY),
                                                ("7d", 7 * DAY), (60, 60)])
def test_durations(value: object, seconds: int) -> None:
    assert parse_grant_duration(value, 7 * DAY) == seconds


@pytest.mark.parametrize(("value", "error"), [("0h", "more than zero"), (0, "more than zero"), ("8d", "at most"),
                                              ("-1h", "duration"), ("1w", "duration"), ("", "duration"),
                                              (True, "duration"), ("1.5s", "whole seconds"), (None, "duration")])
def test_bad_durations(value: object, error: str) -> None:
    with pytest.raises(BadInput, match=error):
        parse_grant_duration(value, 7 * DAY)


@given(st.one_of(st.text(max_size=12), st.integers(-10, 10**7)))
def test_durations_are_in_range_or_refused(value: object) -> None:
    try:
        seconds = parse_grant_duration(value, 7 * DAY)
    except BadInput as exc:
        assert "\n" not in str(exc)
        return
    assert 0 < seconds <= 7 * DAY


HOME = "/srv/slots/ann"


@pytest.mark.parametrize(("path", "parts"), [
    ("www/a.mp3", ["www", "a.mp3"]), ("/srv/slots/ann/www/a.mp3", ["www", "a.mp3"]), ("./a", ["a"]),
    ("a//b", ["a", "b"]),
])
def test_home_relative(path: str, parts: list[str]) -> None:
    assert home_relative(HOME, path) == parts


@pytest.mark.parametrize("path", ["/etc/shadow", "/srv/slots/annx/f", "/srv/slots/ann", "/srv/slots/ann/",
                                  "../bob/f", "a/../../bob", "", ".", "a\x00b", "a\nb", "/srv/slots/ann/../bob/f"])
def test_paths_outside_the_home_are_refused(path: str) -> None:
    with pytest.raises(BadInput):
        home_relative(HOME, path)


@given(st.text(max_size=80))
def test_home_relative_never_leaves_the_home(path: str) -> None:
    try:
        parts = home_relative(HOME, path)
    except BadInput:
        return
    assert parts and ".." not in parts and all(p and "/" not in p and p != "." for p in parts)


@given(st.text(max_size=120))
def test_refs_and_reasons_are_one_printable_line(text: str) -> None:
    for check in (validate_ref, validate_reason):
        try:
            out = check(text)
        except BadInput:
            continue
        assert out and out.isprintable() and "\n" not in out


@pytest.mark.parametrize(("line", "counted"), [
    ("sshd[1]: Failed password for ann from 198.51.100.1 port 22 ssh2", True),
    ("sshd[1]: Invalid user ann from 198.51.100.1", True),
    ("sshd-session[7]: Accepted publickey for ann from 198.51.100.1", True),
    ("sshd[1]: pam_unix(sshd:session): session opened for user ann(uid=1001) by (uid=0)", True),
    ("sshd[1]: Failed password for anna from 198.51.100.1", False),
    ("sshd[1]: Failed password for xann from 198.51.100.1", False),
    ("sshd[1]: Failed password for ann.b from 198.51.100.1", False),
    ("sudo: ann : TTY=pts/0 ; COMMAND=/bin/true", False),
])
def test_sshd_lines_about_a_user(line: str, counted: bool) -> None:
    assert count_lines([line], "ann") == int(counted)


@given(st.text(alphabet="abcdefghij-_.", min_size=1, max_size=10), st.lists(st.text(max_size=40), max_size=5))
def test_counting_never_fails_on_any_name_or_line(name: str, lines: list[str]) -> None:
    assert 0 <= count_lines(lines, name) <= len(lines)


@pytest.mark.parametrize(("cls", "table", "error"), [
    (SupportConfig, {"max_duration": "0h"}, "support.max_duration"),
    (SupportConfig, {"grants_dir": "relative"}, "support.grants_dir"),
    (SupportConfig, {"nope": 1}, "support.nope: unknown key"),
    (InboxConfig, {"dir": 3}, "inbox.dir"),
    (InboxConfig, {"login_script": "x"}, "inbox.login_script"),
    (NoticesConfig, {"hook": "mail"}, "notices.hook"),
    (NoticesConfig, {"hook": ["relative"]}, "notices.hook"),
    (NoticesConfig, {"takedown_after": "soon"}, "notices.takedown_after"),
    (ReportConfig, {"auth_logs": ["rel"]}, "report.auth_logs"),
    (ReportConfig, {"journal": "yes"}, "report.journal"),
])
def test_bad_config_names_the_key(cls: type, table: dict[str, object], error: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(error)):
        validate_section(cls, table)


def test_config_defaults() -> None:
    assert validate_section(SupportConfig, {}).max_duration == 7 * DAY
    assert validate_section(NoticesConfig, {}).takedown_after == DAY
    assert validate_section(InboxConfig, {}).login_script is None
    hook = ["/usr/local/bin/tell", "--x"]
    assert validate_section(NoticesConfig, {"hook": hook}).hook == tuple(hook)
    assert validate_section(NoticesConfig, {"hook": []}).hook == ()


@given(st.text(max_size=40))
def test_slotwarden_me_prints_no_control_characters(text: str) -> None:
    lines = tenant_commands._support_lines([{"id": 1, "staff": text, "reason": text, "state": "requested"}])
    lines += tenant_commands._notice_lines([{"id": 1, "path": text, "ref": text, "state": "open", "deadline": text}])
    assert all(line.isprintable() for line in lines)
