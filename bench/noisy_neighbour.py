"""Bench: slot B's app and login latency while slot A runs CPU, memory and I/O hogs, limits off vs on.

One run, three phases interleaved round by round, ABBA (idle, off, on, then on, off, idle: the
machine is shared and its load drifts):

- ``idle``: nothing runs in A;
- ``off``: the hogs run in a slot on a plan without limits (its own cgroup, nothing capped);
- ``on``: the same hogs in a slot on a plan with limits (0.5 core, 256 MiB, 64 tasks, 20 MiB/s).

The hogs are supervisord programs of the slot (placed in its cgroup like its apps), running for
the whole phase: two busy loops (this machine has 2 cores), one process touching 1 GiB over and
over (OOM-killed and restarted under the 256 MiB limit), one ``dd oflag=direct`` write loop.
B's app is an HTTP server under supervisord; B's login is a real SSH password login through a
lab sshd with ``pam_slotwarden_session.so``. HTTP requests and logins alternate in ``--chunks``
blocks so both are spread over the phase.

Reported: p50 and p95 per phase and p95 against idle, for the HTTP GET as the client saw it and
less the client's own wait for a CPU (its ``/proc/thread-self/schedstat`` run-queue time during
the request: the client is a root process on this same loaded machine, a visitor's would not
be), and per phase what A used and cost (``--diag``: CPU, CFS throttling, OOM kills, PSI, the
CPU of supervisord and of kernel threads outside both slots). ``--perf DIR`` records each phase
with ``perf sched`` and prints how long B's threads waited for a CPU and what ran meanwhile.

Run as root: ``.venv/bin/python bench/noisy_neighbour.py [--rounds 4 --requests 200 --logins 8]``.
Everything is removed at the end.
"""

from __future__ import annotations

import argparse
import http.client
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from provisioner import accounts, operations
from provisioner.limits import place
from provisioner.metrics import metrics_config
from provisioner.slots import Created
from provisioner.supervisor import Program, supervisor_for
from tests.system.fixtures.hosts import make_slot_host, teardown_slot_host, world_traversable_tmpdir
from tests.system.fixtures.netns import LabHost, LabNet, NetOnlyHost
from tests.system.fixtures.sshd import LabSshd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from noisy_probe import Probe, TaskWatch, wakeup_report

REPO = Path(__file__).resolve().parent.parent
PLANS = """
[plans.capped]
quota = "512M"
cpu_cores = 0.5
cpu_weight = 50
memory_max = "256M"
max_processes = 64
io_write_bps = "20M"
[plans.open]
quota = "512M"
"""
SSH_OPTS = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "-o", "PreferredAuthentications=password",
            "-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=1"]
# One line (a program's argv never holds a newline): the loop is exec'd from escapes.
TOUCH = ("exec('import time\\nb = bytearray(1 << 30)\\nwhile True:\\n    for i in range(0, len(b), 4096):"
         "\\n        b[i] = (b[i] + 1) % 256\\n    time.sleep(0.05)\\n')")


def hogs(user: str, home: str) -> list[Program]:
    def prog(app: str, argv: list[str]) -> Program:
        return Program(app=app, user=user, argv=argv, cwd=home, startsecs=0)

    return [
        prog("hogcpu1", ["/usr/bin/python3", "-c", "while True: pass"]),
        prog("hogcpu2", ["/usr/bin/python3", "-c", "while True: pass"]),
        prog("hogmem", ["/usr/bin/python3", "-c", TOUCH]),
        prog("hogio", ["/bin/sh", "-c", "while true; do dd if=/dev/zero of=io.bin bs=1M count=100 oflag=direct "
                                         "status=none; done"]),
    ]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def _runq_wait_ms() -> float:
    """This thread's time spent runnable but waiting for a CPU so far (schedstat, ms)."""
    return int(Path("/proc/thread-self/schedstat").read_text().split()[1]) / 1e6


def http_latencies(port: int, n: int, client_wait: list[float]) -> list[float]:
    out = []
    for _ in range(n):
        w0 = _runq_wait_ms()
        t0 = time.perf_counter()
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("GET", "/")
        c.getresponse().read()
        c.close()
        out.append((time.perf_counter() - t0) * 1000)
        client_wait.append(_runq_wait_ms() - w0)
    return out


