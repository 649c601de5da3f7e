"""A bounded, downsampled metrics history per slot, for the Hub's 24-hour and 30-day charts.

Two fixed rings per slot in the store, like an RRD: :data:`TIERS` — 288 buckets of 5 minutes
(24 h) and 360 buckets of 2 hours (30 days). A sample lands in the bucket of its time in both
rings; a bucket that still holds an older period is overwritten, one of the same period keeps
a running mean (RAM, swap, processes) and the last value (CPU seconds, disk used, I/O
counters: the charts show their rates between buckets). So a
slot never has more than 648 rows (about 60 KiB with SQLite's overhead, far below 1 MiB),
however long the host runs, and nothing needs pruning but a removed slot's rows.

>>> bucket_of(TIERS["24h"], 1_000_000)
(165, 999900.0)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from provisioner.store import Store


@dataclass(frozen=True)
class Tier:
    """One ring: NAME, bucket width STEP seconds, SIZE buckets."""

    name: str
    step: int
    size: int


TIERS = {"24h": Tier("24h", 300, 288), "30d": Tier("30d", 7200, 360)}
MEANS = ("ram_bytes", "swap_bytes", "processes")
# Counters (CPU seconds, I/O bytes) keep their last value: a chart shows the rate between buckets.
LASTS = ("cpu_seconds", "disk_used_bytes", "io_read_bytes", "io_write_bytes")
FIGURES = MEANS + LASTS


def bucket_of(tier: Tier, at: float) -> tuple[int, float]:
    """(ring index, bucket start) of time AT in TIER."""
    start = at - at % tier.step
    return int(start // tier.step) % tier.size, float(start)


class MetricsHistory:
    """The only code that writes ``hub_history``."""

    # FIGURES are this module's column names, never input.
    _UPSERT = ("INSERT INTO hub_history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "  # noqa: S608
               "ON CONFLICT (username, tier, idx) DO UPDATE SET start = excluded.start, n = excluded.n, "
               + ", ".join(f"{k} = excluded.{k}" for k in FIGURES))

    def __init__(self, store: Store) -> None:
        self.store = store

    def record(self, username: str, at: float, figures: dict[str, Any]) -> None:
        """Fold one sample of USERNAME (keys of :data:`FIGURES`; None = unknown) into both rings."""
        values = {k: (float(figures[k]) if isinstance(figures.get(k), int | float) else None) for k in FIGURES}
        with self.store.transaction() as db:
            for tier in TIERS.values():
                idx, start = bucket_of(tier, at)
                row = db.execute("SELECT * FROM hub_history WHERE username = ? AND tier = ? AND idx = ?",
                                 (username, tier.name, idx)).fetchone()
                if row is not None and row["start"] == start:
                    n = row["n"] + 1
                    merged = {k: _mean(row[k], values[k], row["n"]) for k in MEANS}
                    merged.update({k: values[k] if values[k] is not None else row[k] for k in LASTS})
                else:
                    n, merged = 1, values
                db.execute(self._UPSERT, (username, tier.name, idx, start, n, *(merged[k] for k in FIGURES)))

    def series(self, username: str, tier_name: str, now: float) -> list[dict[str, Any]]:
        """USERNAME's buckets of the last ring period, oldest first."""
        tier = TIERS[tier_name]
        rows = self.store.db.execute(
            "SELECT * FROM hub_history WHERE username = ? AND tier = ? AND start > ? ORDER BY start",
            (username, tier.name, now - tier.step * tier.size)).fetchall()
        return [{"at": r["start"], **{k: r[k] for k in FIGURES}} for r in rows]

    def rows_of(self, username: str) -> int:
        return int(self.store.db.execute("SELECT COUNT(*) FROM hub_history WHERE username = ?",
                                         (username,)).fetchone()[0])

    def forget(self, username: str) -> None:
        with self.store.transaction() as db:
            db.execute("DELETE FROM hub_history WHERE username = ?", (username,))


def _mean(old: float | None, new: float | None, n: int) -> float | None:
    if new is None:
        return old
    if old is None:
        return new
    return old + (new - old) / (n + 1)


def sample_all(store: Store, metrics: list[Any], at: float) -> None:
    """Record one sample for each slot's SlotMetrics in METRICS."""
    h = MetricsHistory(store)
    for m in metrics:
        d = m.as_dict()
        h.record(m.slot, at, {**d, "processes": d.get("process_count")})


def rates(series: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    """Per-second rate of counter KEY between successive buckets (a reset counts as no data)."""
    out = []
    for a, b in itertools.pairwise(series):
        if a[key] is not None and b[key] is not None and b["at"] > a["at"] and b[key] >= a[key]:
            out.append((b["at"], (b[key] - a[key]) / (b["at"] - a["at"])))
    return out


def charts(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The overview's charts of one ring: title, unit and polyline each."""
    def level(key: str) -> list[tuple[float, float]]:
        return [(p["at"], p[key]) for p in series if p[key] is not None]

    spec = [("CPU", "%", [(t, v * 100) for t, v in rates(series, "cpu_seconds")]),
            ("RAM", "bytes", level("ram_bytes")), ("Swap", "bytes", level("swap_bytes")),
            ("Processes", "", level("processes")), ("Disk used", "bytes", level("disk_used_bytes")),
            ("I/O read", "bytes/s", rates(series, "io_read_bytes")),
            ("I/O written", "bytes/s", rates(series, "io_write_bytes"))]
    return [{"title": title, "unit": unit, **chart_svg(points)} for title, unit, points in spec]


def chart_svg(points: list[tuple[float, float]], width: int = 520, height: int = 110) -> dict[str, Any]:
    """A polyline for (time, value) POINTS scaled into WIDTH x HEIGHT (rendered by the template)."""
    if not points:
        return {"polyline": "", "dots": [], "max": 0.0, "width": width, "height": height, "n": 0}
    t0, t1 = points[0][0], points[-1][0]
    highest = max(v for _, v in points)
    top = highest or 1.0
    span = (t1 - t0) or 1.0
    xy = [((t - t0) / span * (width - 8) + 4, height - 4 - v / top * (height - 8)) for t, v in points]
    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    # Few samples (a fresh slot, a restarted host): each is also a dot, so one sample shows.
    dots = [{"x": round(x, 1), "y": round(y, 1)} for x, y in xy] if len(xy) <= 48 else []
    return {"polyline": coords, "dots": dots, "max": highest, "width": width, "height": height, "n": len(points)}
