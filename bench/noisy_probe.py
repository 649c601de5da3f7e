"""Counters for bench/noisy_neighbour.py: where the CPU went while B was measured (diagnosis only).

A :class:`Probe` snapshots, before and after a phase, the counters that tell why B's requests
waited: slot A's cgroup (CPU used, CFS throttling, memory-limit hits and OOM kills), slot B's
CPU, the host's CPU pressure (PSI ``some``), and the CPU time of processes that run *outside*
both slots on A's behalf (supervisord, kernel threads: kswapd, oom_reaper, kworkers, loop).

>>> kthread_group("kworker/u8:3-events_unbound"), kthread_group("ksoftirqd/1"), kthread_group("loop12")
('kworker', 'ksoftirqd', 'loop')
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def kthread_group(comm: str) -> str:
    """A kernel thread's family: its name up to the first '/', ':', '-' or digit."""
    return re.split(r"[/:\-0-9]", comm, maxsplit=1)[0] or comm


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _kv(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _psi_some_us(kind: str) -> int:
    for line in _read(Path("/proc/pressure") / kind).splitlines():
        if line.startswith("some"):
            return int(line.rsplit("total=", 1)[1])
    return 0


def _proc_stats() -> tuple[dict[str, float], dict[int, float]]:
    """CPU seconds of kernel threads by family, and of every process by pid."""
    kthreads: dict[str, float] = {}
    procs: dict[int, float] = {}
    for d in os.scandir("/proc"):
        if not d.name.isdigit():
            continue
        text = _read(Path(d.path) / "stat")
        if not text:
            continue
        comm = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICK
        procs[int(d.name)] = cpu
        if fields[1] == "2" or d.name == "2":  # children of kthreadd
            kthreads[kthread_group(comm)] = kthreads.get(kthread_group(comm), 0.0) + cpu
    return kthreads, procs


@dataclass
class Snapshot:
    at: float
    cg: dict[str, dict[str, int]]
    psi_cpu: int
    psi_mem: int
    kthreads: dict[str, float]
    procs: dict[int, float]
    load: str = field(default="")


class Probe:
    """Counters of cgroups A and B (v1 directories under ROOT/<controller>/PARENT/<user>)."""

    def __init__(self, root: Path, parent: str, supervisord_pid: int | None) -> None:
        self.root = root
        self.parent = parent
        self.supervisord_pid = supervisord_pid

    def _cg(self, user: str) -> dict[str, int]:
        def base(ctrl: str) -> Path:
            return self.root / ctrl / self.parent / user

        out = {f"cpu.{k}": v for k, v in _kv(_read(base("cpu") / "cpu.stat")).items()}
        out["usage_ns"] = int(_read(base("cpuacct") / "cpuacct.usage").strip() or 0)
        out["mem.failcnt"] = int(_read(base("memory") / "memory.failcnt").strip() or 0)
        out["mem.oom_kill"] = _kv(_read(base("memory") / "memory.oom_control")).get("oom_kill", 0)
        stat = _kv(_read(base("memory") / "memory.stat"))
        out["mem.pgmajfault"] = stat.get("total_pgmajfault", 0)
        return out

    def snap(self, users: list[str]) -> Snapshot:
        kthreads, procs = _proc_stats()
        return Snapshot(time.monotonic(), {u: self._cg(u) for u in users}, _psi_some_us("cpu"),
                        _psi_some_us("memory"), kthreads, procs, _read(Path("/proc/loadavg")).split(" ")[0])

    def report(self, a: Snapshot, b: Snapshot, names: dict[str, str]) -> dict[str, float]:
        """Deltas over the phase: cores used, throttling, OOM kills, PSI %, helpers' CPU."""
        dt = b.at - a.at
        out: dict[str, float] = {"seconds": dt, "load1": float(b.load or 0)}
        for user, label in names.items():
            if user not in a.cg or user not in b.cg:
                continue
            x, y = a.cg[user], b.cg[user]
            out[f"{label}.cores"] = (y["usage_ns"] - x["usage_ns"]) / 1e9 / dt
            out[f"{label}.throttled_ms"] = (y.get("cpu.throttled_time", 0) - x.get("cpu.throttled_time", 0)) / 1e6
            out[f"{label}.nr_throttled"] = y.get("cpu.nr_throttled", 0) - x.get("cpu.nr_throttled", 0)
            out[f"{label}.oom_kills"] = y["mem.oom_kill"] - x["mem.oom_kill"]
            out[f"{label}.mem_limit_hits"] = y["mem.failcnt"] - x["mem.failcnt"]
        out["psi_cpu_some_pct"] = (b.psi_cpu - a.psi_cpu) / 1e4 / dt
        out["psi_mem_some_pct"] = (b.psi_mem - a.psi_mem) / 1e4 / dt
        for fam in sorted(set(a.kthreads) | set(b.kthreads)):
            used = b.kthreads.get(fam, 0.0) - a.kthreads.get(fam, 0.0)
            if used > 0:
                out[f"kthread.{fam}.cores"] = used / dt
        if self.supervisord_pid:
            sv = self.supervisord_pid
            out["supervisord.cores"] = (b.procs.get(sv, 0.0) - a.procs.get(sv, 0.0)) / dt
        return out


class TaskWatch:
    """The thread ids listed in a cgroup's ``tasks`` file, read every 20 ms until :meth:`stop`."""

    def __init__(self, tasks: Path) -> None:
        import threading

        self.tasks = tasks
        self.seen: set[int] = set()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            self.seen |= {int(x) for x in _read(self.tasks).split()}
            self._done.wait(0.02)

    def stop(self) -> set[int]:
        self._done.set()
        self._thread.join()
        return self.seen


_EVENT = re.compile(r"^\s*(.+?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$")
_KV = re.compile(r"(\w+)=(\S+)")


def wakeup_report(data: Path, web_pid: int, a_tids: set[int]) -> str:
    """From a ``perf sched record`` file: how long B's threads waited for a CPU once woken, and
    what ran on that CPU meanwhile when a wait exceeded 2 ms (A's tasks marked ``A:``, B's ``B:``,
    the rest by command name: other sessions' jobs, root daemons, kernel threads)."""
    import collections
    import subprocess

    out = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,tid,pid,cpu,time,event,trace"],
                         capture_output=True, text=True, check=False).stdout
    b, a = {web_pid}, set(a_tids)
    waking: dict[int, float] = {}
    running: dict[int, tuple[int, str, float]] = {}
    segs: dict[int, collections.deque[tuple[float, float, int, str]]] = collections.defaultdict(collections.deque)
    delays: list[float] = []
    blame: dict[str, float] = collections.defaultdict(float)

    def who(tid: int, comm: str) -> str:
        if tid in b:
            return "B:" + comm
        if tid in a:
            return "A:" + comm
        return comm

    for line in out.splitlines():
        m = _EVENT.match(line)
        if not m:
            continue
        _comm, pid_s, tid_s, cpu_s, t_s, ev, rest = m.groups()
        tid, cpu, t = int(tid_s), int(cpu_s), float(t_s)
        if int(pid_s) in b:
            b.add(tid)
        f = dict(_KV.findall(rest))
        if ev == "sched:sched_process_fork":
            for group in (b, a):
                if int(f["pid"]) in group:
                    group.add(int(f["child_pid"]))
        elif ev in ("sched:sched_waking", "sched:sched_wakeup_new"):
            if int(f["pid"]) in b:
                waking.setdefault(int(f["pid"]), t)
        elif ev == "sched:sched_switch":
            prev, nxt = int(f["prev_pid"]), int(f["next_pid"])
            if cpu in running:
                ptid, pcomm, since = running[cpu]
                segs[cpu].append((since, t, ptid, pcomm))
                while segs[cpu] and segs[cpu][0][1] < t - 0.5:
                    segs[cpu].popleft()
            running[cpu] = (nxt, f["next_comm"], t)
            if prev in b and f.get("prev_state", "").startswith("R"):
                waking[prev] = t  # preempted: waits again from now
            if nxt in b and nxt in waking:
                w0 = waking.pop(nxt)
                delays.append((t - w0) * 1000)
                if delays[-1] > 2:
                    for s0, s1, st, sc in segs[cpu]:
                        overlap = min(s1, t) - max(s0, w0)
                        if overlap > 0:
                            blame[who(st, sc)] += overlap * 1000
    if not delays:
        return f"{data.name}: no wakeups of B's threads recorded"
    delays.sort()
    n = len(delays)
    total = sum(blame.values()) or 1.0
    return (f"{data.name}: {n} waits of B's threads for a CPU: p50 {delays[n // 2]:.3f} ms, "
            f"p95 {delays[int(.95 * (n - 1))]:.2f} ms, max {delays[-1]:.1f} ms; {sum(d > 2 for d in delays)} "
            f"over 2 ms, during which ran: "
            + ", ".join(f"{k} {v / total * 100:.0f}%" for k, v in sorted(blame.items(), key=lambda kv: -kv[1])[:10]))
