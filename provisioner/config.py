"""The one configuration file, modelled: TOML validated at load into a tree of frozen dataclasses.

Where it is: ``$SLOTWARDEN_CONFIG`` or ``/etc/slotwarden/slotwarden.toml``. A missing file
means "all defaults" (the embedded default of a one-machine install). Every section is a
pydantic dataclass below; every key a field with its type, default and description, and the
reference (``docs/configuration.md``) and the commented default file (``debian/slotwarden.toml``)
are generated from them (:mod:`provisioner.configdoc`). Unknown keys are refused. Every error is
one line naming the key (``section.key: reason``). Durations and sizes have one grammar for
every key, :mod:`pam_hooks.grammar`, which the guard service reads too.

>>> cfg = load_config_text('state_dir = "/tmp/sw"\\n[slots]\\ndefault_quota = "1G"\\n[hub]\\nidle_timeout = "1.5h"\\n')
>>> cfg.slots.default_quota, cfg.hub.idle_timeout, cfg.hub.cert
(1073741824, 5400, PosixPath('/tmp/sw/hub/hub.crt'))
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import asdict, field, fields
from dataclasses import dataclass as std_dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import ConfigDict, Field, PlainValidator, TypeAdapter, ValidationError, model_validator
from pydantic.dataclasses import dataclass, is_pydantic_dataclass

from pam_hooks import grammar
from pam_hooks.config import DEFAULT_STORE_PASSWORD_FILE, GuardConfig, GuardConfigError, Network, StoreURL
from pam_hooks.config import parse_store_host as _parse_guard_store_host
from pam_hooks.config import parse_store_url as _parse_guard_store
from provisioner.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/slotwarden/slotwarden.toml")
DEFAULT_STATE_DIR = Path("/var/lib/slotwarden")
# Unknown keys are refused; values are only what the validators below make of them.
_MODEL = ConfigDict(extra="forbid", arbitrary_types_allowed=True, defer_build=True)
T = TypeVar("T")


class Kind:
    """How a field's value is written, for the generated reference (``Annotated`` metadata).

    A choice's label is computed when asked: the options live in the backends' maps.
    """

    def __init__(self, label: str | Callable[[], list[str]]) -> None:
        self._label = label

    @property
    def label(self) -> str:
        return self._label if isinstance(self._label, str) else " | ".join(self._label())


# --- the value types: each one validator, whose ValueError is the reason after the key ---------


def _optional(check: Callable[[object], T]) -> Callable[[object], T | None]:
    return lambda value: None if value is None else check(value)


def _abs_path(value: object) -> Path:
    return Path(grammar.absolute_path(str(value) if isinstance(value, Path) else value))


def _abs_path_text(value: object) -> str:
    return str(_abs_path(value))


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {grammar.shown(value)}")
    return value


def _size(value: object) -> int:
    return grammar.parse_size(value)


def _size_or_zero(value: object) -> int:
    return 0 if value in (0, "0") and not isinstance(value, bool) else grammar.parse_size(value)


def _seconds(value: object) -> int:
    """Whole seconds, more than zero: the keys whose users count in whole seconds."""
    seconds = grammar.parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be positive, got {grammar.shown(value)}")
    if seconds != int(seconds):
        raise ValueError(f"expected whole seconds, got {grammar.shown(value)}")
    return int(seconds)


def _duration(value: object) -> float:
    """Seconds, more than zero, fractions allowed: the guard's keys (as pam_hooks.config reads them)."""
    seconds = grammar.parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be positive, got {grammar.shown(value)}")
    return seconds


def _int(lo: int, hi: int, what: str = "an integer") -> Callable[[object], int]:
    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected {what} {lo}..{hi}, got {grammar.shown(value)}")
        if not lo <= value <= hi:
            raise ValueError(f"expected {what} {lo}..{hi}, got {value}")
        return value
    return check


def _number(lo: float, hi: float, what: str) -> Callable[[object], float]:
    def check(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not lo <= value <= hi:
            raise ValueError(f"expected {what}, got {grammar.shown(value)}")
        return float(value)
    return check


def _text(pattern: str, what: str) -> Callable[[object], str]:
    compiled = re.compile(pattern)

    def check(value: object) -> str:
        if not isinstance(value, str) or not compiled.fullmatch(value):
            raise ValueError(f"expected {what}, got {grammar.shown(value)}")
        return value
    return check


def _choice(options: Callable[[], list[str]]) -> Callable[[object], str]:
    """One of OPTIONS (resolved at validation: the backend maps live with their backends)."""
    def check(value: object) -> str:
        allowed = options()
        if not isinstance(value, str) or value not in allowed:
            raise ValueError(f"expected {' | '.join(allowed)}, got {grammar.shown(value)}")
        return value
    return check


def _backends(module: str, *extra: str) -> Callable[[], list[str]]:
    def names() -> list[str]:
        import importlib

        return [*extra, *sorted(importlib.import_module(module).BACKENDS)]
    return names


def _strings(what: str, item: Callable[[str], bool]) -> Callable[[object], tuple[str, ...]]:
    def check(value: object) -> tuple[str, ...]:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and item(v) for v in value):
            raise ValueError(f"expected {what}, got {grammar.shown(value)}")
        return tuple(value)
    return check


