"""The value grammar of slotwarden's TOML file: durations and sizes, stdlib only.

One grammar for every key, read by the guard service (which never imports the provisioner)
and by the provisioner's configuration model alike. Each parser returns the value or raises
``ValueError`` with a one-line reason that quotes the input safely; the caller adds the key.

>>> parse_duration("1.5h"), parse_duration(900), parse_duration("30d")
(5400.0, 900.0, 2592000.0)
>>> parse_size("5G"), parse_size("512MiB"), parse_size(4096)
(5368709120, 536870912, 4096)
"""

from __future__ import annotations

import ipaddress
import math
import re

# A number of seconds, or a number with a unit: 900, "900", "15m", "1.5h", "30d".
DURATION_RE = re.compile(r"\s*([0-9]{1,12}(?:\.[0-9]{1,9})?)\s*([smhd]?)\s*", re.ASCII)
DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_DURATION = 100 * 365 * 86400.0  # longer than a century is a typo, not a policy
# Bytes, or a number with a binary unit: 4096, "500M", "5G", "5GiB", "1T".
SIZE_RE = re.compile(r"([0-9]{1,16})([KMGT]?)(i?B?)?", re.IGNORECASE | re.ASCII)
SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MAX_SIZE = 1 << 50  # 1 PiB: anything larger is a typo, not a plan


def shown(value: object, limit: int = 40) -> str:
    """A safe, capped rendering of untrusted input for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_duration(value: object) -> float:
    """Seconds (>= 0) from a number or a string like ``"15m"``, ``"1.5h"``, ``"30d"``.

    Whether zero is allowed is the key's business, not the grammar's.

    >>> parse_duration("15 m")
    900.0
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 900, '15m' or '1.5h', got {shown(value)}")
    if isinstance(value, (int, float)):
        seconds = float(value)
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"expected a duration of zero or more seconds, got {shown(value)}")
    elif isinstance(value, str) and (m := DURATION_RE.fullmatch(value)):
        seconds = float(m.group(1)) * DURATION_UNITS[m.group(2)]
    else:
        raise ValueError(f"expected a duration like 900, '15m' or '1.5h', got {shown(value)}")
    if seconds > MAX_DURATION:
        raise ValueError(f"duration {shown(value)} is longer than 100 years")
    return seconds


def absolute_path(value: object) -> str:
    """VALUE if it is an absolute path (no NUL, no line break).

    >>> absolute_path("/run/x.sock")
    '/run/x.sock'
    """
    if not isinstance(value, str) or not value.startswith("/") or "\x00" in value or "\n" in value:
        raise ValueError(f"expected an absolute path, got {shown(value)}")
    return value


def parse_networks(value: object) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """A list of addresses or CIDRs (host bits ignored) as networks.

    >>> parse_networks(["198.51.100.7/24", "2001:db8::1"])
    (IPv4Network('198.51.100.0/24'), IPv6Network('2001:db8::1/128'))
    """
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a list of CIDRs, got {shown(value)}")
    nets = []
    for item in value:
        try:
            nets.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            raise ValueError(f"{shown(item)} is not an address or CIDR") from None
    return tuple(nets)


def parse_size(value: object) -> int:
    """Bytes (> 0) from an integer or a string like ``"500M"``, ``"5G"``, ``"5GiB"`` (binary units).

    >>> parse_size("1k")
    1024
    """
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"size {shown(value)} is invalid")
    if isinstance(value, int):
        size = value
    else:
        m = SIZE_RE.fullmatch(value.strip())
        if not m or (m.group(3) and not m.group(2) and m.group(3).lower() != "b"):
            raise ValueError(f"size {shown(value)} is invalid: use a number with K, M, G or T (e.g. 5G)")
        size = int(m.group(1)) * SIZE_UNITS[m.group(2).upper()]
    if size <= 0:
        raise ValueError(f"size {shown(value)} must be positive")
    if size > MAX_SIZE:
        raise ValueError(f"size {shown(value)} is larger than 1P")
    return size
