"""The ``[hub]`` section: where the Hub listens, its TLS files, its user, its PAM service, timeouts.

>>> cfg = HubConfig.from_section({"listen": "127.0.0.1:9443", "idle_timeout": "10m"}, Path("/var/lib/sw"))
>>> cfg.listen, cfg.idle_timeout, cfg.cert.name
('127.0.0.1:9443', 600, 'hub.crt')
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner.config import Config, absolute_paths, parse_duration
from provisioner.errors import ConfigError

_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_SERVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
KEYS = frozenset({"listen", "cert", "key", "user", "bridge_socket", "pam_service", "idle_timeout",
                  "absolute_timeout", "fail_floor_ms", "public_url", "history_every", "web_socket", "fence_table",
                  "responses_every"})


@dataclass(frozen=True)
class HubConfig:
    """Validated ``[hub]`` settings (defaults: a one-machine install)."""

    listen: str = "0.0.0.0:8443"
    cert: Path = Path("/var/lib/slotwarden/hub/hub.crt")
    key: Path = Path("/var/lib/slotwarden/hub/hub.key")
    user: str = "slotwarden-hub"
    bridge_socket: Path = Path("/run/slotwarden/hub-bridge.sock")
    # The web process listens here; only nginx's workers (the Hub's user) can connect.
    web_socket: Path = Path("/run/slotwarden/hub-web/hub.sock")
    pam_service: str = "slotwarden-hub"
    idle_timeout: int = 30 * 60
    absolute_timeout: int = 12 * 3600
    # Every refused login is answered no sooner than this after it arrived: wrong password,
    # unknown name, locked, suspended all look alike from outside.
    fail_floor_ms: int = 1500
    public_url: str = ""
    # How often the bridge samples every slot into the charts' history.
    history_every: int = 300
    # The nftables table (family inet) that fences app ports to their slots (appfence).
    fence_table: str = "slotwarden_apps"
    # How often the web process hands its response counts to the bridge (one audit row each).
    responses_every: int = 60

    @classmethod
    def from_section(cls, table: dict[str, Any], state_dir: Path) -> HubConfig:
        """Validate the raw table; every error names its key."""
        unknown = sorted(set(table) - KEYS)
        if unknown:
            raise ConfigError(f"hub.{unknown[0]}: unknown key")
        values: dict[str, Any] = {"cert": state_dir / "hub" / "hub.crt", "key": state_dir / "hub" / "hub.key"}
        values.update(absolute_paths("hub", table, ("cert", "key", "bridge_socket", "web_socket")))
        for key, pattern in (("user", _NAME), ("pam_service", _SERVICE), ("fence_table", _NAME)):
            if key in table:
                v = table[key]
                if not isinstance(v, str) or not pattern.fullmatch(v):
                    raise ConfigError(f"hub.{key}: invalid name")
                values[key] = v
        for key in ("idle_timeout", "absolute_timeout", "history_every", "responses_every"):
            if key in table:
                values[key] = parse_duration(table[key], f"hub.{key}")
                if values[key] <= 0:
                    raise ConfigError(f"hub.{key}: must be positive")
        if "fail_floor_ms" in table:
            v = table["fail_floor_ms"]
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 60000:
                raise ConfigError("hub.fail_floor_ms: expected 0-60000")
            values["fail_floor_ms"] = v
        for key in ("listen", "public_url"):
            if key in table:
                v = table[key]
                if not isinstance(v, str) or any(c in v for c in "\r\n\x00 <>\"'"):
                    raise ConfigError(f"hub.{key}: expected a string without spaces or markup")
                values[key] = v
        return cls(**values)


def hub_config(config: Config) -> HubConfig:
    """The ``[hub]`` section of CONFIG."""
    return HubConfig.from_section(config.section("hub"), config.state_dir)
