"""Field escaping shared with the C module: safe, capped, reversible."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pam_hooks.protocol import MAX_FIELD_BYTES, TRUNCATED, escape, escape_text, is_clean_field, name_key, unescape


@given(st.binary(max_size=600))
def test_escaped_is_one_clean_printable_field(raw: bytes) -> None:
    e = escape(raw)
    assert e.isascii() and all(0x21 <= ord(c) <= 0x7E for c in e)
    assert "\t" not in e and "\n" not in e
    assert len(e) <= 3 * MAX_FIELD_BYTES + len(TRUNCATED)
    assert is_clean_field(e)
    assert e.endswith(TRUNCATED) == (len(raw) > MAX_FIELD_BYTES)


@given(st.binary(max_size=MAX_FIELD_BYTES))
def test_roundtrip(raw: bytes) -> None:
    assert unescape(escape(raw)) == raw


@given(st.binary(min_size=MAX_FIELD_BYTES + 1, max_size=70000))
def test_cap_keeps_the_prefix(raw: bytes) -> None:
    assert unescape(escape(raw)) == raw[:MAX_FIELD_BYTES]


def test_examples() -> None:
    assert escape(b"bob") == "bob"
    assert escape(b"a b\n%") == "a%20b%0A%25"
    assert escape(b"\xff\xfe") == "%FF%FE"
    assert escape_text("jos\u00e9") == "jos%C3%A9"
    assert escape(b"x" * 65536) == "x" * MAX_FIELD_BYTES + TRUNCATED


@given(st.text(max_size=50))
def test_is_clean_field_rejects_raw_controls(s: str) -> None:
    if any(not ("\x21" <= c <= "\x7e") for c in s):
        assert not is_clean_field(s)


@given(st.binary(min_size=1, max_size=300))
def test_name_key_accepts_typed_or_displayed(raw: bytes) -> None:
    shown = escape(raw)
    assert name_key(shown) == shown  # copied from `guard list`
    if b"%" not in raw:
        try:
            typed = raw.decode("utf-8")
        except UnicodeDecodeError:
            return
        if len(raw) <= MAX_FIELD_BYTES:
            assert name_key(typed) == shown
