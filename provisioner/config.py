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
    # Slot UIDs (and their private groups' GIDs, the same number) come from this range and are
    # never handed out twice. The default lies between nobody (65534) and the subordinate-ID
    # range shadow-utils hands out (SUB_UID_MIN 100000), outside useradd's UID_MIN..UID_MAX:
    # nothing else on a Debian host allocates from it. 34,464 slots over the host's lifetime;
    # a host that will sell more picks a range above SUB_UID_MAX (e.g. 700000000-799999999).
    uid_min: int = 65536
    uid_max: int = 99999
    # usrquota: one inode (file, directory, link) allowed per this many bytes of a slot's quota.
    bytes_per_inode: int = 16384


@dataclass(frozen=True)
class RetentionConfig:
    """Retention periods from the operator's data-handling policy, in seconds."""

    attempts: int = 24 * 3600
    keep_data_for: int = 30 * 24 * 3600


PLAN_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
# The resource limits a plan may carry, each enforced by the kernel (provisioner.limits).
LIMIT_KEYS = ("cpu_cores", "cpu_weight", "memory_max", "memory_high", "swap_max", "max_processes",
              "io_weight", "io_read_bps", "io_write_bps", "tmp_size")
MAX_CPU_CORES = 1024.0


@dataclass(frozen=True)
class ResourceLimits:
    """What a slot may use, as sold by its plan; None is unlimited.

    ``cpu_cores`` is a quota in cores (0.5 = half of one core's time); ``cpu_weight`` and
    ``io_weight`` are shares against other slots (1-10000, 100 = the default); sizes and
    bandwidths are bytes (per second for ``io_*_bps``, on the device holding the slot's home).

    >>> ResourceLimits(memory_max=1 << 30).as_dict()["memory_max"]
    1073741824
    """

    cpu_cores: float | None = None
    cpu_weight: int | None = None
    memory_max: int | None = None
    memory_high: int | None = None
    swap_max: int | None = None
    max_processes: int | None = None
    io_weight: int | None = None
    io_read_bps: int | None = None
    io_write_bps: int | None = None
    tmp_size: int | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        return {k: getattr(self, k) for k in LIMIT_KEYS}

    def set_keys(self) -> list[str]:
        """The limits that are set (not unlimited), in LIMIT_KEYS order."""
        return [k for k in LIMIT_KEYS if getattr(self, k) is not None]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResourceLimits:
        """From :meth:`as_dict` output (the store's copy); unknown keys are ignored."""
        return cls(**{k: data.get(k) for k in LIMIT_KEYS})


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
    cpu_cores: float | None = None
    cpu_weight: int | None = None
    memory_max: int | None = None
    memory_high: int | None = None
    swap_max: int | None = None
    io_weight: int | None = None
    io_read_bps: int | None = None
    io_write_bps: int | None = None
    tmp_size: int | None = None

    @property
    def limits(self) -> ResourceLimits:
        """The plan's resource limits (``max_processes`` among them)."""
        return ResourceLimits(**{k: getattr(self, k) for k in LIMIT_KEYS})


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


def refuse_unknown_keys(table: dict[str, Any], section: str, known: set[str]) -> None:
    """ConfigError naming the first key of TABLE that section SECTION does not know."""
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{section}.{unknown[0]}: unknown key")


def absolute_path(value: object, key: str) -> Path:
    """VALUE as an absolute path (ConfigError naming KEY otherwise)."""
    if not isinstance(value, str) or not value.startswith("/") or "\x00" in value:
        raise ConfigError(f"{key}: expected an absolute path")
    return Path(value)


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
    unknown = sorted(set(table) - {"quota", "apps", "max_apps", "description", *LIMIT_KEYS})
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
    max_apps = table.get("max_apps")
    if max_apps is not None and (isinstance(max_apps, bool) or not isinstance(max_apps, int) or max_apps < 0):
        raise ConfigError(f"{key}.max_apps: expected a non-negative integer")
    description = table.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{key}.description: expected a string")
    limits = parse_limits(key, table)
    return PlanConfig(name, quota, apps, max_apps, limits.max_processes, description,
                      cpu_cores=limits.cpu_cores, cpu_weight=limits.cpu_weight, memory_max=limits.memory_max,
                      memory_high=limits.memory_high, swap_max=limits.swap_max, io_weight=limits.io_weight,
                      io_read_bps=limits.io_read_bps, io_write_bps=limits.io_write_bps, tmp_size=limits.tmp_size)