def login_latencies(client: LabHost, sshd: LabSshd, who: Created, n: int) -> list[float]:
    out = []
    for _ in range(n):
        r, w = os.pipe()
        os.write(w, who.password.encode() + b"\n")
        os.close(w)
        t0 = time.perf_counter()
        rc = subprocess.run(client.cmd(["sshpass", "-d", str(r), "ssh", *SSH_OPTS, "-p", str(sshd.port),
                                        f"{who.record.username}@{sshd.addr}", "true"]), pass_fds=(r,),
                            capture_output=True, timeout=120).returncode
        os.close(r)
        if rc != 0:
            raise SystemExit(f"B's login failed (rc {rc})")
        out.append((time.perf_counter() - t0) * 1000)
    return out


PHASES = ("idle", "off", "on")


def phase_order(rnd: int) -> tuple[str, ...]:
    """ABBA: idle, off, on in even rounds, on, off, idle in odd ones (drift cancels out).

    >>> phase_order(0), phase_order(1)
    (('idle', 'off', 'on'), ('on', 'off', 'idle'))
    """
    return PHASES if rnd % 2 == 0 else PHASES[::-1]


def split(n: int, parts: int) -> list[int]:
    """N samples in PARTS chunks as even as can be (``split(10, 4) == [3, 3, 2, 2]``).

    >>> split(10, 4)
    [3, 3, 2, 2]
    """
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def free_port() -> int:
    """A loopback port nobody listens on now (other sessions on this machine run servers too)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cgroup_of(pid: int, controller: str) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if controller in ctrls.split(","):
            return path
    return "?"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--requests", type=int, default=200, help="HTTP GETs per phase and round")
    ap.add_argument("--logins", type=int, default=8, help="SSH logins per phase and round")
    ap.add_argument("--chunks", type=int, default=4, help="requests and logins alternate in this many blocks")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--parent-shares", type=int, help="override the slots' parent cpu.shares (to compare)")
    ap.add_argument("--diag", action="store_true", help="print the counters of every phase")
    ap.add_argument("--perf", type=Path, help="record each phase's scheduling (perf sched) into this directory")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/noisy_neighbour.py needs root")
    prefix = f"nb{secrets.token_hex(2)}"
    host = make_slot_host(world_traversable_tmpdir("noisy"), prefix, size="2G", extra_config=PLANS)
    results: dict[str, dict[str, list[float]]] = {p: {"app": [], "server": [], "login": [], "wait": []}
                                                       for p in PHASES}
    diag: dict[str, list[dict[str, float]]] = {p: [] for p in PHASES}
    loads = [os.getloadavg()[0]]
    perf_runs: list[tuple[Path, set[int]]] = []
    pid = 0
    try:
        ctx = host.ctx()
        a_on = operations.create_slot(ctx, host.name(), "a@example.org", "DE", plan="capped")
        a_off = operations.create_slot(ctx, host.name(), "o@example.org", "DE", plan="open")
        b = operations.create_slot(ctx, host.name(), "b@example.org", "DE", plan="open")
        assert isinstance(a_on, Created) and isinstance(a_off, Created) and isinstance(b, Created)
        sup = supervisor_for(ctx)
        if args.parent_shares:  # e.g. 1024: the kernel's default, the weight before slotwarden set it
            (metrics_config(ctx).cgroup_root / "cpu" / f"slotwarden-{prefix}" / "cpu.shares").write_text(
                str(args.parent_shares))
        port = free_port()
        web = place(ctx, Program(app="web", user=b.record.username, cwd=b.record.home,
                                 argv=["/usr/bin/python3", "-m", "http.server", str(port), "--bind", "127.0.0.1"]))
        sup.ensure_program(web)
        pid = sup.wait_running(web.name).pid or 0
        print(f"B's app (pid {pid}) runs in cpu:{cgroup_of(pid, 'cpu')} memory:{cgroup_of(pid, 'memory')}",
              flush=True)
        pidfile = ctx.config.state_dir / "supervisor" / "supervisord.pid"
        probe = Probe(metrics_config(ctx).cgroup_root, metrics_config(ctx).cgroup_parent,
                      int(pidfile.read_text()) if pidfile.exists() else None)
        users = [a_on.record.username, a_off.record.username, b.record.username]
        time.sleep(1)
        with LabNet(f"swn{secrets.token_hex(2)}-") as net:
            plain = net.host("srv", "198.51.100.1")
            srv = NetOnlyHost(plain.netns, plain.addr)
            client = net.host("c", "198.51.100.20")
            with LabSshd(srv, port=2300 + secrets.randbelow(90), pam_service=f"slotwarden-test-nb-{prefix}") as sshd:
                with sshd.pam_file.open("a") as f:
                    f.write(f"session required {REPO}/pam_hooks/c/pam_slotwarden_session.so "
                            f"parent=slotwarden-{prefix}\n")
                for rnd in range(args.rounds):
                    for phase in phase_order(rnd):
                        slot = {"idle": None, "off": a_off, "on": a_on}[phase]
                        progs = [place(ctx, p) for p in hogs(slot.record.username, slot.record.home)] if slot else []
                        for p in progs:
                            sup.ensure_program(p)
                        time.sleep(args.warmup if progs else 0.5)
                        res = results[phase]
                        rec = None
                        watch = None
                        if args.perf:
                            args.perf.mkdir(parents=True, exist_ok=True)
                            if slot is not None:  # every task A has in the phase, restarted hogs too
                                watch = TaskWatch(metrics_config(ctx).cgroup_root / "cpu" / f"slotwarden-{prefix}" /
                                                  slot.record.username / "tasks")
                            rec = subprocess.Popen(["perf", "sched", "record", "-a", "-o",
                                                    str(args.perf / f"r{rnd + 1}-{phase}.data")],
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                            time.sleep(1)
                        try:
                            before = probe.snap(users)
                            for nreq, nlog in zip(split(args.requests, args.chunks),
                                                  split(args.logins, args.chunks), strict=True):
                                got = http_latencies(port, nreq, res["wait"])
                                res["app"] += got
                                res["server"] += [ms - w for ms, w in zip(got, res["wait"][-nreq:], strict=True)]
                                res["login"] += login_latencies(client, sshd, b, nlog)
                            labels = {b.record.username: "B"}
                            if slot is not None:
                                labels[slot.record.username] = "A"
                            d = probe.report(before, probe.snap(users), labels)
                            diag[phase].append(d)
                        finally:
                            a_tids = watch.stop() if watch else set()
                            if rec is not None:
                                rec.send_signal(signal.SIGINT)
                                rec.wait()
                        if rec is not None and args.perf:
                            perf_runs.append((args.perf / f"r{rnd + 1}-{phase}.data", a_tids))
                        loads.append(os.getloadavg()[0])
                        for p in progs:
                            sup.remove_program(p.name)
                        if slot is not None:
                            accounts.stop_processes(slot.record.uid or 0)
                        app95 = pct(res["app"][-args.requests:], .95)
                        login95 = pct(res["login"][-args.logins:], .95)
                        print(f"round {rnd + 1} {phase}: app p95 {app95:.1f} ms, login p95 {login95:.0f} ms, "
                              f"load {d['load1']:.1f}", flush=True)
                        if args.diag:
                            print("   " + ", ".join(f"{k} {v:.3g}" for k, v in d.items()), flush=True)
        sup.remove_program(web.name)
        ctx.close()
    finally:
        teardown_slot_host(host)
        for ctrl in Path("/sys/fs/cgroup").iterdir():
            if (ctrl / f"slotwarden-{prefix}").is_dir():
                (ctrl / f"slotwarden-{prefix}").rmdir()
    print(f"\nload average (1 min) during the run: {min(loads):.1f}-{max(loads):.1f}")
    print("\n| B's latency | idle p50 / p95 | A hogs, limits off: p50 / p95 (p95 vs idle) "
          "| A hogs, limits on: p50 / p95 (p95 vs idle) |")
    print("|---|---|---|---|")
    for what, unit in (("app", "HTTP GET"), ("server", "HTTP GET less the client's own wait for a CPU"),
                       ("wait", "the client's own wait for a CPU"), ("login", "SSH login")):
        idle = results["idle"][what]
        row = [f"{unit} (n={len(idle)})", f"{statistics.median(idle):.1f} / {pct(idle, .95):.1f} ms"]
        for phase in ("off", "on"):
            v = results[phase][what]
            ratio = f" (**{pct(v, .95) / pct(idle, .95):.2f}x**)" if pct(idle, .95) > 0 else ""
            row.append(f"{statistics.median(v):.1f} / {pct(v, .95):.1f} ms{ratio}")
        print("| " + " | ".join(row) + " |")
    print("\n| per phase, mean over rounds | idle | off | on |")
    print("|---|---|---|---|")
    keys = ["A.cores", "A.nr_throttled", "A.oom_kills", "B.cores", "psi_cpu_some_pct", "psi_mem_some_pct",
            "supervisord.cores"]
    keys += sorted({k for p in PHASES for d in diag[p] for k in d if k.startswith("kthread.")})
    for k in keys:
        cells = [f"{statistics.mean(d.get(k, 0.0) for d in diag[p]):.3g}" if diag[p] else "-" for p in PHASES]
        print(f"| {k} | " + " | ".join(cells) + " |")
    for data, a_tids in perf_runs:
        print(wakeup_report(data, pid, a_tids))


if __name__ == "__main__":
    main()