AbsPath = Annotated[Path, PlainValidator(_abs_path), Kind("absolute path")]
AbsPathText = Annotated[str, PlainValidator(_abs_path_text), Kind("absolute path")]
Bool = Annotated[bool, PlainValidator(_bool), Kind("true | false")]
Size = Annotated[int, PlainValidator(_size), Kind("size (bytes, or 500M, 5G, 1T)")]
OptSize = Annotated[int | None, PlainValidator(_optional(_size)), Kind("size (bytes, or 500M, 5G, 1T)")]
Seconds = Annotated[int, PlainValidator(_seconds), Kind("duration (seconds, or 90s, 15m, 1.5h, 30d)")]
Duration = Annotated[float, PlainValidator(_duration), Kind("duration (seconds, or 90s, 15m, 1.5h, 30d)")]
Share = Annotated[int | None, PlainValidator(_optional(_int(1, 10000, "a weight"))), Kind("weight 1-10000")]
_NAME = r"[a-z_][a-z0-9_-]{0,31}"
_QUOTA = _backends("provisioner.quota", "auto")
_SUPERVISORS = _backends("provisioner.supervisor", "auto")
_METRICS = _backends("provisioner.metrics", "auto")
_LIMITS = _backends("provisioner.limits.steps", "auto")


def _FAIL_MODES() -> list[str]:
    return ["open", "closed"]


# --- sections -------------------------------------------------------------------------------


@dataclass(frozen=True, config=_MODEL)
class HostConfig:
    """``[host]``: how this host keeps slots (``host init`` records what it actually set up in the store)."""

    slots_root: AbsPath = Field(default=Path("/home"), description="where the slots' homes are made")
    quota_backend: Annotated[str, PlainValidator(_choice(_QUOTA)), Kind(_QUOTA)] = Field(
        default="auto", description="disk quota: btrfs qgroups, usrquota (ext4/xfs), none; auto detects")
    admin_group: Annotated[str, PlainValidator(_text(_NAME, "a group name")), Kind("group name")] = Field(
        default="slotwarden-admin", description="staff: exempt from hidepid, never locked at the console by the guard")
    hidepid: Bool = Field(default=True, description="`host init` mounts /proc hidepid=invisible (admin_group exempt)")
    supervisor: Annotated[str, PlainValidator(_choice(_SUPERVISORS)), Kind(_SUPERVISORS)] = Field(
        default="auto", description="what runs the apps and the guard")
    # Mounting an image over /home would hide the homes already there.
    loopback_slots_root: AbsPath = Field(
        default=Path("/srv/slots"), description="the slots root `host init --loopback-image` uses when none is named")


# Ids no slot may ever get: below 1000 is the system's, 65534/65535 are nobody and the 16-bit
# -1, and from 2^31 on tools that keep ids in a signed int break.
ID_FLOOR = 1000
ID_CEILING = (1 << 31) - 1
_RESERVED_IDS = frozenset({65534, 65535})
_Id = Annotated[int, PlainValidator(_int(0, 1 << 62, "an id")), Kind("integer")]


@dataclass(frozen=True, config=_MODEL)
class SlotsConfig:
    """``[slots]``: defaults for new slots and the id range they are numbered from."""

    default_quota: Size = Field(default=1 << 30, description="disk quota of a slot created without --quota or --plan")
    skeleton: AbsPath = Field(default=Path("/etc/skel"), description="copied into every new home")
    shell: AbsPathText = Field(default="/bin/bash", description="the slot user's login shell")
    password_length: Annotated[int, PlainValidator(_int(12, 128)), Kind("integer 12-128")] = Field(
        default=22, description="characters of a generated slot password (letters and digits)")
    # The default lies between nobody (65534) and the subordinate-ID range shadow-utils hands out
    # (SUB_UID_MIN 100000), outside useradd's UID_MIN..UID_MAX: nothing else on a Debian host
    # allocates from it. 34,464 slots over the host's lifetime; a host that will sell more picks a
    # range above SUB_UID_MAX (e.g. 700000000-799999999).
    uid_min: _Id = Field(default=65536, description="first slot UID (and private GID); ids are never handed out twice")
    uid_max: _Id = Field(default=99999, description="last slot UID; the range must not overlap login.defs' ranges")
    bytes_per_inode: Annotated[int, PlainValidator(_int(512, 1 << 30)), Kind("integer")] = Field(
        default=16384, description="usrquota: one inode (file, directory, link) per this many bytes of quota")

    @model_validator(mode="after")
    def _id_range(self) -> SlotsConfig:
        _check_id_range(self)
        return self


