"""Configuration: defaults, validation naming the key, and no crash on any document."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioner.config import load_config, load_config_text
from provisioner.errors import ConfigError


def test_empty_document_means_defaults() -> None:
    cfg = load_config_text("")
    assert cfg.state_dir == Path("/var/lib/slotwarden")
    assert cfg.slots.default_quota == 1 << 30
    assert cfg.retention.attempts == 24 * 3600


def test_values_are_converted() -> None:
    cfg = load_config_text('state_dir = "/x"\n[slots]\ndefault_quota = "5G"\n[retention]\nkeep_data_for = "7d"\n')
    assert cfg.state_dir == Path("/x")
    assert cfg.slots.default_quota == 5 << 30
    assert cfg.retention.keep_data_for == 7 * 86400


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ('state_dir = "relative"', "state_dir"),
        ("[slots]\ndefault_quota = \"lots\"", "slots.default_quota"),
        ("[slots]\nbogus = 1", "slots.bogus"),
        ("[host]\nhidepid = \"yes\"", "host.hidepid"),
        ("[host]\nquota_backend = \"zfs\"", "host.quota_backend"),
        ("[retention]\nattempts = \"soon\"", "retention.attempts"),
        ("[slots]\npassword_length = -3", "slots.password_length"),
        ("stray = 1", "stray"),
        ("[slots\n", "not valid TOML"),
    ],
)
def test_errors_name_the_key(doc: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config_text(doc)


def test_every_section_is_modelled_and_unknown_ones_refused() -> None:
    cfg = load_config_text("[guard]\npair_deny = 3\n")
    assert cfg.guard.pair_deny == 3 and cfg.guard_config().pair_deny == 3
    with pytest.raises(ConfigError, match=r"^gaurd: unknown key$"):
        load_config_text("[gaurd]\npair_deny = 3\n")


def test_named_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.toml")


@given(st.text(max_size=200))
def test_any_document_loads_or_raises_config_error(doc: str) -> None:
    try:
        load_config_text(doc)
    except ConfigError as exc:
        assert str(exc)
