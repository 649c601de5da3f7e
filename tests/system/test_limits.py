"""Per-slot limits on this machine (cgroup v1, no systemd), proven with real logins and real hogs.

A lab sshd (own PAM service, with ``pam_slotwarden_session.so`` in its session stack) in a
network namespace; two slots A and B on plans with limits; everything each slot runs goes in
through the same door a tenant uses — an SSH login — or its app supervisor.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from provisioner import accounts, lifecycle_records, operations
from provisioner.doctor import find_drift
from provisioner.limits import LimitRecords, place
from provisioner.slots import Created
from provisioner.supervisor import Program, supervisor_for
from tests.system.fixtures.doors import lab_cron, run_su, su_stack
from tests.system.fixtures.hosts import REPO, SlotHost, make_slot_host, teardown_slot_host, world_traversable_tmpdir
from tests.system.fixtures.netns import LabHost, LabNet, NetOnlyHost
from tests.system.fixtures.processes import wait_for
from tests.system.fixtures.sshd import PASSWORD_LOGIN_OPTS, LabSshd

SESSION_MODULE = REPO / "pam_hooks" / "c" / "pam_slotwarden_session.so"
CGROUP = Path("/sys/fs/cgroup")

PLANS = """
[plans.capped]
quota = "256M"
cpu_cores = 0.5
cpu_weight = 50
memory_max = "96M"
memory_high = "80M"
swap_max = 0
max_processes = 24
[plans.roomy]
quota = "256M"
cpu_cores = 1
memory_max = "160M"
max_processes = 48
[plans.huge]
quota = "256M"
memory_max = "64T"
[plans.tiny]
quota = "128M"
memory_max = "32M"
max_processes = 8
"""

@dataclass
class Lab:
    host: SlotHost
    client: LabHost
    sshd: LabSshd
    a: Created
    b: Created

    @property
    def parent(self) -> str:
        return f"slotwarden-{self.host.prefix}"

    def cg(self, ctrl: str, name: str) -> Path:
        return CGROUP / ctrl / self.parent / name

    def ssh_argv(self, who: Created, command: str, fd: int) -> list[str]:
        return self.client.cmd(["sshpass", "-d", str(fd), "ssh", *PASSWORD_LOGIN_OPTS, "-p", str(self.sshd.port),
                                f"{who.record.username}@{self.sshd.addr}", command])

    def ssh(self, who: Created, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Log in as WHO over the lab sshd (password through a pipe) and run COMMAND."""
        r, w = os.pipe()
        os.write(w, who.password.encode() + b"\n")
        os.close(w)
        try:
            return subprocess.run(self.ssh_argv(who, command, r), pass_fds=(r,), capture_output=True, text=True,
                                  timeout=timeout)
        finally:
            os.close(r)

    def ssh_popen(self, who: Created, command: str) -> subprocess.Popen[str]:
        r, w = os.pipe()
        os.write(w, who.password.encode() + b"\n")
        os.close(w)
        try:
            return subprocess.Popen(self.ssh_argv(who, command, r), pass_fds=(r,), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        finally:
            os.close(r)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    assert SESSION_MODULE.exists(), "run 'make pam' first (builds pam_slotwarden_session.so)"
    prefix = f"tl{secrets.token_hex(2)}"
    host = make_slot_host(world_traversable_tmpdir("limits"), prefix, extra_config=PLANS)
    try:
        ctx = host.ctx()
        a = operations.create_slot(ctx, host.name(), "a@example.org", "DE", plan="capped")
        b = operations.create_slot(ctx, host.name(), "b@example.org", "DE", plan="roomy")
        ctx.close()
        assert isinstance(a, Created) and isinstance(b, Created)
        port = 2300 + secrets.randbelow(90)
        with LabNet(f"swl{secrets.token_hex(2)}-") as net:
            plain = net.host("srv", "198.51.100.1")
            srv = NetOnlyHost(plain.netns, plain.addr)
            client = net.host("c", "198.51.100.20")
            with LabSshd(srv, port=port, pam_service=f"slotwarden-test-lim-{prefix}") as sshd:
                with sshd.pam_file.open("a") as f:
                    f.write(f"session required {SESSION_MODULE} parent=slotwarden-{prefix}\n")
                yield Lab(host, client, sshd, a, b)
    finally:
        teardown_slot_host(host)
        remove_cgroup_parents(f"slotwarden-{prefix}")


def remove_cgroup_parents(parent: str) -> None:
    """The run's own cgroup parent in every hierarchy (the slots' directories are gone by now)."""
    for ctrl in CGROUP.iterdir():
        d = ctrl / parent
        if d.is_dir():
            d.rmdir()


def _read(p: Path) -> str:
    return p.read_text().strip()


def _cgroup_of(text: str, ctrl: str) -> str:
    for line in text.splitlines():
        _, ctrls, path = line.split(":", 2)
        if ctrl in ctrls.split(","):
            return path
    return ""


def test_create_applies_the_plan_limits_to_the_kernel(lab: Lab) -> None:
    a = lab.a.record.username
    assert _read(lab.cg("pids", a) / "pids.max") == "24"
    assert _read(lab.cg("cpu", a) / "cpu.cfs_quota_us") == "50000"
    assert _read(lab.cg("cpu", a) / "cpu.shares") == str(50 * 1024 // 100)
    assert int(_read(lab.cg("memory", a) / "memory.limit_in_bytes")) == 96 << 20
    assert int(_read(lab.cg("memory", a) / "memory.soft_limit_in_bytes")) == 80 << 20
    assert int(_read(lab.cg("memory", a) / "memory.memsw.limit_in_bytes")) == 96 << 20
    st = lab.cg("pids", a).stat()
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o750)
    shown = json.loads(lab.host.slotctl("slot", "show", a, "--json").stdout)
    assert shown["limits"]["max_processes"] == 24 and shown["limits"]["backend"] == "cgroup-v1"
    report = json.loads(lab.host.slotctl("data", "report", a, "--json").stdout)
    assert any(i["item"] == "resource limits" and i["value"]["memory_max"] == 96 << 20 for i in report["items"])


def test_the_slots_parent_weighs_one_root_process_per_cpu(lab: Lab) -> None:
    """A process in the v1 root cgroup weighs 1024 by itself: with the kernel's default 1024 on
    the slots' parent, every tenant together got the CPU of *one* root process (a backup, dpkg),
    and B's app waited behind the host's root jobs whenever A was busy too (bench/noisy_neighbour.py)."""
    assert _read(CGROUP / "cpu" / lab.parent / "cpu.shares") == str(1024 * (os.cpu_count() or 1))


def test_a_login_lands_in_its_slot_cgroup_and_cannot_leave(lab: Lab) -> None:
    a = lab.a.record.username
    r = lab.ssh(lab.a, "cat /proc/self/cgroup")
    assert r.returncode == 0, r.stderr
    for ctrl in ("memory", "cpu", "cpuacct", "pids", "blkio"):
        assert _cgroup_of(r.stdout, ctrl) == f"/{lab.parent}/{a}", (ctrl, r.stdout)
    # The tenant's side: move itself out, raise its own limit, make a child cgroup: all refused.
    escape = (f"echo $$ > {CGROUP}/pids/cgroup.procs; echo max > {lab.cg('pids', a)}/pids.max; "
              f"mkdir {lab.cg('pids', a)}/free; cat /proc/self/cgroup")
    r = lab.ssh(lab.a, escape)
    assert _cgroup_of(r.stdout, "pids") == f"/{lab.parent}/{a}", r.stdout
    assert r.stderr.count("Permission denied") >= 3, r.stderr
    assert _read(lab.cg("pids", a) / "pids.max") == "24"
    b = lab.b.record.username
    r = lab.ssh(lab.b, "cat /proc/self/cgroup")
    assert r.returncode == 0 and _cgroup_of(r.stdout, "memory") == f"/{lab.parent}/{b}"


def test_su_and_cron_put_what_they_start_in_the_slot_cgroup(lab: Lab) -> None:
    """Every door, not only SSH: a `su` session and a cron job of the slot run in its cgroup."""
    a = lab.a.record
    session = f"session required {SESSION_MODULE} parent={lab.parent}\n"
    r = run_su(a.username, "cat /proc/self/cgroup", su_stack(session))
    assert r.returncode == 0, r.stderr
    for ctrl in ("memory", "cpu", "pids", "blkio"):
        assert _cgroup_of(r.stdout, ctrl) == f"/{lab.parent}/{a.username}", (ctrl, r.stdout)
    out = Path(a.home) / "cron-cgroup.txt"
    out.unlink(missing_ok=True)
    # The tenant's own crontab; the job writes where it ran, and tries to leave.
    with lab_cron(session, {a.username: f"* * * * * cat /proc/self/cgroup > {out}.tmp; "
                                 f"echo $$ > {CGROUP}/pids/cgroup.procs 2>/dev/null; "
                                 f"cat /proc/self/cgroup >> {out}.tmp; mv {out}.tmp {out}\n"}):
        wait_for(out.exists, timeout=130, step=1, what="the cron job to write its output")
    text = out.read_text()
    out.unlink()
    assert _cgroup_of(text, "pids") == f"/{lab.parent}/{a.username}", text
    assert text.count(f"pids:/{lab.parent}/{a.username}\n") == 2, text  # still inside after the escape try
    assert _cgroup_of(text, "memory") == f"/{lab.parent}/{a.username}", text


FORK_BOMB = """python3 -c '
import os, sys, time
n = 0
while True:
    try:
        pid = os.fork()
    except OSError as e:
        print(n, e.errno, flush=True)
        break
    if pid == 0:
        time.sleep(20)
        os._exit(0)
    n += 1
sys.stdout.close()
time.sleep(20)
'"""


def test_a_fork_bomb_stops_at_the_slot_process_limit_and_b_still_answers(lab: Lab) -> None:
    a = lab.a.record.username
    bomb = lab.ssh_popen(lab.a, FORK_BOMB)
    try:
        assert bomb.stdout is not None
        line = bomb.stdout.readline().split()
        assert line and line[1] == "11", line  # EAGAIN: the pids controller said no
        assert 0 < int(line[0]) < 24
        assert _read(lab.cg("pids", a) / "pids.current") == "24"
        r = lab.ssh(lab.b, "echo alive")
        assert (r.returncode, r.stdout.strip()) == (0, "alive")
    finally:
        bomb.kill()
        bomb.wait()
        accounts.stop_processes(lab.a.record.uid or 0)


HOG = "python3 -c 'b = bytearray(); exec(\"while True: b += bytes(8 << 20)\")'"


def _oom_kills(p: Path) -> int:
    for line in (p / "memory.oom_control").read_text().splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return 0


def test_a_memory_hog_is_oom_killed_inside_its_slot_and_b_still_answers(lab: Lab) -> None:
    mem = lab.cg("memory", lab.a.record.username)
    before = _oom_kills(mem)
    r = lab.ssh(lab.a, HOG)
    assert r.returncode != 0
    assert _oom_kills(mem) > before
    assert int(_read(mem / "memory.max_usage_in_bytes")) <= 96 << 20
    b_mem = lab.cg("memory", lab.b.record.username)
    assert _oom_kills(b_mem) == 0
    r = lab.ssh(lab.b, "echo alive")
    assert (r.returncode, r.stdout.strip()) == (0, "alive")


def test_an_app_under_supervisord_runs_in_its_slot_cgroup(lab: Lab) -> None:
    ctx = lab.host.ctx()
    a = lab.a.record
    prog = place(ctx, Program(app="tlimit", user=a.username, argv=["/bin/sleep", "1000"], cwd=a.home))
    sup = supervisor_for(ctx)
    try:
        sup.ensure_program(prog)
        st = sup.wait_running(prog.name)
        assert st.pid is not None
        text = Path(f"/proc/{st.pid}/cgroup").read_text()
        for ctrl in ("memory", "cpu", "pids", "blkio"):
            assert _cgroup_of(text, ctrl) == f"/{lab.parent}/{a.username}", text
        status = Path(f"/proc/{st.pid}/status").read_text()
        uid_line = next(ln for ln in status.splitlines() if ln.startswith("Uid:"))
        assert uid_line.split()[1:] == [str(a.uid)] * 4  # no root left in it
    finally:
        sup.remove_program(prog.name)
        ctx.close()


def test_change_plan_applies_new_limits_and_doctor_reports_drift(lab: Lab) -> None:
    ctx = lab.host.ctx()
    b = lab.b.record.username
    try:
        assert not [d for d in find_drift(ctx) if d.subject == b]
        r = lab.host.slotctl("slot", "change-plan", b, "capped")
        assert r.returncode == 0, r.stderr
        assert _read(lab.cg("pids", b) / "pids.max") == "24"
        assert LimitRecords(ctx.store).get(b).limits.max_processes == 24  # type: ignore[union-attr]
        (lab.cg("pids", b) / "pids.max").write_text("999")
        problems = [d.problem for d in find_drift(ctx) if d.subject == b]
        assert any("pids/pids.max: kernel has 999, store says 24" in p for p in problems), problems
        r = lab.host.slotctl("doctor")
        assert r.returncode == 1 and "pids.max" in r.stdout
        operations.change_plan(ctx, b, "roomy")
        assert _read(lab.cg("pids", b) / "pids.max") == "48"
        assert not [d for d in find_drift(ctx) if d.subject == b]
    finally:
        ctx.close()


def test_a_limit_the_host_cannot_enforce_is_refused_in_one_line_and_nothing_is_made(lab: Lab) -> None:
    # tmp_size is enforced here now (a tmpfs of the slot's: tests/system/test_tmp_size.py).
    for plan, word in (("huge", "exceeds this host"),):
        name = lab.host.name()
        r = lab.host.slotctl("slot", "create", name, "--email", "c@example.org", "--country", "DE", "--plan", plan)
        assert r.returncode == 1, r
        assert word in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert accounts.lookup_user(name) is None
        assert not (CGROUP / "pids" / lab.parent / name).exists()
        ctx = lab.host.ctx()
        assert ctx.store.get_slot(name) is None
        ctx.close()
    ctx = lab.host.ctx()
    try:
        with pytest.raises(Exception, match="exceeds this host"):
            operations.change_plan(ctx, lab.b.record.username, "huge")
        assert _read(lab.cg("pids", lab.b.record.username) / "pids.max") != "max"
    finally:
        ctx.close()


def test_a_vanished_cgroup_is_reported_and_remove_lifts_everything(lab: Lab) -> None:
    ctx = lab.host.ctx()
    try:
        name = lab.host.name()
        c = operations.create_slot(ctx, name, "d@example.org", "DE", plan="capped")
        assert isinstance(c, Created)
        (lab.cg("pids", name)).rmdir()
        problems = [d.problem for d in find_drift(ctx) if d.subject == name]
        assert any("cgroup is gone" in p for p in problems), problems
        operations.remove_slot(ctx, name)
        for ctrl in ("memory", "cpu", "cpuacct", "pids", "blkio"):
            assert not lab.cg(ctrl, name).exists()
        assert LimitRecords(ctx.store).get(name) is None
    finally:
        ctx.close()


def test_after_a_reboot_host_init_restores_cgroups_limits_and_apps(lab: Lab) -> None:
    """A reboot of a host without systemd loses every cgroup and supervisord; host init (run at
    boot, see the README) brings back the slot's cgroup with its limits before its app starts."""
    from provisioner.host import host_init, parse_host_request
    from provisioner.supervisor.supervisord import Supervisord

    ctx = lab.host.ctx()
    a = lab.a.record
    prog = place(ctx, Program(app="tboot", user=a.username, argv=["/bin/sleep", "1000"], cwd=a.home))
    sup = supervisor_for(ctx)
    try:
        sup.ensure_program(prog)
        sup.wait_running(prog.name)
        assert isinstance(sup, Supervisord)
        sup.shutdown()  # "power off": supervisord and its programs are gone ...
        accounts.stop_processes(a.uid or 0)
        for ctrl in ("memory", "cpu", "cpuacct", "pids", "blkio"):  # ... and so is every cgroup
            d = lab.cg(ctrl, a.username)
            if d.is_dir():
                d.rmdir()
        assert any("cgroup is gone" in d.problem for d in find_drift(ctx) if d.subject == a.username)
        parent_shares = CGROUP / "cpu" / lab.parent / "cpu.shares"
        parent_shares.write_text("1024")  # the kernel's default, as a parent made before the weight was set
        base = lab.host.base
        req = parse_host_request(ctx, str(base / "slots"), "btrfs", str(base / "slots.img"), "1G", True, False)
        plan = host_init(ctx, req)
        names = [s.name for s in plan.steps]
        assert names.index("slot-limits") < names.index("supervisor"), names
        assert _read(lab.cg("pids", a.username) / "pids.max") == "24"
        assert _read(parent_shares) == str(1024 * (os.cpu_count() or 1))
        st = sup.wait_running(prog.name)
        assert st.pid is not None
        cg = Path(f"/proc/{st.pid}/cgroup").read_text()
        assert _cgroup_of(cg, "pids") == f"/{lab.parent}/{a.username}", cg
        assert not [d for d in find_drift(ctx) if d.subject == a.username]
    finally:
        sup.remove_program(prog.name)
        ctx.close()


def test_metrics_read_use_against_limit_from_the_same_cgroup(lab: Lab) -> None:
    a = lab.a.record.username
    sleeper = lab.ssh_popen(lab.a, "sleep 30 & sleep 30 & sleep 30")
    try:
        wait_for(lambda: int(_read(lab.cg("pids", a) / "pids.current")) >= 5, timeout=30)
        r = lab.host.slotctl("metrics", "show", a, "--format", "json", "--sample", "0")
        assert r.returncode == 0, r.stderr
        data = json.loads(r.stdout)
        m = data[0] if isinstance(data, list) else data
        assert m["limits"]["max_processes"] == 24 and m["limits"]["memory_max"] == 96 << 20
        assert m["tasks"] >= 5 and m["sources"]["tasks"].startswith("cgroup-v1")
        prom = lab.host.slotctl("metrics", "show", a, "--format", "prometheus", "--sample", "0").stdout
        assert f'slotwarden_limit{{slot="{a}",limit="max_processes"}} 24' in prom
        assert f'slotwarden_tasks{{slot="{a}"}}' in prom
        me = lab.host.base / "bin" / "slotwarden-me"
        r = lab.ssh(lab.a, f"{me} --sample 0")
        assert r.returncode == 0, r.stderr
        assert "of 24" in r.stdout and "of 96.0M" in r.stdout, r.stdout
    finally:
        sleeper.kill()
        sleeper.wait()
        accounts.stop_processes(lab.a.record.uid or 0)


HOLD = """python3 -c '
import time
b = bytearray(100 << 20)
for i in range(0, len(b), 4096):
    b[i] = 1
print("held", flush=True)
time.sleep(60)
'"""


def test_a_plan_the_slot_already_exceeds_is_refused_and_undone_whole(lab: Lab) -> None:
    """The quota step of change-plan succeeds, the kernel then refuses the memory limit (the slot
    holds more than it): the plan's undo puts the quota, the limits and the store back."""
    b = lab.b.record
    ctx = lab.host.ctx()
    holder = lab.ssh_popen(lab.b, HOLD)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        before_limits = LimitRecords(ctx.store).get(b.username)
        before_pids = _read(lab.cg("pids", b.username) / "pids.max")
        r = lab.host.slotctl("slot", "change-plan", b.username, "tiny")
        assert r.returncode == 1, r
        assert "limits" in r.stderr and "uses more" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert ctx.quota.usage(b.username, Path(b.home)).limit_bytes == 256 << 20
        assert _read(lab.cg("pids", b.username) / "pids.max") == before_pids
        assert int(_read(lab.cg("memory", b.username) / "memory.limit_in_bytes")) == 160 << 20
        assert LimitRecords(ctx.store).get(b.username).limits == before_limits.limits  # type: ignore[union-attr]
        assert lifecycle_records.LifecycleRecords(ctx.store).get(b.username).plan == "roomy"  # type: ignore[union-attr]
    finally:
        holder.kill()
        holder.wait()
        accounts.stop_processes(b.uid or 0)
        ctx.close()


OPEN_SESSION = """
import ctypes, sys
sys.path.insert(0, sys.argv[1])
from tests.system.pamclient import PamHandle, _libpam
_libpam.pam_open_session.argtypes = [ctypes.c_void_p, ctypes.c_int]
with PamHandle(sys.argv[2], bytes.fromhex(sys.argv[3])) as h:
    rc = _libpam.pam_open_session(h.handle, 0)
    mode = [ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("Seccomp:")][0]
    print(rc, f"seccomp={mode}", open("/proc/self/cgroup").read().replace("\\n", " "))
"""


def _open_session(service: str, user: bytes) -> tuple[int, str]:
    """pam_open_session for USER in a fresh process (the module moves its caller), from REPO."""
    r = subprocess.run([sys.executable, "-c", OPEN_SESSION, str(REPO), service, user.hex()], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rc, _, cgroups = r.stdout.partition(" ")
    return int(rc), cgroups


def test_the_session_module_places_only_real_slots_and_treats_pam_user_as_data(lab: Lab) -> None:
    service = f"slotwarden-test-sess-{lab.host.prefix}"
    pam_file = Path("/etc/pam.d") / service
    pam_file.write_text(f"session required {SESSION_MODULE} parent={lab.parent}\nsession optional pam_permit.so\n")
    try:
        a = lab.a.record.username
        rc, cg = _open_session(service, a.encode())
        assert rc == 0 and f"pids:/{lab.parent}/{a}" in cg, cg
        # Names no slot can have: left alone (never a path), whatever bytes they hold.
        for user in (b"root", f"../{lab.parent}/{a}".encode(), f"{a}\n".encode(), f"{a}/".encode(),
                     a.upper().encode(), b"a" * 40, b"\x1b[31mred", f"{a}/../{a}".encode()):
            rc, cg = _open_session(service, user)
            assert rc == 0 and lab.parent not in cg, (user, cg)
        # A slot cgroup that is not root's (someone chowned it) is refused, never joined.
        d = lab.cg("pids", a)
        os.chown(d, lab.a.record.uid or 0, -1)
        try:
            rc, cg = _open_session(service, a.encode())
            assert rc != 0 and f"pids:/{lab.parent}/{a}" not in cg, cg
            # ...and the refusal never leaves the caller unfiltered: sudo treats PAM_SESSION_ERR as
            # non-fatal and runs the tenant's command anyway, so the filter comes before any refusal.
            assert "seccomp=2" in cg, cg
        finally:
            os.chown(d, 0, -1)
    finally:
        pam_file.unlink(missing_ok=True)
