"""Bounds on what traffic without a valid token can cost: rate limits and a bounded audit.

Anybody who reaches the API can send requests without a token. Each one costs a little CPU and,
before this module, one audit row — so 200 anonymous requests wrote 200 rows. Now:

- :class:`SourceLimiter` keeps a token bucket per *source* (an IPv4 address, or the /64 of an
  IPv6 address: one customer's prefix is one source), in bounded memory (least recently seen
  sources are forgotten first). Requests that end without a valid token draw from the bucket of
  their source and from one global bucket; an empty bucket answers 429 with ``Retry-After``.
  Requests with a valid token are never refused by it, so a flood from a tenant on this host
  cannot lock the billing system out.
- :class:`AnonymousAudit` writes at most one audit row per window (a summary: how many
  requests, how many sources, a few of each, statuses) however many anonymous requests come,
  so the audit grows without a token by at most ``86400 / window`` rows a day, each bounded.

>>> lim = SourceLimiter(rate=0.5, burst=2, clock=lambda: 0.0)
>>> [lim.take("198.51.100.7")[0] for _ in range(3)]
[True, True, False]
>>> source_key("2001:db8:1:2::5") == source_key("2001:db8:1:2:ffff::1")
True
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Clock = Callable[[], float]
MAX_SOURCES = 4096
SAMPLE = 5


def source_key(address: str | None) -> str:
    """What counts as one source: an IPv4 address, an IPv6 /64, or the raw value (bounded)."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "invalid:" + address[:45].encode("ascii", "backslashreplace").decode()
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass
class _Bucket:
    tokens: float
    at: float


class SourceLimiter:
    """Token buckets (RATE per second, BURST at most) per source plus one for all sources."""

    def __init__(self, rate: float, burst: int, global_rate: float | None = None,
                 global_burst: int | None = None, max_sources: int = MAX_SOURCES,
                 clock: Clock = time.monotonic) -> None:
        self.rate, self.burst = rate, burst
        self.global_rate = global_rate if global_rate is not None else rate * 50
        self.global_burst = global_burst if global_burst is not None else burst * 50
        self.max_sources = max_sources
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._global = _Bucket(float(self.global_burst), clock())
        self._lock = threading.Lock()

    @staticmethod
    def _refill(bucket: _Bucket, rate: float, burst: int, now: float) -> None:
        bucket.tokens = min(float(burst), bucket.tokens + max(0.0, now - bucket.at) * rate)
        bucket.at = now

    def take(self, source: str) -> tuple[bool, float]:
        """Draw one token for SOURCE: (allowed, seconds until the next token if refused)."""
        now = self.clock()
        key = source_key(source)
        with self._lock:
            bucket = self._buckets.pop(key, None)
            if bucket is None:
                bucket = _Bucket(float(self.burst), now)
                while len(self._buckets) >= self.max_sources:
                    self._buckets.popitem(last=False)
            self._buckets[key] = bucket  # most recently seen last
            self._refill(bucket, self.rate, self.burst, now)
            self._refill(self._global, self.global_rate, self.global_burst, now)
            if bucket.tokens < 1:
                return False, (1 - bucket.tokens) / self.rate
            if self._global.tokens < 1:
                return False, (1 - self._global.tokens) / self.global_rate
            bucket.tokens -= 1
            self._global.tokens -= 1
            return True, 0.0

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass
class _Window:
    started: float
    count: int = 0
    sources: Counter[str] = field(default_factory=Counter)
    paths: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)


class AnonymousAudit:
    """Summarise requests without a valid token into one audit row per WINDOW seconds."""

    def __init__(self, write: Callable[[dict[str, Any]], None], window: float = 60.0,
                 clock: Clock = time.time) -> None:
        self.write = write
        self.window = window
        self.clock = clock
        self._current: _Window | None = None
        self._last_write = float("-inf")
        self._lock = threading.Lock()

    def record(self, source: str, path: str, status: int) -> None:
        """Count one anonymous request; writes a summary row when a window has passed."""
        now = self.clock()
        with self._lock:
            if self._current is None:
                self._current = _Window(now)
            w = self._current
            w.count += 1
            if len(w.sources) < MAX_SOURCES or source_key(source) in w.sources:
                w.sources[source_key(source)] += 1
            if len(w.paths) < 64 or path[:80] in w.paths:
                w.paths[path[:80]] += 1
            w.statuses[status] += 1
            due = now - self._last_write >= self.window
            row = self._summary(now) if due else None
        if row is not None:
            self.write(row)

    def flush(self) -> None:
        """Write what is counted (at shutdown)."""
        with self._lock:
            row = self._summary(self.clock()) if self._current is not None else None
        if row is not None:
            self.write(row)

    def _summary(self, now: float) -> dict[str, Any]:
        w = self._current
        assert w is not None
        self._current = None
        self._last_write = now
        return {"requests": w.count, "since": round(w.started, 3), "until": round(now, 3),
                "sources": len(w.sources),
                "top_sources": [s for s, _ in w.sources.most_common(SAMPLE)],
                "top_paths": [p for p, _ in w.paths.most_common(SAMPLE)],
                "statuses": {str(k): v for k, v in sorted(w.statuses.items())}}
