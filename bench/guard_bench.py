"""Login guard: per-attempt cost and concurrent exactness, against pam_unix and pam_faillock.

Latency/CPU: a forking driver like sshd's (one child process per attempt, which runs
pam_start / pam_authenticate / pam_end through libpam) runs a wrong-password attempt for a
real user through three stacks, interleaved round-robin in one run:

- ``unix``      - Debian's common-auth (pam_unix), nothing else;
- ``faillock``  - pam_faillock preauth/authfail/authsucc around pam_unix (deny high: never locks);
- ``guard``     - the stock sshd-style file with ``slotctl guard install`` (pair_deny high).

Wall time and CPU (getrusage in the child) are measured around the PAM calls only; the
guard service's own CPU (from /proc) is added per attempt. The failure delay is switched
off (PAM_FAIL_DELAY) so it does not hide the cost.

Exactness: with deny/pair_deny = 3, 20 children released at once try one pair, the last
child with the right password; a pam_exec counter after the preauth line counts the
passwords that reached pam_unix.

Baseline (``--baseline REF``): the guard of git revision REF (its pam_hooks/ and module,
exported with ``git archive`` and built in a temp dir) runs beside this checkout's, each
with its own service, both stacks interleaved round-robin in one run: the guard's cost
now as a ratio of the baseline's.

    sudo .venv/bin/python bench/guard_bench.py --attempts 300 --rounds 10
    sudo .venv/bin/python bench/guard_bench.py --baseline e494538 --attempts 300 --only-baseline
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.system.fixtures.guard import GuardEnv
from tests.system.fixtures.sshd import lab_user
from tests.system.pamclient import PAM_SUCCESS, PamHandle

RHOST = "198.51.100.77"
UNIX_STACK = "@include common-auth\n@include common-account\n"


def faillock_stack(tally: Path, deny: int, counter: Path | None = None) -> str:
    opts = f"dir={tally} deny={deny} unlock_time=900"
    count = f"auth optional pam_exec.so quiet {counter}\n" if counter else ""
    return (f"auth requisite pam_faillock.so preauth silent {opts}\n{count}"
            "auth [success=1 default=bad] pam_unix.so nullok\n"
            f"auth [default=die] pam_faillock.so authfail {opts}\n"
            f"auth sufficient pam_faillock.so authsucc {opts}\n"
            "auth requisite pam_deny.so\n"
            f"account required pam_faillock.so {opts}\n@include common-account\n")


def attempt(service: str, user: str, password: str, out_fd: int) -> None:
    """Child side: one attempt, timed; writes 'ok wall cpu' to out_fd and exits."""
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    with PamHandle(service, user, RHOST, password, no_delay=True) as h:
        rc = h.authenticate()
    t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    os.write(out_fd, f"{int(rc == PAM_SUCCESS)} {t1 - t0:.6f} {cpu:.6f}\n".encode())
    os._exit(0)


def forked(service: str, user: str, password: str) -> tuple[bool, float, float]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            attempt(service, user, password, w)
        finally:
            os._exit(1)
    os.close(w)
    data = b""
    while chunk := os.read(r, 256):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    ok, wall, cpu = data.split()
    return ok == b"1", float(wall), float(cpu)


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p * (len(xs) - 1)))]


def write_pam(name: str, text: str) -> Path:
    path = Path("/etc/pam.d") / name
    path.write_text(text)
    return path


GUARD_ONLY = "auth requisite pam_deny.so\n"


def latency(attempts: int, user: str, tmp: Path, guard: GuardEnv) -> dict[str, object]:
    """Full stacks (unix / +faillock / +guard) and the guard alone (pam_deny vs guard+pam_deny)."""
    (tmp / "tally-lat").mkdir()
    svc = {"unix": f"slotwarden-test-bench-{secrets.token_hex(3)}",
           "faillock": f"slotwarden-test-bench-{secrets.token_hex(3)}",
           "guard": guard.pam_service(UNIX_STACK),
           "deny": f"slotwarden-test-bench-{secrets.token_hex(3)}",
           "guard_deny": guard.pam_service(GUARD_ONLY + "@include common-auth\n@include common-account\n")}
    # guard_deny: the guard's preauth line followed by pam_deny (the include is never reached).
    gd = Path("/etc/pam.d") / svc["guard_deny"]
    lines = gd.read_text().splitlines(keepends=True)
    pre = next(i for i, ln in enumerate(lines) if ln.startswith("auth") and "pam_slotwarden.so" in ln)
    gd.write_text("".join(lines[: pre + 1]) + GUARD_ONLY)
    files = [write_pam(svc["unix"], UNIX_STACK),
             write_pam(svc["faillock"], faillock_stack(tmp / "tally-lat", 10**6)),
             write_pam(svc["deny"], GUARD_ONLY)]
    assert guard.proc is not None
    gpid = guard.proc.pid
    wall: dict[str, list[float]] = {k: [] for k in svc}
    cpu: dict[str, list[float]] = {k: [] for k in svc}
    order = list(svc)
    try:
        for k in svc:  # warm-up: page cache, the guard's first connection
            forked(svc[k], user, "wrong-password")
        # The service's CPU over the whole run, per guarded attempt (both guard stacks).
        c0 = proc_cpu(gpid)
        for i in range(attempts):
            for k in (order if i % 2 == 0 else order[::-1]):
                ok, w, c = forked(svc[k], user, "wrong-password")
                assert not ok
                wall[k].append(w * 1000)
                cpu[k].append(c * 1000)
        time.sleep(1.5)  # the last fire-and-forget FAIL, and one timer tick, land in the window
        service_cpu = proc_cpu(gpid) - c0
    finally:
        for f in files:
            f.unlink(missing_ok=True)

    def stats(k: str, base: str) -> dict[str, float]:
        dw = [a - b for a, b in zip(wall[k], wall[base], strict=True)]
        dc = [a - b for a, b in zip(cpu[k], cpu[base], strict=True)]
        return {
            "wall_ms_median": round(statistics.median(wall[k]), 3), "wall_ms_p95": round(pct(wall[k], 0.95), 3),
            "cpu_ms_median": round(statistics.median(cpu[k]), 3), "cpu_ms_p95": round(pct(cpu[k], 0.95), 3),
            # paired: each attempt minus the baseline attempt of the same round
            "added_wall_ms_median": round(statistics.median(dw), 3), "added_wall_ms_p95": round(pct(dw, 0.95), 3),
            "added_cpu_ms_median": round(statistics.median(dc), 3), "added_cpu_ms_p95": round(pct(dc, 0.95), 3),
        }

    out: dict[str, object] = {"attempts_per_stack": attempts}
    for k in ("unix", "faillock", "guard"):
        out[k] = stats(k, "unix")
    out["deny"] = stats("deny", "deny")
    out["guard_alone"] = stats("guard_deny", "deny")
    out["guard_service_cpu_ms_per_attempt"] = round(service_cpu * 1000 / (2 * attempts), 3)
    return out


def race(service: str, user: str, right: str, n: int) -> bool:
    """n children released at once; the last one has the right password. Returns whether it got in."""
    gate_r, gate_w = os.pipe()
    res_r, res_w = os.pipe()
    pids = []
    for i in range(n):
        pid = os.fork()
        if pid == 0:
            os.close(gate_w)
            os.close(res_r)
            os.read(gate_r, 1)  # blocks until the parent closes the gate
            try:
                attempt(service, user, right if i == n - 1 else f"wrong-{i}", res_w)
            finally:
                os._exit(1)
        pids.append(pid)
    os.close(gate_r)
    os.close(res_w)
    time.sleep(0.3)
    os.close(gate_w)  # EOF for every child at once
    data = b""
    while chunk := os.read(res_r, 4096):
        data += chunk
    os.close(res_r)
    for pid in pids:
        os.waitpid(pid, 0)
    # Only the last child had the right password: any success is that one.
    return any(ln.split()[0] == "1" for ln in data.decode().splitlines())


def exactness(rounds: int, deny: int, conc: int, user: str, password: str, tmp: Path) -> dict[str, object]:
    counter_log = tmp / "checks.log"
    counter = tmp / "count.sh"
    counter.write_text(f"#!/bin/sh\necho \"$PAM_USER\" >> {counter_log}\n")
    counter.chmod(0o755)
    rows = []
    for rnd in range(rounds):
        row: dict[str, object] = {"round": rnd + 1}
        # pam_faillock: a fresh tally dir each round (the "new tally file" case).
        tally = tmp / f"tally-{rnd}"
        tally.mkdir()
        fsvc = f"slotwarden-test-bench-{secrets.token_hex(3)}"
        f = write_pam(fsvc, faillock_stack(tally, deny, counter))
        counter_log.unlink(missing_ok=True)
        try:
            got_in = race(fsvc, user, password, conc)
        finally:
            f.unlink(missing_ok=True)
        checks = len(counter_log.read_text().splitlines()) if counter_log.exists() else 0
        tally_out = subprocess.run(["faillock", "--dir", str(tally), "--user", user], capture_output=True,
                                   text=True, check=False).stdout
        recorded = sum(1 for ln in tally_out.splitlines() if ln[:4].isdigit())
        row.update(faillock_checked=checks, faillock_right_guess_in=got_in, faillock_failures_recorded=recorded)
        # The guard: a fresh GuardEnv (new store) each round.
        env = GuardEnv({"pair_deny": deny, "ip_deny": 10**6, "user_deny": 10**6})
        try:
            env.start()
            gsvc = env.pam_service(count_checks=True)
            got_in = race(gsvc, user, password, conc)
            rec = env.json("list", "--user", user, "--ip", RHOST)
            row.update(guard_checked=env.checks(user), guard_right_guess_in=got_in,
                       guard_failures_recorded=rec[0]["count"] + rec[0]["cleared"] if rec else 0,
                       guard_refused=rec[0]["refused"] if rec else 0)
        finally:
            env.close()
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"deny": deny, "concurrent": conc, "rounds": rows}


def baseline_tree(ref: str, tmp: Path) -> Path:
    """pam_hooks/ of git revision REF in a temp dir, its module built there."""
    root = tmp / "baseline"
    root.mkdir()
    repo = Path(__file__).resolve().parents[1]
    tar = subprocess.run(["git", "-C", str(repo), "archive", ref, "pam_hooks"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=tar, check=True)
    subprocess.run(["make", "-s", "-C", str(root / "pam_hooks" / "c")], check=True, capture_output=True)
    return root


IN_PROCESS = r"""
import resource, sys, tempfile
from pathlib import Path
from pam_hooks.config import GuardConfig
from pam_hooks.service import GuardService
d = Path(tempfile.mkdtemp(prefix="swg-bench-ip-"))
s = GuardService(GuardConfig(state_dir=d, socket=d / "g.sock", pair_deny=10**6, ip_deny=10**6, user_deny=10**6))
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
n = int(sys.argv[1])
for i in range(n + 300):
    if i == 300:
        c0 = cpu()
    t = s.handle_line(f"AUTH\tsshd\tu{i % 50}\t198.51.100.{i % 200}".encode()).split()[1]
    s.handle_line(f"FAIL\t{t}".encode())
