"""The one value grammar (durations, sizes, paths): what it accepts, and that nothing crashes it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pam_hooks.grammar import MAX_DURATION, absolute_path, parse_duration, parse_size

UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@given(st.integers(0, 36499), st.integers(0, 99), st.sampled_from(sorted(UNITS)), st.sampled_from(["", " "]))
def test_durations_with_units(whole: int, hundredths: int, unit: str, space: str) -> None:
    text = f"{whole}.{hundredths:02d}{space}{unit}"
    assert parse_duration(text) == pytest.approx(float(f"{whole}.{hundredths:02d}") * UNITS[unit])
    assert parse_duration(f"{whole}{unit}") == whole * UNITS[unit]


@pytest.mark.parametrize(("value", "seconds"), [(900, 900.0), (0.5, 0.5), ("1.5h", 5400.0), ("15m", 900.0),
                                                ("30d", 2592000.0), (" 90s ", 90.0), ("0", 0.0)])
def test_duration_examples(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", [True, -1, float("nan"), float("inf"), "15 minutes", "1w", "", "-1h", "1e3",
                                   "١٢s", "36501d", [], None])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError) as exc:
        parse_duration(value)
    assert "\n" not in str(exc.value)


@given(st.integers(1, 1 << 20), st.sampled_from(["", "K", "M", "G", "k", "KiB", "MB", "GiB"]))
def test_sizes_with_units(n: int, unit: str) -> None:
    mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit[:1].upper()]
    assert parse_size(f"{n}{unit}") == n * mult


@given(st.one_of(st.text(max_size=20), st.integers(), st.floats(), st.booleans(), st.none()))
def test_any_value_is_parsed_or_a_one_line_value_error(value: object) -> None:
    for parse, lo, hi in ((parse_duration, 0, MAX_DURATION), (parse_size, 1, 1 << 50)):
        try:
            parsed = parse(value)
        except ValueError as exc:
            assert str(exc) and "\n" not in str(exc)
        else:
            assert lo <= parsed <= hi


@given(st.text(max_size=30))
def test_absolute_paths(value: str) -> None:
    try:
        assert absolute_path(value) == value
    except ValueError:
        assert not value.startswith("/") or "\x00" in value or "\n" in value
