"""The ``[guard]`` section of the slotwarden TOML file, parsed with the stdlib only.

pam_hooks never imports the provisioner, so it reads its own section here (plus ``state_dir``,
``[host] admin_group`` and ``[retention] attempts``), in the value grammar of
:mod:`pam_hooks.grammar`. The provisioner's model validates ``[guard]`` with the same rules
(``provisioner.config.GuardSection``; a property test holds the two together).

>>> cfg = parse_guard({"guard": {"pair_deny": 3, "window": "10m"}})
>>> (cfg.pair_deny, cfg.window)
(3, 600.0)
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pam_hooks import grammar

DEFAULT_CONFIG = Path("/etc/slotwarden/slotwarden.toml")
DEFAULT_STATE_DIR = Path("/var/lib/slotwarden")
DEFAULT_SOCKET = Path("/run/slotwarden/guard.sock")


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_STORE_PASSWORD_FILE = Path("/etc/slotwarden/guard-store.password")
_PG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,62}$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")
_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class GuardConfigError(ValueError):
    """A ``[guard]`` value is wrong; the message names the key."""


@dataclass(frozen=True)
class StoreURL:
    """Where the fleet's shared guard store is: ``postgresql://user@host:port/db`` (never a password).

    >>> str(parse_store_url("postgresql://guard@198.51.100.5/fleet"))
    'postgresql://guard@198.51.100.5:5432/fleet'
    """

    user: str
    host: str
    port: int
    dbname: str

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql://{self.user}@{host}:{self.port}/{self.dbname}"


def parse_store_host(value: object) -> str:
    """Validate ``guard.store_host``: this host's name in the shared store."""
    if not isinstance(value, str) or not _NODE.match(value):
        raise GuardConfigError(f"guard.store_host: expected a host name (letters, digits, . _ -), got {value!r}")
    return value


def parse_store_url(value: object) -> StoreURL:
    """Validate ``guard.store``; a password in the URL is refused (it belongs in the password file)."""
    if not isinstance(value, str) or not value.isascii() or not value.isprintable():
        raise GuardConfigError(f"guard.store: expected a postgresql://user@host:port/db URL, got {value!r}")
    bad = f"guard.store: expected postgresql://user@host:port/db, got {value!r}"
    try:
        u = urlsplit(value)
        port = u.port
    except ValueError:
        raise GuardConfigError(bad) from None
    if u.scheme != "postgresql" or u.query or u.fragment or "@" not in u.netloc:
        raise GuardConfigError(bad)
    if u.password is not None:
        raise GuardConfigError("guard.store: no password in the URL; it goes in guard.store_password_file")
    user, host, db = u.username or "", u.hostname or "", u.path[1:] if u.path.startswith("/") else ""
    if not _PG_NAME.match(user) or not _PG_NAME.match(db):
        raise GuardConfigError(bad)
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        if not _HOST_NAME.match(host):
            raise GuardConfigError(bad) from None
    if port == 0:
        raise GuardConfigError(bad)
    return StoreURL(user, host, port or 5432, db)


@dataclass(frozen=True)
class GuardConfig:
    """Lockout policy and service settings; durations are seconds."""

    pair_deny: int = 5
    window: float = 900.0
    ip_deny: int = 20
    ipv6_prefix: int = 64
    user_deny: int = 50
    lock_for: float = 900.0
    lock_max: float = 86400.0
    allow: tuple[Network, ...] = ()
    deny_root: bool = True
    fail_mode: str = "open"
    socket: Path = DEFAULT_SOCKET
    network_block: bool = False
    retention: float = 86400.0
    state_dir: Path = DEFAULT_STATE_DIR
    # How long a reservation may stay without an outcome before it is marked
    # failed (it already counts as a failure while pending).
    reservation_ttl: float = 120.0
    timeout_ms: int = 500
    # How long an origin where a user logged in with a password stays "known"
    # (the per-username rule never refuses her there).
    known_for: float = 30 * 86400.0
    # Members of this group (and root) are never locked at the console (local:root).
    admin_group: str = "slotwarden-admin"
    # Where the service's syslog lines go (a datagram socket).
    syslog_socket: Path = Path("/dev/log")
    # The fleet's shared store (None: this host's SQLite alone), its root-only password file and
    # the name this host's records carry there.
    store: StoreURL | None = None
    store_password_file: Path = DEFAULT_STORE_PASSWORD_FILE
    store_host: str = field(default_factory=lambda: socket.gethostname()[:64] or "localhost")
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def db_path(self) -> Path:
        """The attempt store: ``<state_dir>/guard.db``."""
        return self.state_dir / "guard.db"