print((cpu() - c0) * 1000 / n)
s.close()
import shutil; shutil.rmtree(d)
"""


def in_process(trees: dict[str, Path], rounds: int = 7, n: int = 3000) -> dict[str, float]:
    """CPU ms per reservation + failure, the service's code called in-process (no socket), trees alternated."""
    got: dict[str, list[float]] = {k: [] for k in trees}
    for _ in range(rounds):
        for k, root in trees.items():
            r = subprocess.run([sys.executable, "-c", IN_PROCESS, str(n)], cwd=root, env={**os.environ,
                               "PYTHONPATH": str(root)}, capture_output=True, text=True, check=True)
            got[k].append(float(r.stdout))
    return {k: round(statistics.median(v), 4) for k, v in got.items()}


def socket_cpu(envs: dict[str, GuardEnv], rounds: int = 5, n: int = 1500) -> dict[str, float]:
    """The service's CPU ms per reservation + failure over its socket (one connection each, as the module does)."""
    from pam_hooks.client import request

    got: dict[str, list[float]] = {k: [] for k in envs}
    for _ in range(rounds):
        for k, env in envs.items():
            assert env.proc is not None
            c0 = proc_cpu(env.proc.pid)
            for i in range(n):
                tok = request(env.cfg.socket, f"AUTH\tsshd\tu{i % 50}\t198.51.100.{i % 200}").split()[1]
                request(env.cfg.socket, f"FAIL\t{tok}")
            time.sleep(0.2)
            got[k].append((proc_cpu(env.proc.pid) - c0) * 1000 / n)
    return {k: round(statistics.median(v), 4) for k, v in got.items()}