def _share(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10000:
        raise ConfigError(f"{key}: expected a weight from 1 to 10000 (100 is the default share)")
    return value


def _limit_size(key: str, value: object) -> int:
    try:
        return parse_size(value)
    except Exception as exc:
        raise ConfigError(f"{key}: {exc}") from None


def parse_limits(where: str, table: dict[str, Any]) -> ResourceLimits:
    """The limit keys of TABLE (a plan) validated; every error names ``WHERE.KEY``.

    >>> parse_limits("plans.x", {"cpu_cores": 0.5, "memory_max": "512M"}).memory_max
    536870912
    """
    values: dict[str, Any] = {}
    for name in LIMIT_KEYS:
        if name not in table:
            continue
        value, key = table[name], f"{where}.{name}"
        if name == "cpu_cores":
            if (isinstance(value, bool) or not isinstance(value, (int, float)) or value != value
                    or not 0.01 <= value <= MAX_CPU_CORES):
                raise ConfigError(f"{key}: expected a number of cores from 0.01 to {MAX_CPU_CORES:g} "
                                  "(0.5 = half a core)")
            values[name] = float(value)
        elif name in ("cpu_weight", "io_weight"):
            values[name] = _share(key, value)
        elif name == "max_processes":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{key}: expected a non-negative integer")
            if value > 4194304:
                raise ConfigError(f"{key}: at most 4194304 (the kernel's pid_max)")
            values[name] = value
        elif name == "swap_max" and value in (0, "0"):
            values[name] = 0  # no swap at all
        else:
            values[name] = _limit_size(key, value)
    limits = ResourceLimits(**values)
    if limits.memory_high is not None and limits.memory_max is not None and limits.memory_high > limits.memory_max:
        raise ConfigError(f"{where}.memory_high: larger than memory_max; reclaim must start below the hard limit")
    return limits


_SECTIONS: dict[str, type[Any]] = {"host": HostConfig, "slots": SlotsConfig, "retention": RetentionConfig}

# Ids no slot may ever get: below 1000 is the system's, 65534/65535 are nobody and the 16-bit
# -1, and from 2^31 on tools that keep ids in a signed int break.
ID_FLOOR = 1000
ID_CEILING = (1 << 31) - 1
_RESERVED_IDS = frozenset({65534, 65535})


def check_id_range(slots: SlotsConfig) -> None:
    """Refuse a slot id range that is empty, reaches system or reserved ids, or is too high.

    >>> check_id_range(SlotsConfig(uid_min=70000, uid_max=60000))
    Traceback (most recent call last):
    ...
    provisioner.errors.ConfigError: slots.uid_max: must be above slots.uid_min (70000)
    """
    if slots.uid_min < ID_FLOOR:
        raise ConfigError(f"slots.uid_min: must be at least {ID_FLOOR} (below are system accounts)")
    if slots.uid_max <= slots.uid_min:
        raise ConfigError(f"slots.uid_max: must be above slots.uid_min ({slots.uid_min})")
    if slots.uid_max > ID_CEILING:
        raise ConfigError(f"slots.uid_max: must be at most {ID_CEILING}")
    inside = sorted(i for i in _RESERVED_IDS if slots.uid_min <= i <= slots.uid_max)
    if inside:
        raise ConfigError(f"slots.uid_min: the range {slots.uid_min}-{slots.uid_max} holds reserved id {inside[0]}")


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
    check_id_range(kwargs.get("slots", SlotsConfig()))
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