def _check_id_range(slots: SlotsConfig) -> None:
    """Refuse a slot id range that is empty, reaches system or reserved ids, or is too high.

    >>> validate_section(SlotsConfig, {"uid_min": 70000, "uid_max": 60000}, "slots")
    Traceback (most recent call last):
    ...
    provisioner.errors.ConfigError: slots.uid_max: must be above slots.uid_min (70000)
    """
    if slots.uid_min < ID_FLOOR:
        raise ValueError(f"uid_min: must be at least {ID_FLOOR} (below are system accounts)")
    if slots.uid_max <= slots.uid_min:
        raise ValueError(f"uid_max: must be above slots.uid_min ({slots.uid_min})")
    if slots.uid_max > ID_CEILING:
        raise ValueError(f"uid_max: must be at most {ID_CEILING}")
    inside = sorted(i for i in _RESERVED_IDS if slots.uid_min <= i <= slots.uid_max)
    if inside:
        raise ValueError(f"uid_min: the range {slots.uid_min}-{slots.uid_max} holds reserved id {inside[0]}")


@dataclass(frozen=True, config=_MODEL)
class RetentionConfig:
    """``[retention]``: periods from the operator's data-handling policy (``retention run`` applies them)."""

    attempts: Duration = Field(default=24 * 3600.0, description=(
        "failed-login records live this long: the guard purges by it and `retention run` lists and "
        "deletes by it"))
    keep_data_for: Seconds = Field(default=30 * 24 * 3600,
        description="homes removed with --keep-data are deleted after this")


PLAN_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
# The resource limits a plan may carry, each enforced by the kernel (provisioner.limits).
LIMIT_KEYS = ("cpu_cores", "cpu_weight", "memory_max", "memory_high", "swap_max", "max_processes",
              "io_weight", "io_read_bps", "io_write_bps", "tmp_size")
MAX_CPU_CORES = 1024.0


@dataclass(frozen=True, config=_MODEL, kw_only=True)
class ResourceLimits:
    """What a slot may use, as sold by its plan; None is unlimited.

    ``cpu_cores`` is a quota in cores (0.5 = half of one core's time); ``cpu_weight`` and
    ``io_weight`` are shares against other slots (1-10000, 100 = the default); sizes and
    bandwidths are bytes (per second for ``io_*_bps``, on the device holding the slot's home).

    >>> ResourceLimits(memory_max=1 << 30).as_dict()["memory_max"]
    1073741824
    """

    cpu_cores: Annotated[float | None, PlainValidator(_optional(_number(
        0.01, MAX_CPU_CORES, f"a number of cores from 0.01 to {MAX_CPU_CORES:g} (0.5 = half a core)"))),
        Kind("number 0.01-1024")] = Field(default=None,
        description="CPU quota in cores (0.5 = half of one core's time)")
    cpu_weight: Share = Field(default=None,
        description="CPU share against other slots when busy (100 = the default share)")
    memory_max: OptSize = Field(default=None, description="hard memory limit: the OOM killer acts inside the slot only")
    memory_high: OptSize = Field(default=None, description="memory reclaim starts here (at most memory_max)")
    swap_max: Annotated[int | None, PlainValidator(_optional(_size_or_zero)), Kind("size, or 0 for no swap")] = Field(
        default=None, description="swap the slot may use; 0: none")
    max_processes: Annotated[int | None, PlainValidator(_optional(_int(0, 4194304, "a number of processes"))),
                             Kind("integer 0-4194304")] = Field(default=None,
        description="processes and threads (pids)")
    io_weight: Share = Field(default=None, description="I/O share against other slots (cgroup v1: needs BFQ)")
    io_read_bps: OptSize = Field(default=None, description="read bandwidth per second on the device holding the home")
    io_write_bps: OptSize = Field(default=None, description="write bandwidth per second on the device holding the home")
    tmp_size: OptSize = Field(default=None,
        description="the slot's /tmp and /var/tmp: a tmpfs of this size, counted in its memory "
                    "(cgroup-v1 backend; refused under systemd)")

    @model_validator(mode="after")
    def _high_below_max(self) -> ResourceLimits:
        if self.memory_high is not None and self.memory_max is not None and self.memory_high > self.memory_max:
            raise ValueError("memory_high: larger than memory_max; reclaim must start below the hard limit")
        return self

    def as_dict(self) -> dict[str, float | int | None]:
        return {k: getattr(self, k) for k in LIMIT_KEYS}

    def set_keys(self) -> list[str]:
        """The limits that are set (not unlimited), in LIMIT_KEYS order."""
        return [k for k in LIMIT_KEYS if getattr(self, k) is not None]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResourceLimits:
        """From :meth:`as_dict` output (the store's copy); unknown keys are ignored."""
        return cls(**{k: data.get(k) for k in LIMIT_KEYS})