def compare(attempts: int, user: str, now: GuardEnv, base: GuardEnv) -> dict[str, object]:
    """This checkout's guard vs the baseline's, interleaved: full stack and preauth alone, plus service CPU."""
    svc: dict[str, str] = {"unix": f"slotwarden-test-bench-{secrets.token_hex(3)}",
                           "deny": f"slotwarden-test-bench-{secrets.token_hex(3)}"}
    files = [write_pam(svc["unix"], UNIX_STACK), write_pam(svc["deny"], GUARD_ONLY)]
    for tag, env in (("now", now), ("base", base)):
        svc[f"guard_{tag}"] = env.pam_service(UNIX_STACK)
        svc[f"alone_{tag}"] = env.pam_service(GUARD_ONLY + UNIX_STACK)
        gd = Path("/etc/pam.d") / svc[f"alone_{tag}"]
        lines = gd.read_text().splitlines(keepends=True)
        pre = next(i for i, ln in enumerate(lines) if ln.startswith("auth") and "pam_slotwarden.so" in ln)
        gd.write_text("".join(lines[: pre + 1]) + GUARD_ONLY)
    assert now.proc is not None and base.proc is not None
    wall: dict[str, list[float]] = {k: [] for k in svc}
    order = list(svc)
    try:
        for k in svc:
            forked(svc[k], user, "wrong-password")
        c0 = {"now": proc_cpu(now.proc.pid), "base": proc_cpu(base.proc.pid)}
        for i in range(attempts):
            for k in (order if i % 2 == 0 else order[::-1]):
                ok, w, _c = forked(svc[k], user, "wrong-password")
                assert not ok
                wall[k].append(w * 1000)
        time.sleep(1.5)
        cpu = {"now": proc_cpu(now.proc.pid) - c0["now"], "base": proc_cpu(base.proc.pid) - c0["base"]}
    finally:
        for f in files:
            f.unlink(missing_ok=True)

    def added(k: str, ref: str) -> float:
        return round(statistics.median([a - b for a, b in zip(wall[k], wall[ref], strict=True)]), 3)

    out: dict[str, object] = {"attempts_per_stack": attempts}
    for tag in ("now", "base"):
        out[tag] = {"full_stack_added_wall_ms_median": added(f"guard_{tag}", "unix"),
                    "preauth_alone_added_wall_ms_median": added(f"alone_{tag}", "deny"),
                    "service_cpu_ms_per_attempt": round(cpu[tag] * 1000 / (2 * attempts), 3)}
    b, n = out["base"], out["now"]
    assert isinstance(b, dict) and isinstance(n, dict)
    out["service_cpu_ratio_now_over_base"] = round(n["service_cpu_ms_per_attempt"] /
                                                   max(b["service_cpu_ms_per_attempt"], 1e-9), 3)
    sc = socket_cpu({"now": now, "base": base})
    out["socket_cpu_ms_per_reservation_and_failure"] = sc
    out["socket_ratio_now_over_base"] = round(sc["now"] / sc["base"], 3)
    ip = in_process({"now": now.code_dir, "base": base.code_dir})
    out["in_process_cpu_ms_per_reservation_and_failure"] = ip
    out["in_process_ratio_now_over_base"] = round(ip["now"] / ip["base"], 3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--attempts", type=int, default=300, help="attempts per stack for latency")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--deny", type=int, default=3)
    ap.add_argument("--concurrent", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "guard.json")
    ap.add_argument("--baseline", default=None, help="git revision whose guard runs beside this one")
    ap.add_argument("--only-baseline", action="store_true", help="only the baseline comparison")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (real users, PAM services, the guard service)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="swg-bench-"))
    result: dict[str, object] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                 "cpus": os.cpu_count(), "load": os.getloadavg()}
    name, pw = f"tg{secrets.token_hex(3)}", f"Pw-{secrets.token_hex(8)}"
    high = {"pair_deny": 10**6, "ip_deny": 10**6, "user_deny": 10**6}
    try:
        with lab_user(name, pw):
            if args.baseline:
                root = baseline_tree(args.baseline, tmp)
                now, base = GuardEnv(high), GuardEnv(high)
                base.code_dir, base.module_path = root, root / "pam_hooks" / "c" / "pam_slotwarden.so"
                try:
                    now.start()
                    base.start()
                    result["baseline"] = {"ref": args.baseline, **compare(args.attempts, name, now, base)}
                finally:
                    now.close()
                    base.close()
                print(json.dumps(result["baseline"], indent=1), flush=True)
            if not args.only_baseline:
                env = GuardEnv(high)
                try:
                    env.start()
                    result["latency"] = latency(args.attempts, name, tmp, env)
                finally:
                    env.close()
                print(json.dumps(result["latency"], indent=1), flush=True)
                result["exactness"] = exactness(args.rounds, args.deny, args.concurrent, name, pw, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    ctypes.CDLL(None)  # libc loaded before any fork
    sys.exit(main())
