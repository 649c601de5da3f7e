"""The Prometheus text exposition (format 0.0.4) of every slot's metrics.

Names carry the ``slotwarden_`` prefix and a ``slot`` label; host-wide figures (load) carry
none. Counters end in ``_total``.

>>> print(render([]).splitlines()[0])
# HELP slotwarden_cpu_seconds_total CPU time used by the slot's processes.
"""

from __future__ import annotations

from collections.abc import Callable

from provisioner.metrics.kernel import SlotMetrics

# (name, type, help, value of one slot)
PER_SLOT: list[tuple[str, str, str, Callable[[SlotMetrics], float | int | None]]] = [
    ("cpu_seconds_total", "counter", "CPU time used by the slot's processes.", lambda m: m.cpu_seconds),
    ("memory_bytes", "gauge", "RAM used by the slot (working set).", lambda m: m.ram_bytes),
    ("swap_bytes", "gauge", "Swap used by the slot.", lambda m: m.swap_bytes),
    ("processes", "gauge", "Running processes of the slot.", lambda m: len(m.processes)),
    ("io_read_bytes_total", "counter", "Bytes the slot read from block devices.", lambda m: m.io_read_bytes),
    ("io_write_bytes_total", "counter", "Bytes the slot wrote to block devices.", lambda m: m.io_write_bytes),
    ("disk_used_bytes", "gauge", "Disk space used by the slot's home.", lambda m: m.disk_used_bytes),
    ("quota_bytes", "gauge", "Disk space allocated to the slot (its quota).", lambda m: m.quota_bytes),
    ("disk_total_bytes", "gauge", "Size of the filesystem holding the slot's home.", lambda m: m.disk_total_bytes),
    ("disk_free_bytes", "gauge", "Free space on the filesystem holding the slot's home.", lambda m: m.disk_free_bytes),
    ("tasks", "gauge", "Processes and threads the kernel counts in the slot's cgroup (pids.current).",
     lambda m: m.tasks),
    ("tmp_used_bytes", "gauge", "Bytes in the slot's /tmp and /var/tmp tmpfs (a plan's tmp_size).",
     lambda m: m.tmp_used_bytes),
]
LIMITS = ("cpu_cores", "cpu_weight", "memory_max", "memory_high", "swap_max", "max_processes", "io_weight",
          "io_read_bps", "io_write_bps", "tmp_size")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v: float | int) -> str:
    return repr(float(v)) if isinstance(v, float) else str(v)


def render(metrics: list[SlotMetrics], scrape_seconds: float | None = None) -> str:
    """The exposition text for METRICS (every slot's figures, then the host's)."""
    lines: list[str] = []
    for name, kind, help_, get in PER_SLOT:
        lines.append(f"# HELP slotwarden_{name} {help_}")
        lines.append(f"# TYPE slotwarden_{name} {kind}")
        for m in metrics:
            v = get(m)
            if v is not None:
                lines.append(f'slotwarden_{name}{{slot="{_label(m.slot)}"}} {_num(v)}')
    lines.append("# HELP slotwarden_limit What the slot may use (its plan's limits, enforced by the kernel).")
    lines.append("# TYPE slotwarden_limit gauge")
    for m in metrics:
        for key in LIMITS:
            v = (m.limits or {}).get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                lines.append(f'slotwarden_limit{{slot="{_label(m.slot)}",limit="{key}"}} {_num(v)}')
    lines.append("# HELP slotwarden_pressure_avg10 Pressure stall information of the slot's cgroup (%, 10 s).")
    lines.append("# TYPE slotwarden_pressure_avg10 gauge")
    for m in metrics:
        for key, v in sorted((m.pressure or {}).items()):
            resource, _, kind = key.removesuffix("_avg10").partition("_")
            lines.append(f'slotwarden_pressure_avg10{{slot="{_label(m.slot)}",resource="{resource}",'
                         f'kind="{kind}"}} {_num(v)}')
    lines.append("# HELP slotwarden_slot_info Where each slot's CPU, memory and I/O figures come from.")
    lines.append("# TYPE slotwarden_slot_info gauge")
    for m in metrics:
        lines.append(f'slotwarden_slot_info{{slot="{_label(m.slot)}",source="{_label(m.sources.get("cpu", "-"))}"}} 1')
    if metrics:
        first = metrics[0]
        for n, v in (("load1", first.load1), ("load5", first.load5), ("load15", first.load15)):
            lines.append(f"# HELP slotwarden_{n} Load average of the host.")
            lines.append(f"# TYPE slotwarden_{n} gauge")
            if v is not None:
                lines.append(f"slotwarden_{n} {_num(v)}")
    lines.append("# HELP slotwarden_slots Slots on this host.")
    lines.append("# TYPE slotwarden_slots gauge")
    lines.append(f"slotwarden_slots {len(metrics)}")
    if scrape_seconds is not None:
        lines.append("# HELP slotwarden_scrape_duration_seconds Time spent collecting this scrape.")
        lines.append("# TYPE slotwarden_scrape_duration_seconds gauge")
        lines.append(f"slotwarden_scrape_duration_seconds {scrape_seconds!r}")
    return "\n".join(lines) + "\n"
