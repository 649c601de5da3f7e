"""The configuration model: any document loads or is refused naming a key; [guard] as the guard reads it."""

from __future__ import annotations

import tomllib
from dataclasses import fields
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pam_hooks.config import GuardConfig, GuardConfigError, parse_guard
from provisioner import configdoc
from provisioner.config import SECTIONS, Config, GuardSection, config_from_document, load_config_text
from provisioner.errors import ConfigError

# Values a TOML file can hold, with many that are valid somewhere (durations, sizes, paths, ranges).
SCALARS = st.one_of(
    st.booleans(), st.integers(-3, 70000), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["15m", "1.5h", "24h", "30d", "0", "0.5s", "5G", "512M", "/srv/x", "relative", "",
                     "open", "closed", "auto", "none", "systemd", "198.51.100.0/24", "slotwarden-x", "2001:db8::/64"]),
    st.text(max_size=12),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3))


def _keys(cls: type[Any]) -> list[str]:
    return [f.name for f in fields(cls)]


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from([*SECTIONS, "bogus"]), max_size=4, unique=True)):
        keys = [*_keys(SECTIONS[name]), "stray"] if name in SECTIONS else ["x"]
        doc[name] = draw(st.dictionaries(st.sampled_from(keys), VALUES, max_size=4))
    if draw(st.booleans()):
        doc["state_dir"] = draw(st.sampled_from(["/srv/sw", "rel", 3]))
    if draw(st.booleans()):
        doc["plans"] = {draw(st.sampled_from(["small", "Big!", "x"])): draw(st.dictionaries(
            st.sampled_from(["quota", "apps", "max_apps", "memory_max", "memory_high", "cpu_cores", "swap_max"]),
            VALUES, max_size=4))}
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_any_document_loads_or_names_its_key(doc: dict[str, Any]) -> None:
    try:
        cfg = config_from_document(doc)
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message and ": " in message
        key = message.split(": ", 1)[0]
        assert key.split(".")[0] in doc, message
    else:
        # a valid configuration round-trips through the TOML the reference writes
        again = load_config_text(configdoc.as_toml(cfg))
        assert again == cfg


def test_the_defaults_round_trip() -> None:
    assert load_config_text(configdoc.as_toml(Config())) == Config()


@st.composite
def guard_documents(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {"guard": draw(st.dictionaries(st.sampled_from([*_keys(GuardSection), "retention", "x"]),
                                                         VALUES, max_size=4))}
    if draw(st.booleans()):
        doc["retention"] = {"attempts": draw(VALUES)}
    if draw(st.booleans()):
        doc["state_dir"] = draw(st.sampled_from(["/srv/sw", "rel", "/a\nb"]))
    return doc


def _guard(doc: dict[str, Any]) -> GuardConfig | str:
    try:
        return parse_guard(doc)
    except GuardConfigError as exc:
        return str(exc).split(": ", 1)[0]


def _model(doc: dict[str, Any]) -> GuardConfig | str:
    try:
        return config_from_document(doc).guard_config()
    except ConfigError as exc:
        return str(exc).split(": ", 1)[0]


@settings(max_examples=400, deadline=None)
@given(guard_documents())
def test_slotctl_and_the_guard_read_guard_alike(doc: dict[str, Any]) -> None:
    guard, model = _guard(doc), _model(doc)
    if isinstance(guard, GuardConfig) or isinstance(model, GuardConfig):
        assert guard == model  # both accept, with the same values
    # Each key alone: refused by both (naming it) or accepted by both with the same value.
    for key, value in doc["guard"].items():
        one = {"guard": {key: value}}
        assert _guard(one) == _model(one), (key, value)


@pytest.mark.parametrize("value", ["1.5h", 5400, "90m", "5400s"])
def test_guard_and_retention_share_the_duration_grammar(value: object) -> None:
    doc = {"guard": {"lock_for": value}, "retention": {"attempts": value}}
    assert _guard(doc) == _model(doc)
    cfg = config_from_document(doc)
    assert cfg.guard.lock_for == cfg.retention.attempts == 5400 == parse_guard(doc).retention


def test_one_key_decides_how_long_attempts_live() -> None:
    cfg = load_config_text('[retention]\nattempts = "2h"\n')
    assert cfg.retention.attempts == cfg.guard_config().retention == parse_guard(tomllib.loads(
        '[retention]\nattempts = "2h"\n')).retention == 7200
    for reader in (lambda: load_config_text('[guard]\nretention = "2h"\n'),
                   lambda: parse_guard({"guard": {"retention": "2h"}})):
        with pytest.raises((ConfigError, GuardConfigError), match=r"^guard\.retention: unknown key"):
            reader()


def test_the_model_and_the_guard_have_the_same_keys_and_defaults() -> None:
    section = {f.name: getattr(GuardSection(), f.name) for f in fields(GuardSection)}
    guard = GuardConfig()
    assert section.pop("store_host") is None  # the model leaves it to the guard: this host's name
    assert section == {k: getattr(guard, k) for k in section}
    section["store_host"] = guard.store_host
    derived = {"retention", "state_dir", "admin_group", "extra"}
    assert {f.name for f in fields(GuardConfig)} - set(section) == derived
    assert Config().guard_config() == guard


def test_every_key_is_documented_in_the_reference() -> None:
    text = configdoc.reference()
    for name, cls in SECTIONS.items():
        assert f"## [{name}]" in text
        for key, kind, _default, description in configdoc._keys(cls):
            assert f"| `{key}` |" in text and kind and description, (name, key)


def test_the_generated_files_are_up_to_date() -> None:
    assert configdoc.REFERENCE.read_text() == configdoc.reference(), "python -m provisioner.configdoc"
    assert configdoc.DEFAULT_FILE.read_text() == configdoc.default_file(), "python -m provisioner.configdoc"
    assert configdoc.main(["--check"]) == 0


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_a_section_the_file_lacks_equals_the_validated_empty_table(name: str) -> None:
    """Absent sections skip validation (start-up cost): their defaults must be what validation makes."""
    from provisioner.config import _defaults, validate_section

    cls = SECTIONS[name]
    validated = validate_section(cls, {})
    assert _defaults(cls) == validated and repr(_defaults(cls)) == repr(validated)
    for f in fields(cls):
        assert type(getattr(_defaults(cls), f.name)) is type(getattr(validated, f.name)), f.name
