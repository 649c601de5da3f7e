"""Per-slot metrics: a cgroup per slot where the host has one, the slot's processes otherwise.

The figures are the ones the operator's policy lists — CPU, swap, RAM, load 1/5/15, the
tenant's processes, I/O, disk used, quota, physical disk — read live and never stored. Each
figure carries the source it came from (``cgroup-v1``, ``cgroup-v2``, ``systemd``, or
``processes`` through psutil).

One accounting backend per file, picked through :data:`BACKENDS` (``[metrics] backend`` in
the configuration, ``auto`` by default). Its :data:`EXTENSION` adds a creation step (make the
slot's cgroup and its facts file), a removal step (remove both) and the ``host init`` step that
installs ``slotwarden-me``.

>>> sorted(BACKENDS)
['cgroup-v1', 'cgroup-v2', 'processes', 'systemd']
"""

from __future__ import annotations

import errno
import importlib
import json
import logging
import os
import pwd
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from provisioner import accounts
from provisioner.config import MetricsConfig as MetricsConfig
from provisioner.context import Context
from provisioner.errors import BadInput, SlotError
from provisioner.extensions import Hooks
from provisioner.metrics.kernel import CgroupFigures, Proc, SlotMetrics, disk_space, from_cgroup, loadavg
from provisioner.quota import Usage
from provisioner.steps import Step
from provisioner.store import SlotRecord

if TYPE_CHECKING:
    from provisioner.slots import SlotRequest

log = logging.getLogger("slotwarden.metrics")

# name -> "module:Class", imported on first use. Order is detection order (each class's
# ``detects(cgroup_root)``); ``processes`` works anywhere, so it comes last.
BACKENDS: dict[str, str] = {
    "systemd": "provisioner.metrics.systemd:SystemdSlices",
    "cgroup-v2": "provisioner.metrics.cgroup_v2:CgroupV2",
    "cgroup-v1": "provisioner.metrics.cgroup_v1:CgroupV1",
    "processes": "provisioner.metrics.processes:ProcessesOnly",
}


def remove_cgroup_dir(d: Path, evacuate_to: Path) -> None:
    """Remove the slot cgroup D (absent is fine), shared by the cgroup v1 and v2 backends.

    A process exiting right now can still hold the directory (EBUSY): it is moved into
    EVACUATE_TO's ``cgroup.procs`` first, then the directory goes.
    """
    try:
        d.rmdir()
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        for pid in (d / "cgroup.procs").read_text().split():
            try:
                (evacuate_to / "cgroup.procs").write_text(pid)
            except OSError:
                pass
        d.rmdir()


class AccountingBackend(Protocol):
    """How a host accounts a slot's CPU, memory and I/O. Every method is idempotent."""

    name: str

    def create(self, username: str, gid: int) -> None:
        """Make the slot's accounting unit, readable by root and the slot's group only."""

    def remove(self, username: str) -> None:
        """Remove the slot's accounting unit (its processes are already stopped); absent is fine."""

    def spec(self, username: str, uid: int) -> dict[str, Any] | None:
        """Where the counters are, as written to the facts file (None: no per-slot counters)."""

    def adopt(self, username: str, uid: int, pids: Iterable[int]) -> None:
        """Move PIDS (the slot's processes found outside its unit) into the slot's unit."""

    def read(self, username: str, uid: int) -> CgroupFigures | None:
        """The slot's counters, or None when it has none."""


def metrics_config(ctx: Context) -> MetricsConfig:
    return ctx.config.metrics


def detect_backend(cfg: MetricsConfig) -> str:
    """What this host offers (systemd slices, a v2 or v1 cgroup tree, or nothing): the first
    backend of :data:`BACKENDS` that detects its tree under the cgroup root."""
    return next(name for name in BACKENDS if _backend_class(name).detects(cfg.cgroup_root))


def _backend_class(name: str) -> Any:
    if name not in BACKENDS:
        raise BadInput(f"unknown metrics backend {name!r}")
    module_name, _, cls_name = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module_name), cls_name)


def load_backend(cfg: MetricsConfig, name: str | None = None) -> AccountingBackend:
    name = name or cfg.backend
    if name == "auto":
        name = detect_backend(cfg)
    backend: AccountingBackend = _backend_class(name)(cfg)
    return backend


# --- facts for slotwarden-me ------------------------------------------------------------------


