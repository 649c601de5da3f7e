"""The one configuration file: TOML, loaded into a tree of frozen dataclasses, validated at load.

Where it is: ``$SLOTWARDEN_CONFIG`` or ``/etc/slotwarden/slotwarden.toml``. A missing file
means "all defaults" (the embedded default of a one-machine install). Every error names the key.

>>> cfg = load_config_text('state_dir = "/tmp/sw"\\n[slots]\\ndefault_quota = "1G"\\n')
>>> cfg.slots.default_quota
1073741824
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from provisioner.errors import ConfigError
from provisioner.names import parse_size

DEFAULT_CONFIG_PATH = Path("/etc/slotwarden/slotwarden.toml")
DEFAULT_STATE_DIR = Path("/var/lib/slotwarden")


@dataclass(frozen=True)
class HostConfig:
    """How this host keeps slots (``host init`` records what it actually set up in the store)."""

    slots_root: Path = Path("/home")
    quota_backend: str = "auto"
    admin_group: str = "slotwarden-admin"
    hidepid: bool = True
    supervisor: str = "auto"
    # Where `host init --loopback-image` puts the slots root when none is named: mounting an
    # image over /home would hide the homes already there.
    loopback_slots_root: Path = Path("/srv/slots")


@dataclass(frozen=True)
class SlotsConfig:
    """Defaults for new slots."""

    default_quota: int = 1 << 30
    skeleton: Path = Path("/etc/skel")
    shell: str = "/bin/bash"
    password_length: int = 22


@dataclass(frozen=True)
class RetentionConfig:
    """Retention periods from the operator's data-handling policy, in seconds."""

    attempts: int = 24 * 3600
    keep_data_for: int = 30 * 24 * 3600


PLAN_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


@dataclass(frozen=True)
class PlanConfig:
    """One ``[plans.NAME]`` table: what a slot sold under NAME gets.

    ``apps`` None means every app of the catalog; ``max_apps``/``max_processes`` None mean no limit.
    """

    name: str
    quota: int
    apps: tuple[str, ...] | None = None
    max_apps: int | None = None
    max_processes: int | None = None
    description: str = ""