def parse_duration(key: str, value: object, section: str = "guard") -> float:
    """Seconds (> 0) in the grammar of :mod:`pam_hooks.grammar`; errors name ``section.key``."""
    try:
        seconds = grammar.parse_duration(value)
    except ValueError as exc:
        raise GuardConfigError(f"{section}.{key}: {exc}") from None
    if seconds <= 0:
        raise GuardConfigError(f"{section}.{key}: must be positive, got {grammar.shown(value)}")
    return seconds


def _int(key: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise GuardConfigError(f"guard.{key}: expected an integer {lo}..{hi}, got {value!r}")
    return value


def _bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise GuardConfigError(f"guard.{key}: expected true or false, got {value!r}")
    return value


def _path(key: str, value: object) -> Path:
    try:
        return Path(grammar.absolute_path(value))
    except ValueError as exc:
        raise GuardConfigError(f"guard.{key}: {exc}") from None


def _allow(value: object) -> tuple[Network, ...]:
    try:
        return grammar.parse_networks(value)
    except ValueError as exc:
        raise GuardConfigError(f"guard.allow: {exc}") from None


_KNOWN = {
    "pair_deny", "window", "ip_deny", "ipv6_prefix", "user_deny", "lock_for", "lock_max",
    "allow", "deny_root", "fail_mode", "socket", "network_block",
    "reservation_ttl", "timeout_ms", "known_for", "syslog_socket", "store", "store_password_file", "store_host",
}


def parse_guard(doc: dict[str, Any]) -> GuardConfig:
    """Build a GuardConfig from a parsed TOML document (top-level ``state_dir`` + ``[guard]``)."""
    section = doc.get("guard", {})
    if not isinstance(section, dict):
        raise GuardConfigError("guard: expected a table")
    unknown = sorted(set(section) - _KNOWN)
    if unknown == ["retention"]:
        raise GuardConfigError("guard.retention: unknown key (the records' retention is [retention] attempts)")
    if unknown:
        raise GuardConfigError(f"guard.{unknown[0]}: unknown key")
    kw: dict[str, Any] = {}
    for key in ("pair_deny", "ip_deny", "user_deny"):
        if key in section:
            kw[key] = _int(key, section[key], 1, 1_000_000)
    if "ipv6_prefix" in section:
        kw["ipv6_prefix"] = _int("ipv6_prefix", section["ipv6_prefix"], 1, 128)
    if "timeout_ms" in section:
        kw["timeout_ms"] = _int("timeout_ms", section["timeout_ms"], 1, 60_000)
    for key in ("window", "lock_for", "lock_max", "reservation_ttl", "known_for"):
        if key in section:
            kw[key] = parse_duration(key, section[key])
    for key in ("deny_root", "network_block"):
        if key in section:
            kw[key] = _bool(key, section[key])
    if "fail_mode" in section:
        if section["fail_mode"] not in ("open", "closed"):
            raise GuardConfigError(f"guard.fail_mode: expected 'open' or 'closed', got {section['fail_mode']!r}")
        kw["fail_mode"] = section["fail_mode"]
    if "socket" in section:
        kw["socket"] = _path("socket", section["socket"])
    if "syslog_socket" in section:
        kw["syslog_socket"] = _path("syslog_socket", section["syslog_socket"])
    # One key decides how long attempt records live, for the guard and `retention run` alike.
    retention = doc.get("retention", {})
    if isinstance(retention, dict) and "attempts" in retention:
        kw["retention"] = parse_duration("attempts", retention["attempts"], "retention")
    host = doc.get("host", {})
    if isinstance(host, dict) and isinstance(host.get("admin_group"), str) and host["admin_group"]:
        kw["admin_group"] = host["admin_group"]
    if "allow" in section:
        kw["allow"] = _allow(section["allow"])
    if "store" in section:
        kw["store"] = parse_store_url(section["store"])
    if "store_password_file" in section:
        kw["store_password_file"] = _path("store_password_file", section["store_password_file"])
    if "store_host" in section:
        kw["store_host"] = parse_store_host(section["store_host"])
    state_dir = doc.get("state_dir")
    if state_dir is not None:
        try:
            kw["state_dir"] = _path("state_dir", state_dir)
        except GuardConfigError:
            raise GuardConfigError(f"state_dir: expected an absolute path, got {state_dir!r}") from None
    cfg = GuardConfig(**kw)
    if cfg.lock_max < cfg.lock_for:
        raise GuardConfigError("guard.lock_max: must be at least guard.lock_for")
    return cfg


def config_path() -> Path:
    """The config file in force: ``$SLOTWARDEN_CONFIG`` or the default."""
    env = os.environ.get("SLOTWARDEN_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


def load_guard_config(path: Path | None = None) -> GuardConfig:
    """Read the TOML file (missing default file means all defaults)."""
    path = path or config_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if path == DEFAULT_CONFIG:
            return GuardConfig()
        raise GuardConfigError(f"config file {path} does not exist") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise GuardConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_guard(doc)