def _plan_name(value: object) -> str:
    if not isinstance(value, str) or not value or not value[0].isalpha() or not set(value) <= PLAN_NAME_CHARS \
            or len(value) > 32:
        raise ValueError("a plan name is 1-32 of a-z 0-9 _ -, starting with a letter")
    return value


def _app_names(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = _strings("a list of app names", bool)(value)
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True, config=_MODEL, kw_only=True)
class PlanConfig(ResourceLimits):
    """``[plans.NAME]``: what a slot sold under NAME gets, its resource limits among them.

    ``apps`` None means every app of the catalog; ``max_apps``/``max_processes`` None mean no limit.
    """

    name: Annotated[str, PlainValidator(_plan_name), Kind("internal")] = Field(
        description="the table's name: 1-32 of a-z 0-9 _ -, starting with a letter")
    quota: Size = Field(description="the slot's disk quota (required)")
    apps: Annotated[tuple[str, ...] | None, PlainValidator(_app_names), Kind("list of app names")] = Field(
        default=None, description="apps the plan allows (absent: every app of the catalog)")
    max_apps: Annotated[int | None, PlainValidator(_optional(_int(0, 10000))), Kind("integer")] = Field(
        default=None, description="apps installed at once (absent: no limit)")
    description: Annotated[str, PlainValidator(_text(r"[^\x00-\x1f\x7f]{0,200}", "one line of text")),
                           Kind("text")] = Field(default="", description="shown by `plan list` and the API")

    @property
    def limits(self) -> ResourceLimits:
        """The plan's resource limits (``max_processes`` among them)."""
        return ResourceLimits(**{k: getattr(self, k) for k in LIMIT_KEYS})


def _guard_rule(parse: Callable[[object], T]) -> Callable[[object], T]:
    """A rule of the guard's own reader (pam_hooks.config), its message without the key."""
    def check(value: object) -> T:
        try:
            return parse(value)
        except GuardConfigError as exc:
            raise ValueError(str(exc).partition(": ")[2]) from None
    return check


@dataclass(frozen=True, config=_MODEL)
class GuardSection:
    """``[guard]``: the login guard's lockout policy and service (read by the guard itself, stdlib only).

    The same rules as :func:`pam_hooks.config.parse_guard` (a property test holds the two
    together); :meth:`Config.guard_config` is the :class:`GuardConfig` the service builds.
    """

    pair_deny: Annotated[int, PlainValidator(_int(1, 1_000_000)), Kind("integer 1-1000000")] = Field(
        default=5, description="failures per (username, address) within window before the pair is locked")
    window: Duration = Field(default=900.0, description="how far back failures are counted")
    ip_deny: Annotated[int, PlainValidator(_int(1, 1_000_000)), Kind("integer 1-1000000")] = Field(
        default=20, description="failures per address across usernames (IPv6: per ipv6_prefix)")
    ipv6_prefix: Annotated[int, PlainValidator(_int(1, 128)), Kind("integer 1-128")] = Field(
        default=64, description="IPv6 addresses are counted per prefix of this length")
    user_deny: Annotated[int, PlainValidator(_int(1, 1_000_000)), Kind("integer 1-1000000")] = Field(
        default=50,
        description="failures per username across addresses (never root, never at a known origin, never keys)")
    lock_for: Duration = Field(default=900.0, description="first lock; doubles for repeat offenders...")
    lock_max: Duration = Field(default=86400.0, description="...up to this (at least lock_for)")
    allow: Annotated[tuple[Network, ...], PlainValidator(grammar.parse_networks), Kind("list of CIDRs")] = Field(
        default=(), description="addresses never locked")
    deny_root: Bool = Field(default=True, description="root too is locked per pair and address")
    fail_mode: Annotated[Literal["open", "closed"], PlainValidator(_choice(_FAIL_MODES)), Kind(_FAIL_MODES)] = Field(
        default="open", description="what the PAM module answers when the guard service is unreachable")
    socket: AbsPath = Field(default=Path("/run/slotwarden/guard.sock"),
                            description="the service's socket (also slotwarden-guard.socket's ListenStream)")
    network_block: Bool = Field(default=False, description="a blackhole route for a locked address (/64 for IPv6)")
    reservation_ttl: Duration = Field(
        default=120.0, description="an attempt without an outcome this long is marked failed (it counts meanwhile)")
    timeout_ms: Annotated[int, PlainValidator(_int(1, 60_000)), Kind("integer 1-60000")] = Field(
        default=500, description="how long the PAM module waits for the service")
    known_for: Duration = Field(default=30 * 86400.0,
        description="origins of past password logins stay known (user_deny spares them)")
    syslog_socket: AbsPath = Field(default=Path("/dev/log"), description="where the service's syslog lines go")
    store: Annotated[StoreURL | None, PlainValidator(_optional(_guard_rule(_parse_guard_store))),
                     Kind("postgresql://user@host:port/db")] = Field(
        default=None, description="the fleet's shared guard store (absent: this host's SQLite alone); "
                                  "no password in it")
    store_password_file: AbsPath = Field(default=DEFAULT_STORE_PASSWORD_FILE,
        description="the shared store's password: a root-only file")
    store_host: Annotated[str | None, PlainValidator(_optional(_guard_rule(_parse_guard_store_host))),
                          Kind("host name")] = Field(
        default=None, description="this host's name in the shared store (absent: its host name)")

    @model_validator(mode="after")
    def _lock_max(self) -> GuardSection:
        if self.lock_max < self.lock_for:
            raise ValueError("lock_max: must be at least guard.lock_for")
        return self