@dataclass(frozen=True)
class Config:
    """The whole configuration. Unknown sections are kept raw in ``extra`` for their owners."""

    state_dir: Path = DEFAULT_STATE_DIR
    host: HostConfig = field(default_factory=HostConfig)
    slots: SlotsConfig = field(default_factory=SlotsConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    plans: dict[str, PlanConfig] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def db_path(self) -> Path:
        return self.state_dir / "slotwarden.db"

    def section(self, name: str) -> dict[str, Any]:
        """The raw table of a section another package validates itself (e.g. ``guard``)."""
        value = self.extra.get(name, {})
        return value if isinstance(value, dict) else {}


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object, key: str) -> int:
    """Seconds from an int or a string like ``15m``, ``24h``, ``30d``."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration like 15m, got {value!r}")
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and len(value) >= 2 and value[:-1].isdigit() and value[-1] in _DURATION_UNITS:
        return int(value[:-1]) * _DURATION_UNITS[value[-1]]
    raise ConfigError(f"{key}: expected a duration like 15m, 24h or 30d, got {str(value)[:40]!r}")


def absolute_paths(section: str, table: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Path]:
    """The KEYS of a raw section TABLE that are present, each an absolute path (errors name the key)."""
    out: dict[str, Path] = {}
    for key in keys:
        if key in table:
            v = table[key]
            if not isinstance(v, str) or not v.startswith("/"):
                raise ConfigError(f"{section}.{key}: expected an absolute path")
            out[key] = Path(v)
    return out


def _convert(key: str, current: object, value: object) -> object:
    """Coerce VALUE to the type of the default CURRENT, naming KEY on error."""
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false")
        return value
    if isinstance(current, Path):
        if not isinstance(value, str) or not value.startswith("/"):
            raise ConfigError(f"{key}: expected an absolute path")
        return Path(value)
    if isinstance(current, int):
        if key.endswith(("quota", "size")):
            try:
                return parse_size(value)
            except Exception as exc:
                raise ConfigError(f"{key}: {exc}") from None
        if key.startswith("retention."):
            return parse_duration(value, key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{key}: expected a positive integer")
        return value
    if isinstance(current, str):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a non-empty string")
        return value
    raise ConfigError(f"{key}: unsupported value")  # pragma: no cover


def _section(cls: type[Any], table: object, name: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{name}: expected a table")
    defaults = cls()
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}: unknown key")
    values = {k: _convert(f"{name}.{k}", getattr(defaults, k), v) for k, v in table.items()}
    return cls(**values)


def _plan(name: str, table: object) -> PlanConfig:
    """Validate one ``[plans.NAME]`` table; every error names its key."""
    key = f"plans.{name}"
    if not name or not name[0].isalpha() or not set(name) <= PLAN_NAME_CHARS or len(name) > 32:
        raise ConfigError(f"{key}: a plan name is 1-32 of a-z 0-9 _ -, starting with a letter")
    if not isinstance(table, dict):
        raise ConfigError(f"{key}: expected a table")
    unknown = sorted(set(table) - {"quota", "apps", "max_apps", "max_processes", "description"})
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown key")
    if "quota" not in table:
        raise ConfigError(f"{key}.quota: missing (every plan has a disk quota, e.g. \"5G\")")
    try:
        quota = parse_size(table["quota"])
    except Exception as exc:
        raise ConfigError(f"{key}.quota: {exc}") from None
    apps: tuple[str, ...] | None = None
    if "apps" in table:
        raw = table["apps"]
        if not isinstance(raw, list) or not all(isinstance(a, str) and a for a in raw):
            raise ConfigError(f"{key}.apps: expected a list of app names")
        apps = tuple(dict.fromkeys(raw))
    limits: dict[str, int | None] = {}
    for limit in ("max_apps", "max_processes"):
        value = table.get(limit)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ConfigError(f"{key}.{limit}: expected a non-negative integer")
        limits[limit] = value
    description = table.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{key}.description: expected a string")
    return PlanConfig(name, quota, apps, limits["max_apps"], limits["max_processes"], description)


_SECTIONS: dict[str, type[Any]] = {"host": HostConfig, "slots": SlotsConfig, "retention": RetentionConfig}


def load_config_text(text: str, path: Path | None = None) -> Config:
    """Parse and validate a TOML document."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path or 'config'}: not valid TOML: {exc}") from None
    kwargs: dict[str, Any] = {"path": path}
    extra: dict[str, Any] = {}
    for key, value in data.items():
        if key == "state_dir":
            kwargs["state_dir"] = _convert("state_dir", DEFAULT_STATE_DIR, value)
        elif key in _SECTIONS:
            kwargs[key] = _section(_SECTIONS[key], value, key)
        elif key == "plans":
            if not isinstance(value, dict):
                raise ConfigError("plans: expected tables like [plans.small]")
            kwargs["plans"] = {name: _plan(name, table) for name, table in value.items()}
        elif isinstance(value, dict):
            extra[key] = value
        else:
            raise ConfigError(f"{key}: unknown key")
    host: HostConfig = kwargs.get("host", HostConfig())
    if host.quota_backend not in {"auto", "btrfs", "usrquota", "none"}:
        raise ConfigError("host.quota_backend: expected auto, btrfs, usrquota or none")
    return Config(extra=extra, **kwargs)


def config_path() -> Path:
    """Where the configuration is read from."""
    env = os.environ.get("SLOTWARDEN_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG_PATH


def load_config(path: Path | None = None) -> Config:
    """Load the configuration; a missing file at the default path means all defaults."""
    path = path or config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if path != DEFAULT_CONFIG_PATH:
            raise ConfigError(f"{path}: no such config file") from None
        return Config(path=None)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return load_config_text(text, path)
