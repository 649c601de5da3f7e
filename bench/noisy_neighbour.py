"""Bench: slot B's app and login latency while slot A runs CPU, memory and I/O hogs, limits off vs on.

One run, three phases interleaved round by round (this machine is shared and noisy):

- ``idle``: nothing runs in A;
- ``off``: the hogs run in a slot on a plan without limits (its own cgroup, nothing capped);
- ``on``: the same hogs in a slot on a plan with limits (0.5 core, 256 MiB, 64 tasks, 20 MiB/s).

The hogs are supervisord programs of the slot (placed in its cgroup like its apps): two busy
loops (this machine has 2 cores), one process touching 1 GiB over and over (OOM-killed and
restarted under the 256 MiB limit), one ``dd oflag=direct`` write loop. B's app is an HTTP
server under supervisord; B's login is a real SSH password login through a lab sshd with
``pam_slotwarden_session.so``. Reported: p50 and p95 per phase, and p95 against idle.

Run as root: ``.venv/bin/python bench/noisy_neighbour.py [--rounds 3 --requests 100 --logins 10]``.
Everything is removed at the end.
"""

from __future__ import annotations

import argparse
import http.client
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from provisioner import accounts, operations
from provisioner.limits import place
from provisioner.slots import Created
from provisioner.supervisor import Program, supervisor_for
from tests.system.fixtures.hosts import make_slot_host, teardown_slot_host, world_traversable_tmpdir
from tests.system.fixtures.netns import LabHost, LabNet, NetOnlyHost
from tests.system.fixtures.sshd import LabSshd

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


def http_latencies(port: int, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("GET", "/")
        c.getresponse().read()
        c.close()
        out.append((time.perf_counter() - t0) * 1000)
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--logins", type=int, default=10)
    ap.add_argument("--warmup", type=float, default=3.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/noisy_neighbour.py needs root")
    prefix = f"nb{secrets.token_hex(2)}"
    host = make_slot_host(world_traversable_tmpdir("noisy"), prefix, size="2G", extra_config=PLANS)
    results: dict[str, dict[str, list[float]]] = {p: {"app": [], "login": []} for p in ("idle", "off", "on")}
    try:
        ctx = host.ctx()
        a_on = operations.create_slot(ctx, host.name(), "a@example.org", "DE", plan="capped")
        a_off = operations.create_slot(ctx, host.name(), "o@example.org", "DE", plan="open")
        b = operations.create_slot(ctx, host.name(), "b@example.org", "DE", plan="open")
        assert isinstance(a_on, Created) and isinstance(a_off, Created) and isinstance(b, Created)
        sup = supervisor_for(ctx)
        port = 41000 + secrets.randbelow(900)
        web = place(ctx, Program(app="web", user=b.record.username, cwd=b.record.home,
                                 argv=["/usr/bin/python3", "-m", "http.server", str(port), "--bind", "127.0.0.1"]))
        sup.ensure_program(web)
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
                    for phase, slot in (("idle", None), ("off", a_off), ("on", a_on)):
                        progs = [place(ctx, p) for p in hogs(slot.record.username, slot.record.home)] if slot else []
                        for p in progs:
                            sup.ensure_program(p)
                        time.sleep(args.warmup if progs else 0.5)
                        results[phase]["app"] += http_latencies(port, args.requests)
                        results[phase]["login"] += login_latencies(client, sshd, b, args.logins)
                        for p in progs:
                            sup.remove_program(p.name)
                        if slot is not None:
                            accounts.stop_processes(slot.record.uid or 0)
                        app95 = pct(results[phase]["app"][-args.requests:], .95)
                        login95 = pct(results[phase]["login"][-args.logins:], .95)
                        print(f"round {rnd + 1} {phase}: app p95 {app95:.1f} ms, login p95 {login95:.0f} ms",
                              flush=True)
        sup.remove_program(web.name)
        ctx.close()
    finally:
        teardown_slot_host(host)
        for ctrl in Path("/sys/fs/cgroup").iterdir():
            if (ctrl / f"slotwarden-{prefix}").is_dir():
                (ctrl / f"slotwarden-{prefix}").rmdir()
    print("\n| B's latency | idle p50 / p95 | A hogs, limits off: p50 / p95 (p95 vs idle) "
          "| A hogs, limits on: p50 / p95 (p95 vs idle) |")
    print("|---|---|---|---|")
    for what, unit in (("app", "HTTP GET"), ("login", "SSH login")):
        idle = results["idle"][what]
        row = [f"{unit} (n={len(idle)})", f"{statistics.median(idle):.1f} / {pct(idle, .95):.1f} ms"]
        for phase in ("off", "on"):
            v = results[phase][what]
            row.append(f"{statistics.median(v):.1f} / {pct(v, .95):.1f} ms (**{pct(v, .95) / pct(idle, .95):.2f}x**)")
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