def _store_url(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith(("sqlite:///", "postgresql://", "postgres://")) \
            or any(c in value for c in "\r\n\x00 "):
        raise ValueError("expected sqlite:///path or postgresql://user@host:port/database")
    return value


@dataclass(frozen=True, config=_MODEL)
class StoreConfig:
    """``[store]``: where the provisioner's tables live (see :mod:`provisioner.db`)."""

    url: Annotated[str | None, PlainValidator(_store_url), Kind("sqlite:///path or postgresql://user@host:port/db")] \
        = Field(default=None,
                description="where the store is (absent: SQLite at <state_dir>/slotwarden.db); no password in it")
    password_file: Annotated[Path | None, PlainValidator(_optional(_abs_path)), Kind("absolute path")] \
        = Field(default=None, description="the PostgreSQL password: a root-only file (mode 0600), never in the URL")


_Rate = Annotated[float, PlainValidator(_number(1e-9, 1e6, "a positive number")), Kind("number")]


@dataclass(frozen=True, config=_MODEL)
class ApiSettings:
    """``[api]``: what traffic without a valid token may cost (see :mod:`provisioner.api.ratelimit`)."""

    anonymous_rate: _Rate = Field(default=0.2,
        description="requests per second per source ending without a valid token (IPv6: per /64)")
    anonymous_burst: Annotated[int, PlainValidator(_int(1, 1_000_000)), Kind("integer")] = Field(
        default=10, description="such requests at once per source")
    anonymous_global_rate: _Rate = Field(default=5.0, description="the same for all sources together, per second")
    audit_window: _Rate = Field(default=60.0,
        description="seconds between two summary rows of such requests in the audit")


_Listen = Annotated[str, PlainValidator(_text(r"[^\r\n\x00 <>\"']*", "a string without spaces or markup")),
                    Kind("host:port")]


@dataclass(frozen=True, config=_MODEL)
class HubConfig:
    """``[hub]``: where the Hub listens, its TLS files, its user, its PAM service, timeouts."""

    listen: _Listen = Field(default="0.0.0.0:8443", description="the front door (nginx, TLS)")
    cert: AbsPath = Field(default=Path("/var/lib/slotwarden/hub/hub.crt"), description=(
        "TLS certificate; `host init` makes a self-signed one (default <state_dir>/hub/hub.crt)"))
    key: AbsPath = Field(default=Path("/var/lib/slotwarden/hub/hub.key"),
        description="its key (default <state_dir>/hub/hub.key)")
    user: Annotated[str, PlainValidator(_text(_NAME, "a user name")), Kind("user name")] = Field(
        default="slotwarden-hub", description="the unprivileged user the web process and nginx's workers run as")
    bridge_socket: AbsPath = Field(default=Path("/run/slotwarden/hub-bridge.sock"),
        description="the privileged bridge's socket")
    web_socket: AbsPath = Field(default=Path("/run/slotwarden/hub-web/hub.sock"),
                                description="the web process listens here; only the Hub's user can connect")
    pam_service: Annotated[str, PlainValidator(_text(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}", "a PAM service name")),
                           Kind("PAM service name")] = Field(default="slotwarden-hub",
                               description="the PAM service Hub logins go through")
    idle_timeout: Seconds = Field(default=30 * 60, description="a session unused this long ends")
    absolute_timeout: Seconds = Field(default=12 * 3600, description="every session ends this long after login")
    # Wrong password, unknown name, locked, suspended all look alike from outside.
    fail_floor_ms: Annotated[int, PlainValidator(_int(0, 60000)), Kind("integer 0-60000")] = Field(
        default=1500, description="a refused login is answered no sooner than this after it arrived")
    public_url: _Listen = Field(default="", description="https://HOST[:PORT] links point at (empty: from listen)")
    history_every: Seconds = Field(default=300, description="how often the bridge samples every slot for the charts")
    fence_table: Annotated[str, PlainValidator(_text(_NAME, "a table name")), Kind("name")] = Field(
        default="slotwarden_apps", description="the nftables table (inet) fencing app ports to their slots")
    responses_every: Seconds = Field(default=60,
        description="how often the web process hands its response counts to the audit")


@dataclass(frozen=True, config=_MODEL)
class SupportConfig:
    """``[support]``: staff access to a slot's files, with the tenant's consent."""

    max_duration: Seconds = Field(default=7 * 86400, description="the longest grant `support request --for` may ask")
    grants_dir: AbsPath = Field(default=Path("/srv/slotwarden-support"),
        description="where granted homes are mounted for staff")


def _command(value: object) -> tuple[str, ...]:
    argv = _strings("a command as a list, e.g. [\"/usr/local/bin/tell\"]", bool)(value)
    if argv and not argv[0].startswith("/"):
        raise ValueError(f"expected a command starting with an absolute path, got {grammar.shown(argv[0])}")
    return argv


@dataclass(frozen=True, config=_MODEL)
class NoticesConfig:
    """``[notices]``: takedown notices."""

    takedown_after: Seconds = Field(default=24 * 3600, description="a file named in a notice is quarantined after this")
    hook: Annotated[tuple[str, ...], PlainValidator(_command), Kind("command as a list")] = Field(
        default=(), description="run with each notice event as JSON on stdin (e.g. a mailer); []: none")


@dataclass(frozen=True, config=_MODEL)
class InboxConfig:
    """``[inbox]``: where tenants' inboxes live and the login script that shows them."""

    dir: AbsPath = Field(default=Path("/var/spool/slotwarden"), description="one inbox per slot")
    # The package ships that file itself; unset, host init leaves /etc/profile.d alone.
    login_script: Annotated[Path | None, PlainValidator(_optional(_abs_path)), Kind("absolute path")] = Field(
        default=None, description="set (e.g. /etc/profile.d/slotwarden-inbox.sh) to have `host init` install it")


@dataclass(frozen=True, config=_MODEL)
class ReportConfig:
    """``[report]``: which auth logs `data report` counts in, and whether to ask the journal."""

    auth_logs: Annotated[tuple[str, ...], PlainValidator(_strings(
        "a list of absolute paths or globs", lambda p: p.startswith("/"))), Kind("list of paths or globs")] = Field(
        default=("/var/log/auth.log", "/var/log/auth.log.*"), description="auth logs to count a user's sshd lines in")
    journal: Bool = Field(default=True, description="also count in the journal (journalctl)")


def _cgroup_parent(value: object) -> str:
    if not isinstance(value, str) or not value or value.startswith("/") or ".." in value.split("/") \
            or "\x00" in value or "\n" in value:
        raise ValueError("expected a relative path like 'slotwarden'")
    return value


@dataclass(frozen=True, config=_MODEL)
class MetricsConfig:
    """``[metrics]``: per-slot accounting."""

    backend: Annotated[str, PlainValidator(_choice(_METRICS)), Kind(_METRICS)] = Field(
        default="auto", description="where per-slot counters come from")
    cgroup_root: AbsPath = Field(default=Path("/sys/fs/cgroup"), description="the cgroup filesystem")
    cgroup_parent: Annotated[str, PlainValidator(_cgroup_parent), Kind("relative path")] = Field(
        default="slotwarden", description="parent of every slot's cgroup, relative to each hierarchy's root")
    facts_dir: AbsPath = Field(default=Path("/run/slotwarden/slots"),
                               description="root-written, tenant-readable facts slotwarden-me reads")
    me_path: AbsPath = Field(default=Path("/usr/local/bin/slotwarden-me"),
        description="where `host init` installs slotwarden-me")


@dataclass(frozen=True, config=_MODEL)
class LimitsConfig:
    """``[limits]``: how plans' resource limits are enforced."""

    backend: Annotated[str, PlainValidator(_choice(_LIMITS)), Kind(_LIMITS)] = Field(
        default="auto", description="systemd slices, cgroup v1 controllers, or none; auto detects")


@dataclass(frozen=True, config=_MODEL)
class TransmissionSettings:
    """``[apps.transmission]``."""

    daemon: AbsPathText = Field(default="/usr/bin/transmission-daemon", description="the transmission-daemon binary")


@dataclass(frozen=True, config=_MODEL)
class WordPressSettings:
    """``[apps.wordpress]``."""

    mysql_socket: AbsPathText = Field(default="/run/mysqld/mysqld.sock",
                                      description="the host's MariaDB, administered as root over it")


_Port = Annotated[int, PlainValidator(_int(1, 65535)), Kind("port 1-65535")]


@dataclass(frozen=True, config=_MODEL)
class AppsConfig:
    """``[apps]``: the app port registry's range, the shared installs, and one table per app with settings."""

    port_min: _Port = Field(default=40000, description="the app port registry's range, from...")
    port_max: _Port = Field(default=40999, description="...to (inclusive)")
    shared_dir: AbsPath = Field(default=Path("/opt/slotwarden/apps"),
        description="shared read-only installs (JupyterLab's venv)")
    socket_dir: AbsPath = Field(default=Path("/var/lib/slotwarden-apps"),
        description="apps that listen on Unix sockets (JupyterLab, WordPress) bind them under <dir>/<slot>/<app>/")
    ready_timeout: Annotated[int, PlainValidator(_int(1, 65535)), Kind("seconds")] = Field(
        default=120, description="seconds an app may take to answer on its port after install")
    transmission: TransmissionSettings = Field(default_factory=TransmissionSettings)
    wordpress: WordPressSettings = Field(default_factory=WordPressSettings)

    @model_validator(mode="after")
    def _range(self) -> AppsConfig:
        if self.port_min > self.port_max:
            raise ValueError("port_min: must not be above apps.port_max")
        return self

    def per_app(self) -> dict[str, dict[str, Any]]:
        """``{app: its table}`` for the apps that have settings."""
        return {"transmission": asdict(self.transmission), "wordpress": asdict(self.wordpress)}


# Every section, in the order the reference shows them: the name is the TOML table's.
SECTIONS: dict[str, type[Any]] = {
    "host": HostConfig, "slots": SlotsConfig, "retention": RetentionConfig, "guard": GuardSection,
    "api": ApiSettings, "hub": HubConfig, "apps": AppsConfig, "limits": LimitsConfig, "metrics": MetricsConfig,
    "support": SupportConfig, "notices": NoticesConfig, "inbox": InboxConfig, "report": ReportConfig,
    "store": StoreConfig,
}


def _defaults(cls: type[T]) -> T:
    """CLS at its defaults, without running its validators.

    The defaults are literals of this module, already of the validated types; skipping the
    validation means a section the file does not name costs no validator build at start-up
    (every slotctl command pays it). The instance equals a validated one.
    """
    obj = object.__new__(cls)
    for f in fields(cls):  # type: ignore[arg-type]
        info = cls.__pydantic_fields__[f.name]  # type: ignore[attr-defined]
        factory = info.default_factory
        if factory is None:
            value = info.default
        elif is_pydantic_dataclass(factory):
            value = _defaults(factory)
        else:
            value = factory()
        object.__setattr__(obj, f.name, value)
    return obj


@dataclass(frozen=True, config=_MODEL)
class TopLevel:
    """The keys outside any table."""

    state_dir: AbsPath = Field(default=DEFAULT_STATE_DIR, description="the store (SQLite, WAL) and keys: root-only")


@std_dataclass(frozen=True)
class Config:
    """The whole configuration: ``state_dir``, one field per section, the plans sold.

    Built by :func:`load_config` (every section the file has validated); a section it lacks is
    its defaults.
    """

    state_dir: Path = DEFAULT_STATE_DIR
    host: HostConfig = field(default_factory=lambda: _defaults(HostConfig))
    slots: SlotsConfig = field(default_factory=lambda: _defaults(SlotsConfig))
    retention: RetentionConfig = field(default_factory=lambda: _defaults(RetentionConfig))
    guard: GuardSection = field(default_factory=lambda: _defaults(GuardSection))
    api: ApiSettings = field(default_factory=lambda: _defaults(ApiSettings))
    hub: HubConfig = field(default_factory=lambda: _defaults(HubConfig))
    apps: AppsConfig = field(default_factory=lambda: _defaults(AppsConfig))
    limits: LimitsConfig = field(default_factory=lambda: _defaults(LimitsConfig))
    metrics: MetricsConfig = field(default_factory=lambda: _defaults(MetricsConfig))
    support: SupportConfig = field(default_factory=lambda: _defaults(SupportConfig))
    notices: NoticesConfig = field(default_factory=lambda: _defaults(NoticesConfig))
    inbox: InboxConfig = field(default_factory=lambda: _defaults(InboxConfig))
    report: ReportConfig = field(default_factory=lambda: _defaults(ReportConfig))
    store: StoreConfig = field(default_factory=lambda: _defaults(StoreConfig))
    plans: dict[str, PlanConfig] = field(default_factory=dict)
    path: Path | None = None

    @property
    def db_path(self) -> Path:
        return self.state_dir / "slotwarden.db"

    def guard_config(self) -> GuardConfig:
        """The guard's settings as the guard service builds them from the same file."""
        given = {f.name: getattr(self.guard, f.name) for f in fields(GuardSection)}
        if given["store_host"] is None:  # the guard's own default: this host's name
            del given["store_host"]
        return GuardConfig(**given,
                           retention=self.retention.attempts, state_dir=self.state_dir,
                           admin_group=self.host.admin_group)


# --- loading ---------------------------------------------------------------------------------


def _reason(err: Any) -> tuple[str, str]:
    """(the key path inside the section, the reason) of one pydantic error."""
    loc = ".".join(str(p) for p in err["loc"])
    kind = err["type"]
    if kind == "value_error":
        reason = str(err["ctx"]["error"])
        if not loc:  # a check across keys: its message starts with the key it is about
            loc, _, reason = reason.partition(": ")
    elif kind in ("missing", "missing_argument", "missing_keyword_only_argument"):
        reason = "missing"
    elif kind in ("unexpected_keyword_argument", "extra_forbidden", "unexpected_positional_argument"):
        reason = "unknown key"
    elif kind in ("dataclass_type", "dataclass_args_type", "dict_type", "model_type"):
        reason = "expected a table"
    else:
        reason = str(err["msg"])
    return loc, " ".join(reason.split())


def validate_section(cls: type[T], table: object, where: str | None = None) -> T:
    """TABLE (a raw TOML table) as section CLS; a bad value is a ConfigError naming ``WHERE.KEY``.

    WHERE defaults to the section's name in :data:`SECTIONS`.

    >>> validate_section(SupportConfig, {"max_duration": "2d"}, "support").max_duration
    172800
    >>> validate_section(SupportConfig, {"max_duration": "soon"}, "support")
    Traceback (most recent call last):
    ...
    provisioner.errors.ConfigError: support.max_duration: expected a duration like 900, '15m' or '1.5h', got 'soon'
    """
    if where is None:
        where = next(name for name, section in SECTIONS.items() if section is cls)
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    try:
        return TypeAdapter(cls).validate_python(table)
    except ValidationError as exc:
        loc, reason = _reason(exc.errors()[0])
        key = ".".join(part for part in (where, loc) if part)
        raise ConfigError(f"{key}: {reason}") from None


def parse_limits(where: str, table: dict[str, Any]) -> ResourceLimits:
    """The limit keys of TABLE (a plan) validated; every error names ``WHERE.KEY``.

    >>> parse_limits("plans.x", {"cpu_cores": 0.5, "memory_max": "512M"}).memory_max
    536870912
    """
    return validate_section(ResourceLimits, table, where)


def _plans(value: object) -> dict[str, PlanConfig]:
    if not isinstance(value, dict):
        raise ConfigError("plans: expected tables like [plans.small]")
    out = {}
    for name, table in value.items():
        try:
            _plan_name(name)
        except ValueError as exc:
            raise ConfigError(f"plans.{grammar.shown(name, 80)[1:-1]}: {exc}") from None
        if isinstance(table, dict) and "name" in table:
            raise ConfigError(f"plans.{name}.name: unknown key")
        if isinstance(table, dict) and "quota" not in table:
            raise ConfigError(f"plans.{name}.quota: missing (every plan has a disk quota, e.g. \"5G\")")
        out[name] = validate_section(PlanConfig, {**table, "name": name} if isinstance(table, dict) else table,
                                     f"plans.{name}")
    return out


def config_from_document(doc: dict[str, Any], path: Path | None = None) -> Config:
    """Validate a parsed TOML document (what :func:`load_config_text` does after parsing)."""
    known = {"state_dir", "plans", *SECTIONS}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ConfigError(f"{grammar.shown(unknown[0])[1:-1]}: unknown key")
    values: dict[str, Any] = {"path": path}
    if "state_dir" in doc:
        values["state_dir"] = validate_section(TopLevel, {"state_dir": doc["state_dir"]}, "").state_dir
    state_dir: Path = values.get("state_dir", DEFAULT_STATE_DIR)
    for name, cls in SECTIONS.items():
        if name not in doc:
            continue
        table = doc[name]
        if name == "hub" and isinstance(table, dict):  # the TLS files live in the state dir unless named
            table = {"cert": state_dir / "hub" / "hub.crt", "key": state_dir / "hub" / "hub.key", **table}
        values[name] = validate_section(cls, table, name)
    if "hub" not in doc and state_dir != DEFAULT_STATE_DIR:
        values["hub"] = validate_section(HubConfig, {"cert": state_dir / "hub" / "hub.crt",
                                                     "key": state_dir / "hub" / "hub.key"}, "hub")
    if "plans" in doc:
        values["plans"] = _plans(doc["plans"])
    return Config(**values)


def load_config_text(text: str, path: Path | None = None) -> Config:
    """Parse and validate a TOML document."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path or 'config'}: not valid TOML: {' '.join(str(exc).split())}") from None
    return config_from_document(data, path)


def parse_duration(value: object, key: str) -> int:
    """Whole seconds (>= 0) in the configuration's duration grammar; BadInput naming KEY otherwise.

    For values that come from elsewhere than the file (``support request --for``).
    """
    try:
        seconds = grammar.parse_duration(value)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    if seconds != int(seconds):
        raise ConfigError(f"{key}: expected whole seconds, got {grammar.shown(value)}")
    return int(seconds)


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