def write_facts(cfg: MetricsConfig, username: str, gid: int, facts: dict[str, Any]) -> None:
    """Write the slot's facts file atomically, 0640 root:<slot group> (other tenants cannot read it)."""
    d = cfg.facts_dir
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o711)  # noqa: S103 - traverse only: a tenant opens its own file, lists nothing
    tmp = d / f".{username}.json.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(facts, f, sort_keys=True)
    os.chown(tmp, 0, gid)
    os.chmod(tmp, 0o640)
    os.replace(tmp, d / f"{username}.json")


def remove_facts(cfg: MetricsConfig, username: str) -> None:
    (cfg.facts_dir / f"{username}.json").unlink(missing_ok=True)


# --- slot creation and removal steps ----------------------------------------------------------


def creation_steps(ctx: Context, req: SlotRequest) -> list[Step]:
    """Make the slot's cgroup and its facts file (after the user exists)."""
    cfg = metrics_config(ctx)
    backend = load_backend(cfg)
    name = req.username

    def do() -> None:
        acct = accounts.lookup_user(name)
        if acct is None:
            raise SlotError(f"user {name} vanished during create")
        try:
            backend.create(name, acct.gid)
            spec = backend.spec(name, acct.uid)
        except OSError as exc:
            # A slot without its own cgroup still works; its figures then come from its
            # processes (the output names that source). Refusing the slot would be worse.
            log.warning("no %s accounting unit for %s (%s); metrics fall back to processes",
                        backend.name, name, exc)
            spec = None
        write_facts(cfg, name, acct.gid, {"username": name, "cgroup": spec,
                                          "quota_bytes": req.quota_bytes, "updated_at": time.time()})

    def undo() -> None:
        backend.remove(name)
        remove_facts(cfg, name)

    return [Step("metrics", f"make the accounting unit of {name} ({backend.name}) and its facts file", do, undo)]


def removal_steps(ctx: Context, rec: SlotRecord) -> list[Step]:
    """Remove the slot's cgroup and facts file (its processes are already stopped)."""
    cfg = metrics_config(ctx)
    backend = load_backend(cfg)
    name = rec.username

    def do() -> None:
        backend.remove(name)
        remove_facts(cfg, name)

    return [Step("metrics", f"remove the accounting unit of {name} ({backend.name}) and its facts file", do)]


# --- collection -------------------------------------------------------------------------------


def process_table() -> dict[int, list[Proc]]:
    """Every process on the host grouped by real UID, in one pass (psutil)."""
    import psutil

    by_uid: dict[int, list[Proc]] = {}
    attrs = ["pid", "name", "cmdline", "status", "uids", "memory_info", "cpu_times", "io_counters"]
    for p in psutil.process_iter(attrs):
        info = p.info
        if info.get("uids") is None or info.get("memory_info") is None:
            continue  # vanished or unreadable
        cpu = info.get("cpu_times")
        io = info.get("io_counters")
        by_uid.setdefault(info["uids"].real, []).append(Proc(
            pid=info["pid"],
            name=info.get("name") or "?",
            cmdline=" ".join(info.get("cmdline") or [])[:200],
            state=str(info.get("status") or "?"),
            rss_bytes=info["memory_info"].rss,
            swap_bytes=0,
            cpu_seconds=(cpu.user + cpu.system) if cpu else 0.0,
            read_bytes=io.read_bytes if io else None,
            write_bytes=io.write_bytes if io else None,
        ))
    return by_uid


