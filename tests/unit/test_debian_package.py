"""The package's sources agree with the code: version, default config, socket path, profiles."""

from __future__ import annotations

import configparser
import dataclasses
import re
import tomllib
from pathlib import Path

from pam_hooks.config import GuardConfig, load_guard_config
from pam_hooks.install import pam_auth_update_profiles
from provisioner.config import load_config, load_config_text

DEBIAN = Path(__file__).resolve().parents[2] / "debian"


def test_changelog_version_is_the_python_version() -> None:
    first = (DEBIAN / "changelog").read_text().split("\n", 1)[0]
    deb_version = re.match(r"slotwarden \(([^)]+)\)", first)
    assert deb_version is not None
    pyproject = tomllib.loads((DEBIAN.parent / "pyproject.toml").read_text())
    assert deb_version.group(1).split("-")[0] == pyproject["project"]["version"]


def test_the_shipped_config_is_the_defaults() -> None:
    shipped = load_config(DEBIAN / "slotwarden.toml")
    defaults = load_config_text("")
    assert dataclasses.replace(shipped, path=None) == defaults
    assert load_guard_config(DEBIAN / "slotwarden.toml") == GuardConfig()


def _unit(name: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEBIAN / "systemd" / name)
    return unit


def test_guard_socket_is_the_configured_one_and_comes_before_sshd() -> None:
    sock = _unit("slotwarden-guard.socket")
    assert sock["Socket"]["ListenStream"] == str(GuardConfig().socket)
    assert sock["Socket"]["SocketMode"] == "0600"
    assert "ssh.service" in sock["Unit"]["Before"].split()
    # tenants traverse /run/slotwarden to their metrics facts (metrics.facts_dir lives below it)
    assert int(sock["Socket"]["DirectoryMode"], 8) & 0o001
    from provisioner.metrics import MetricsConfig

    assert MetricsConfig().facts_dir.parent == GuardConfig().socket.parent
    tmpfiles = (DEBIAN / "slotwarden.tmpfiles").read_text()
    assert "d /run/slotwarden 0755 root root -" in tmpfiles
    service = _unit("slotwarden-guard.service")
    assert "slotwarden-guard.socket" in service["Unit"]["Requires"]
    assert service["Service"]["ExecStart"] == "/usr/sbin/slotctl guard serve"


def test_every_unit_runs_an_installed_command() -> None:
    for path in (DEBIAN / "systemd").glob("*.service"):
        exec_start = _unit(path.name)["Service"]["ExecStart"]
        assert exec_start.startswith("/usr/sbin/slotctl "), path.name


def test_profiles_default_on_only_for_the_package() -> None:
    cfg = GuardConfig()
    for text in pam_auth_update_profiles(cfg).values():
        assert "Default: no\n" in text
    for text in pam_auth_update_profiles(cfg, enabled_by_default=True).values():
        assert "Default: yes\n" in text


def test_bundled_requirements_are_pinned_with_hashes() -> None:
    lines = [ln for ln in (DEBIAN / "bundled-requirements.txt").read_text().splitlines()
             if ln and not ln.startswith("#")]
    assert lines
    for ln in lines:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][^ ]* --hash=sha256:[0-9a-f]{64}", ln), ln
    names = {ln.split("==")[0].lower().replace("_", "-") for ln in lines}
    # what Debian provides is not bundled
    assert not names & {"click", "rich", "psutil", "pyroute2", "cryptography"}
