"""Validators: table cases for the rules, hypothesis for "no input crashes or slips through"."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioner.errors import BadInput
from provisioner.names import (
    format_size,
    parse_size,
    validate_country,
    validate_email,
    validate_payment_ref,
    validate_username,
)

NAME_OK = re.compile(r"[a-z][a-z0-9_-]{0,30}")


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("alice", True), ("a", True), ("a" * 31, True), ("a" * 32, False), ("bob-2", True),
        ("bob_x", True), ("bob-", False), ("1bob", False), ("-bob", False), ("Bob", False),
        ("", False), ("root", False), ("admin", False), ("www-data", False), ("sudo", False),
        ("al ice", False), ("al/ice", False), ("ålice", False), ("alice\n", False), ("..", False),
    ],
)
def test_username_rules(name: str, ok: bool) -> None:
    if ok:
        assert validate_username(name) == name
    else:
        with pytest.raises(BadInput):
            validate_username(name)


def test_username_catalog_names_reserved() -> None:
    with pytest.raises(BadInput, match="reserved"):
        validate_username("wordpress", frozenset({"wordpress"}))


@given(st.one_of(st.text(max_size=64), st.binary(max_size=16), st.integers(), st.none()))
def test_username_never_crashes_or_lets_bad_through(value: object) -> None:
    try:
        out = validate_username(value)
    except BadInput as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(out, str) and NAME_OK.fullmatch(out) and not out.endswith("-")


@pytest.mark.parametrize(
    ("email", "ok"),
    [
        ("a@example.com", True), ("first.last+tag@sub.example.org", True), ("a@b", False),
        ("a@@example.com", False), ("@example.com", False), ("a@example..com", False),
        ("a b@example.com", False), ("a@example.com\n", False), ("a@-example.com", False),
        ("x" * 65 + "@example.com", False), ("a@exa_mple.com", False), ("", False),
    ],
)
def test_email_rules(email: str, ok: bool) -> None:
    if ok:
        assert validate_email(email)
    else:
        with pytest.raises(BadInput):
            validate_email(email)


@given(st.text(max_size=300))
def test_email_never_crashes_and_output_is_one_safe_line(value: str) -> None:
    try:
        out = validate_email(value)
    except BadInput as exc:
        assert "\n" not in str(exc)
    else:
        assert out.count("@") == 1 and out.isprintable() and " " not in out and len(out) <= 254


@pytest.mark.parametrize(("cc", "out"), [("DE", "DE"), ("de", "DE"), ("us", "US")])
def test_country_ok(cc: str, out: str) -> None:
    assert validate_country(cc) == out


@pytest.mark.parametrize("cc", ["XX", "D", "DEU", "", "Dé", "UK", "EU"])
def test_country_bad(cc: str) -> None:
    with pytest.raises(BadInput):
        validate_country(cc)


@given(st.text(max_size=5))
def test_country_never_crashes(value: str) -> None:
    try:
        out = validate_country(value)
    except BadInput:
        return
    assert len(out) == 2 and out.isascii() and out.isupper()


@pytest.mark.parametrize(
    ("text", "n"),
    [("5G", 5 << 30), ("500M", 500 << 20), ("1k", 1024), ("5GiB", 5 << 30), ("5GB", 5 << 30),
     ("1048576", 1 << 20), ("1T", 1 << 40), (" 2M ", 2 << 20)],
)
def test_size_ok(text: str, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["", "0", "0G", "-1G", "5Q", "5.5G", "G", "5 G", "1e9", "5iB", "99999P", "２G"])
def test_size_bad(text: str) -> None:
    with pytest.raises(BadInput):
        parse_size(text)


@given(st.text(max_size=20))
def test_size_never_crashes(value: str) -> None:
    try:
        out = parse_size(value)
    except BadInput:
        return
    assert isinstance(out, int) and 0 < out <= 1 << 50


@given(st.integers(min_value=1, max_value=1 << 50))
def test_format_then_parse_round_trips(n: int) -> None:
    assert parse_size(format_size(n)) == n


@given(st.text(max_size=200))
def test_payment_ref_never_crashes(value: str) -> None:
    try:
        out = validate_payment_ref(value)
    except BadInput:
        return
    assert out.isascii() and out.isprintable() and " " not in out


def test_create_many_csv_from_a_spreadsheet_with_a_bom() -> None:
    """A CSV exported by a spreadsheet (UTF-8 with a BOM) failed with "CSV header lacks username"."""
    from provisioner.cli.slot import read_slots_csv

    rows = read_slots_csv("\ufeffusername,email,country\nann,ann@example.com,DE\n")
    assert rows == [{"username": "ann", "email": "ann@example.com", "country": "DE"}]


def test_remove_many_names_from_a_spreadsheet_with_a_bom() -> None:
    """A names file saved with a BOM named its first slot "\\ufeffann" (refused as invalid)."""
    from provisioner.cli.slot import read_names

    assert read_names("\ufeffann\nbob\n") == ["ann", "bob"]
    assert read_names("\ufeffusername,email,country\nann,ann@example.com,DE\n") == ["ann"]