def _proc_swap(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmSwap:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def disk_usage_all(ctx: Context, records: list[SlotRecord], fresh: bool) -> dict[str, tuple[Usage | None, str]]:
    """Disk used and cap of each slot's home, batched where the quota backend allows it."""
    from provisioner.metrics import disk

    return disk.usage_all(ctx, records, fresh)


def collect(
    ctx: Context,
    usernames: list[str] | None = None,
    *,
    sample: float = 0.0,
    adopt: bool = True,
    refresh_facts: bool = True,
) -> list[SlotMetrics]:
    """Metrics of the named slots (every slot when None). Raises SlotError for an unknown name.

    Side effects (root only, both idempotent): processes of a slot that run outside its cgroup
    (cron, apps, su) are moved in — accounting for them starts then — and the slot's facts
    file for ``slotwarden-me`` is refreshed with the current quota.
    """
    cfg = metrics_config(ctx)
    backend = load_backend(cfg)
    if usernames is None:
        records = [r for r in ctx.store.list_slots() if r.state in ("active", "suspended")]
    else:
        records = []
        for name in usernames:
            rec = ctx.store.get_slot(name)
            if rec is None or rec.state == "creating":
                raise SlotError(f"no slot named {name!r}")
            records.append(rec)
    procs = process_table()
    if sample > 0:
        first = _counters(backend, records, procs)
        t0 = time.monotonic()
        time.sleep(sample)
        procs = process_table()
    load = loadavg()
    # One slot asked by name: commit pending writes so the figure is current; a scrape skips it.
    disk_usage = disk_usage_all(ctx, records, fresh=usernames is not None)
    space_cache: dict[int, tuple[int, int]] = {}
    mounts: list[str] = []  # /proc/self/mountinfo, read once for every slot with a /tmp size
    gids: dict[str, int] | None = None
    out = []
    for rec in records:
        uid = rec.uid
        m = SlotMetrics(slot=rec.username, uid=uid, at=time.time())
        mine = procs.get(uid, []) if uid is not None else []
        m.processes = mine
        fig = None
        if uid is not None:
            fig = backend.read(rec.username, uid)
            outside = [p.pid for p in mine if fig is not None and p.pid not in fig.pids]
            if adopt and outside and os.geteuid() == 0:
                try:
                    backend.adopt(rec.username, uid, outside)
                except OSError:
                    pass  # a process that exits meanwhile; the next read adopts the rest
        if fig is not None:
            from_cgroup(m, fig, backend.name)
        else:
            m.cpu_seconds = sum(p.cpu_seconds for p in mine)
            m.ram_bytes = sum(p.rss_bytes for p in mine)
            m.io_read_bytes = sum(p.read_bytes or 0 for p in mine)
            m.io_write_bytes = sum(p.write_bytes or 0 for p in mine)
            for key in ("cpu", "memory", "io"):
                m.sources[key] = "processes (psutil, live processes only)"
        if m.swap_bytes is None:
            m.swap_bytes = sum(_proc_swap(p.pid) for p in mine)
            m.sources["swap"] = "processes (VmSwap, live processes only)"
        if sample > 0:
            before = first.get(rec.username)
            if before is not None and m.cpu_seconds is not None:
                m.cpu_percent = round(100.0 * max(0.0, m.cpu_seconds - before) / (time.monotonic() - t0), 1)
        m.load1, m.load5, m.load15 = load
        m.sources["load"] = "/proc/loadavg (whole host)"
        usage, source = disk_usage.get(rec.username, (None, "unavailable"))
        m.disk_used_bytes = usage.used_bytes if usage else None
        m.quota_bytes = usage.limit_bytes if usage and usage.limit_bytes else rec.quota_bytes
        m.sources["disk_used"] = source
        m.sources["quota"] = source if usage and usage.limit_bytes else "store (requested quota)"
        home = Path(rec.home)
        try:
            dev = home.stat().st_dev
            if dev not in space_cache:
                space_cache[dev] = disk_space(str(home))
            m.disk_total_bytes, m.disk_free_bytes = space_cache[dev]
            m.sources["physical_disk"] = f"statvfs({home})"
        except OSError:
            pass
        m.limits = _limits_of(ctx, rec.username)
        if m.limits is not None:
            m.sources["limits"] = f"store (slot_limits), enforced by {m.limits.get('backend')}"
            if m.limits.get("tmp_size") is not None:
                _tmp_of(ctx, m, mounts)
        if refresh_facts and os.geteuid() == 0 and uid is not None:
            if gids is None:
                gids = {pw.pw_name: pw.pw_gid for pw in pwd.getpwall()}  # one pass, not one lookup a slot
            _refresh_facts(cfg, backend, rec, m, gids)
        out.append(m)
    return out


def _limits_of(ctx: Context, username: str) -> dict[str, Any] | None:
    """The slot's applied limits (the limits package's record), None without one."""
    try:
        from provisioner.limits import limits_of
    except ModuleNotFoundError:
        return None
    return limits_of(ctx, username)


def _tmp_of(ctx: Context, m: SlotMetrics, mounts: list[str]) -> None:
    """The slot's /tmp tmpfs use against its size (root reads its mount under ``<state_dir>``).

    MOUNTS holds /proc/self/mountinfo once read (filled on the first call of a collection).
    """
    from provisioner.limits.steps import tmp_use

    if not mounts:
        mounts.append(Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace"))
    use = tmp_use(ctx, m.slot, m.uid, mounts[0])
    if use is not None:
        m.tmp_size_bytes, m.tmp_used_bytes = use.size, use.used
        m.sources["tmp"] = "statvfs of the slot's tmpfs"


def _counters(backend: AccountingBackend, records: list[SlotRecord],
              procs: dict[int, list[Proc]]) -> dict[str, float]:
    """CPU seconds of each slot now (the first point of a CPU % sample)."""
    out = {}
    for rec in records:
        if rec.uid is None:
            continue
        fig = backend.read(rec.username, rec.uid)
        out[rec.username] = fig.cpu_seconds if fig else sum(p.cpu_seconds for p in procs.get(rec.uid, []))
    return out


def _refresh_facts(cfg: MetricsConfig, backend: AccountingBackend, rec: SlotRecord, m: SlotMetrics,
                   gids: dict[str, int]) -> None:
    path = cfg.facts_dir / f"{rec.username}.json"
    facts = {"username": rec.username, "cgroup": backend.spec(rec.username, m.uid or 0),
             "quota_bytes": m.quota_bytes, "limits": m.limits}
    try:
        current = json.loads(path.read_text())
        current.pop("updated_at", None)
        if current == facts:
            return
    except (OSError, ValueError):
        pass
    gid = gids.get(rec.username)
    if gid is not None:
        write_facts(cfg, rec.username, gid, {**facts, "updated_at": time.time()})


# --- host init: the tenant's command ----------------------------------------------------------


def me_script(cfg: MetricsConfig, inbox_dir: Path = Path("/var/spool/slotwarden")) -> str:
    """The self-contained ``slotwarden-me``: kernel.py with this host's facts directory, then
    the tenant's support and notices commands (:mod:`provisioner.tenant_commands`) with its inbox."""
    from provisioner import tenant_commands
    from provisioner.metrics import kernel

    text = Path(kernel.__file__).read_text(encoding="utf-8")
    old = 'FACTS_DIR = "/run/slotwarden/slots"'
    main = 'if __name__ == "__main__":\n    me_main()\n'
    if old not in text or not text.endswith(main):
        raise SlotError("kernel.py lost its FACTS_DIR line or main block; cannot build slotwarden-me")
    text = text.replace(old, f"FACTS_DIR = {str(cfg.facts_dir)!r}", 1)[: -len(main)]
    tail = Path(tenant_commands.__file__).read_text(encoding="utf-8")
    head, _, rest = tail.partition("# --- not in the installed copy: there kernel.py's text comes first ---\n")
    _, _, rest = rest.partition("# --- end of what the installed copy drops ---\n")
    head = head.replace("from __future__ import annotations\n", "", 1)
    tail = (head + rest).replace('INBOX_DIR = "/var/spool/slotwarden"', f"INBOX_DIR = {str(inbox_dir)!r}", 1)
    return text + tail


def install_me(cfg: MetricsConfig, inbox_dir: Path = Path("/var/spool/slotwarden")) -> None:
    """Install slotwarden-me (0755 root, readable by all) and the facts directory (0711)."""
    cfg.facts_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.facts_dir, 0o711)  # noqa: S103 - traverse only
    target = cfg.me_path
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(me_script(cfg, inbox_dir), encoding="utf-8")
    os.chown(tmp, 0, 0)
    os.chmod(tmp, 0o755)  # noqa: S103 - every tenant runs it
    os.replace(tmp, target)


def host_steps(ctx: Context, _req: object) -> list[Step]:
    """``host init``: install or update slotwarden-me when it differs from this version."""
    from provisioner.inbox import inbox_config

    cfg = metrics_config(ctx)
    inbox_dir = inbox_config(ctx).dir
    try:
        current = cfg.me_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        current = None
    if current == me_script(cfg, inbox_dir) and cfg.facts_dir.is_dir():
        return []
    return [Step("slotwarden-me", f"install {cfg.me_path} (the tenant's own metrics, support and notices; stdlib only)",
                 lambda: install_me(cfg, inbox_dir))]



EXTENSION = Hooks("metrics", creation=creation_steps, removal=removal_steps, host=host_steps)
