"""A plan's ``tmp_size``: the slot's /tmp and /var/tmp are a tmpfs of that size, from the tenant's side.

A slot host on btrfs (not under /tmp, so its homes get a private /tmp at all), the real ``su``
with a lab PAM stack holding ``pam_slotwarden_session.so`` (``tests/system/doors.py``), the
slot's app under supervisord through ``slotwarden-confine``. Slot A is sold 8M of /tmp, slot B
none (today's ``~/.slot-tmp`` under its quota).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from provisioner import operations
from provisioner.doctor import find_drift
from provisioner.limits import place
from provisioner.limits.steps import host_steps, slot_tmpfs
from provisioner.metrics.kernel import tmpfs_use
from provisioner.slots import Created
from provisioner.supervisor import Program, supervisor_for
from tests.system.fixtures.doors import lab_cron, run_su, su_stack
from tests.system.fixtures.hosts import REPO, SlotHost, make_slot_host, teardown_slot_host
from tests.system.fixtures.netns import LabNet, NetOnlyHost
from tests.system.fixtures.processes import wait_for
from tests.system.fixtures.sshd import PASSWORD_LOGIN_OPTS, LabSshd

pytestmark = [pytest.mark.root, pytest.mark.sshd]

SESSION_MODULE = REPO / "pam_hooks" / "c" / "pam_slotwarden_session.so"
WRAPPER = REPO / "pam_hooks" / "c" / "slotwarden-confine"
MIB = 1 << 20

PLANS = """
[plans.tmp8]
quota = "256M"
tmp_size = "8M"
[plans.tmp16]
quota = "256M"
tmp_size = "16M"
[plans.plain]
quota = "256M"
max_processes = 64
[plans.tmphuge]
quota = "256M"
tmp_size = "64T"
"""


@dataclass
class Lab:
    host: SlotHost
    a: Created
    b: Created
    stack: str
    session_line: str

    @property
    def tmp_root(self) -> Path:
        return self.host.base / "state" / "slot-tmp"

    def su(self, who: Created, command: str) -> subprocess.CompletedProcess[str]:
        """A real ``su`` session of WHO (the lab's stack: the session module) running COMMAND."""
        return run_su(who.record.username, command, self.stack, timeout=120)

    def uid(self, who: Created) -> int:
        assert who.record.uid is not None
        return who.record.uid

    def mounts(self) -> str:
        return Path("/proc/self/mountinfo").read_text()


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    assert SESSION_MODULE.exists(), "run 'make pam' first (builds pam_slotwarden_session.so)"
    prefix = f"tt{secrets.token_hex(2)}"
    # Not under /tmp: a private /tmp mounted over the slots root would hide the homes.
    base = Path(tempfile.mkdtemp(prefix="slotwarden-tmpsize-", dir="/var/lib"))
    base.chmod(0o755)
    host = make_slot_host(base, prefix, extra_config=PLANS)
    try:
        ctx = host.ctx()
        a = operations.create_slot(ctx, host.name(), "a@example.org", "DE", plan="tmp8")
        b = operations.create_slot(ctx, host.name(), "b@example.org", "DE", plan="plain")
        ctx.close()
        assert isinstance(a, Created) and isinstance(b, Created)
        line = (f"session required {SESSION_MODULE} parent=slotwarden-{prefix} "
                f"tmpfs_root={base / 'state' / 'slot-tmp'}\n")
        yield Lab(host, a, b, su_stack(line), line)
    finally:
        teardown_slot_host(host)
        for ctrl in Path("/sys/fs/cgroup").iterdir():
            if (ctrl / f"slotwarden-{prefix}").is_dir():
                (ctrl / f"slotwarden-{prefix}").rmdir()
        leftovers = [ln for ln in Path("/proc/self/mountinfo").read_text().splitlines() if str(base) in ln]
        for ln in reversed(leftovers):  # a failed test's tmpfs: never left behind
            subprocess.run(["umount", "-l", ln.split()[4]], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
        assert not leftovers, leftovers


def _quota_used(lab: Lab, who: Created) -> int:
    shown = json.loads(lab.host.slotctl("slot", "show", who.record.username, "--json").stdout)
    return int(shown["used_bytes"])


def _size(path: str) -> int:
    use = tmpfs_use(path)
    assert use is not None, f"no tmpfs on {path}"
    return use[0]


def _field(out: str, key: str) -> int:
    return int(out.split(f"{key}=", 1)[1].split()[0])


def test_the_tenant_gets_enospc_at_its_tmp_size_and_its_quota_is_untouched(lab: Lab) -> None:
    path = lab.tmp_root / str(lab.uid(lab.a))
    st = path.stat()
    assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o711)
    assert tmpfs_use(str(path)) is not None
    before = _quota_used(lab, lab.a)
    r = lab.su(lab.a, "dd if=/dev/zero of=/tmp/fill bs=1M count=20 2>&1; echo rc=$?; "
                      "stat -c size=%s /tmp/fill; stat -f -c fstype=%T /tmp")
    try:
        assert "No space left on device" in r.stdout and "rc=1" in r.stdout, r.stdout + r.stderr
        size = _field(r.stdout, "size")
        assert 7 * MIB <= size <= 8 * MIB, size
        assert "fstype=tmpfs" in r.stdout, r.stdout
        # The root's view of the same tmpfs: the tenant's file, nowhere in the home.
        assert (path / "tmp" / "fill").stat().st_size == size
        assert not (lab.host.slots_root / lab.a.record.username / ".slot-tmp" / "tmp" / "fill").exists()
        subprocess.run(["sync"], check=True)
        after = _quota_used(lab, lab.a)
        assert after - before < MIB, (before, after)
    finally:
        lab.su(lab.a, "rm -f /tmp/fill")


FILL = ("stat -f -c fstype=%T /tmp; dd if=/dev/zero of=/tmp/door bs=1M count=20 2>&1; echo rc=$?; "
        "stat -c size=%s /tmp/door; rm -f /tmp/door")


def _assert_filled_at_8m(out: str) -> None:
    assert "fstype=tmpfs" in out and "No space left on device" in out and "rc=1" in out, out
    assert 7 * MIB <= _field(out, "size") <= 8 * MIB, out


def test_an_ssh_login_gets_the_same_tmpfs(lab: Lab) -> None:
    port = 2300 + secrets.randbelow(90)
    with LabNet(f"swt{secrets.token_hex(2)}-") as net:
        plain = net.host("srv", "198.51.100.1")
        client = net.host("c", "198.51.100.20")
        with LabSshd(NetOnlyHost(plain.netns, plain.addr), port=port,
                     pam_service=f"slotwarden-test-tmp-{lab.host.prefix}") as sshd:
            with sshd.pam_file.open("a") as f:
                f.write(lab.session_line)
            r, w = os.pipe()
            os.write(w, lab.a.password.encode() + b"\n")
            os.close(w)
            try:
                argv = client.cmd(["sshpass", "-d", str(r), "ssh", *PASSWORD_LOGIN_OPTS, "-p", str(port),
                                   f"{lab.a.record.username}@{sshd.addr}", FILL])
                out = subprocess.run(argv, pass_fds=(r,), capture_output=True, text=True, timeout=120)
            finally:
                os.close(r)
    _assert_filled_at_8m(out.stdout + out.stderr)


def test_a_cron_job_gets_the_same_tmpfs(lab: Lab) -> None:
    out = lab.host.slots_root / lab.a.record.username / ".swt-cron.out"
    command = FILL.replace("%", "\\%")  # crontab(5): an unescaped % ends the command
    job = f"* * * * * ({command}) > {out}.tmp 2>&1; mv {out}.tmp {out}\n"
    try:
        with lab_cron(lab.session_line, {lab.a.record.username: job}):
            wait_for(out.exists, timeout=130, step=1, what="the cron job to write its output")
        _assert_filled_at_8m(out.read_text())
    finally:
        out.unlink(missing_ok=True)


def test_tmp_and_var_tmp_share_the_one_size(lab: Lab) -> None:
    r = lab.su(lab.a, "dd if=/dev/zero of=/tmp/half bs=1M count=5 2>/dev/null; "
                      "dd if=/dev/zero of=/var/tmp/half bs=1M count=5 2>&1; echo rc=$?")
    try:
        assert "No space left on device" in r.stdout and "rc=1" in r.stdout, r.stdout + r.stderr
    finally:
        lab.su(lab.a, "rm -f /tmp/half /var/tmp/half")


def test_empty_files_cannot_fill_the_host_past_the_size(lab: Lab) -> None:
    # Empty files take no data pages: without an inode cap a tenant makes millions of them in
    # an 8M tmpfs, each one kernel memory of the host's.
    r = lab.su(lab.a, "cd /tmp && mkdir many && cd many && i=0; while [ $i -lt 6000 ]; do "
                      "true > f$i 2>/dev/null || break; i=$((i+1)); done; echo made=$i")
    try:
        assert "made=" in r.stdout, r.stdout + r.stderr
        made = _field(r.stdout, "made")
        assert 2000 <= made <= 3072, r.stdout + r.stderr
    finally:
        lab.su(lab.a, "rm -rf /tmp/many")


def test_tmp_pages_are_charged_to_the_slots_memory_cgroup(lab: Lab) -> None:
    memory = Path("/sys/fs/cgroup/memory") / f"slotwarden-{lab.host.prefix}" / lab.a.record.username
    if not (memory / "memory.stat").exists():
        pytest.fail(f"no memory cgroup for {lab.a.record.username} at {memory}")

    def shmem() -> int:
        stat = dict(line.split() for line in (memory / "memory.stat").read_text().splitlines())
        return int(stat["shmem"])

    before = shmem()
    r = lab.su(lab.a, "dd if=/dev/zero of=/tmp/charged bs=1M count=6 2>&1; echo rc=$?")
    try:
        assert "rc=0" in r.stdout, r.stdout + r.stderr
        assert shmem() - before >= 5 * MIB, (before, shmem())
    finally:
        lab.su(lab.a, "rm -f /tmp/charged")


def test_a_slot_without_tmp_size_keeps_its_tmp_in_the_home(lab: Lab) -> None:
    assert not (lab.tmp_root / str(lab.uid(lab.b))).exists()
    tag = secrets.token_hex(4)
    r = lab.su(lab.b, f"echo mine > /tmp/swt-{tag}; stat -f -c fstype=%T /tmp")
    try:
        assert "fstype=btrfs" in r.stdout, r.stdout + r.stderr
        assert (lab.host.slots_root / lab.b.record.username / ".slot-tmp" / "tmp" / f"swt-{tag}").exists()
    finally:
        lab.su(lab.b, f"rm -f /tmp/swt-{tag}")


def test_a_tenant_cannot_reach_another_slots_tmpfs(lab: Lab) -> None:
    tag = secrets.token_hex(4)
    assert lab.su(lab.a, f"echo secret > /tmp/swt-{tag}").returncode == 0
    try:
        theirs = lab.tmp_root / str(lab.uid(lab.a))
        r = lab.su(lab.b, f"cat {theirs}/tmp/swt-{tag} 2>&1; ls {lab.tmp_root} 2>&1; cat /tmp/swt-{tag} 2>&1; true")
        assert "secret" not in r.stdout, r.stdout
        assert r.stdout.count("Permission denied") == 2 and "No such file" in r.stdout, r.stdout + r.stderr
        st = lab.tmp_root.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (0, 0o700)
    finally:
        lab.su(lab.a, f"rm -f /tmp/swt-{tag}")


def test_the_slots_app_writes_to_the_same_tmpfs(lab: Lab) -> None:
    tag = secrets.token_hex(4)
    name = lab.a.record.username
    ctx = lab.host.ctx()
    try:
        sup = supervisor_for(ctx)
        prog = place(ctx, Program(app="swttmp", user=name, cwd=str(lab.host.slots_root / name), startsecs=0,
                                  autorestart=False,
                                  argv=["/bin/sh", "-c", f"stat -f -c %T /tmp > /tmp/swt-app-{tag}; exec sleep 600"]))
        sup.ensure_program(prog)
        try:
            where = lab.tmp_root / str(lab.uid(lab.a)) / "tmp" / f"swt-app-{tag}"
            wait_for(lambda: where.exists() and where.read_text().strip() == "tmpfs", timeout=60,
                     what=f"the app to find the slot's tmpfs as its /tmp ({where})")
            r = lab.su(lab.a, f"cat /tmp/swt-app-{tag}")
            assert r.stdout.strip() == "tmpfs", r.stdout + r.stderr
        finally:
            sup.remove_program(prog.name)
            lab.su(lab.a, f"rm -f /tmp/swt-app-{tag}")
    finally:
        ctx.close()


def test_show_metrics_me_and_the_data_report_give_use_against_size(lab: Lab) -> None:
    a = lab.a.record.username
    assert lab.su(lab.a, "dd if=/dev/zero of=/tmp/shown bs=1M count=3 2>/dev/null").returncode == 0
    try:
        shown = json.loads(lab.host.slotctl("slot", "show", a, "--json").stdout)
        assert shown["limits"]["tmp_size"] == 8 * MIB
        assert shown["tmp"]["size_bytes"] == 8 * MIB and shown["tmp"]["used_bytes"] >= 3 * MIB, shown["tmp"]
        r = lab.host.slotctl("metrics", "show", a, "--format", "json", "--sample", "0")
        assert r.returncode == 0, r.stderr
        data = json.loads(r.stdout)
        m = data[0] if isinstance(data, list) else data
        assert m["tmp_size_bytes"] == 8 * MIB and m["tmp_used_bytes"] >= 3 * MIB, m
        prom = lab.host.slotctl("metrics", "show", a, "--format", "prometheus", "--sample", "0").stdout
        assert f'slotwarden_limit{{slot="{a}",limit="tmp_size"}} {8 * MIB}' in prom
        assert f'slotwarden_tmp_used_bytes{{slot="{a}"}}' in prom
        me = lab.host.base / "bin" / "slotwarden-me"
        r = lab.su(lab.a, f"{me} --sample 0")
        assert r.returncode == 0, r.stderr
        assert "/tmp     3.0M of 8.0M" in r.stdout, r.stdout
        report = json.loads(lab.host.slotctl("data", "report", a, "--json").stdout)
        items = {i["item"]: i for i in report["items"]}
        assert items["resource limits"]["value"]["tmp_size"] == 8 * MIB
        assert items["files in /tmp and /var/tmp"]["value"]["size_bytes"] == 8 * MIB
    finally:
        lab.su(lab.a, "rm -f /tmp/shown")


def test_change_plan_grows_it_live_and_refuses_to_shrink_below_use(lab: Lab) -> None:
    ctx = lab.host.ctx()
    a = lab.a.record.username
    path = str(lab.tmp_root / str(lab.uid(lab.a)))
    # A session open before the change: it waits for root's go, then writes 12M.
    go = Path(path) / "tmp" / "go"
    with tempfile.TemporaryDirectory(prefix="swt-su-") as tmp:
        pam = Path(tmp) / "su"
        pam.write_text(lab.stack)
        pam.chmod(0o644)
        script = 'mount --bind "$1" /etc/pam.d/su && shift && exec "$@"'
        waiting = ("stat -f -c '%b %S' /tmp > /tmp/ready.t && mv /tmp/ready.t /tmp/ready; "
                   "until [ -e /tmp/go ]; do sleep 0.2; done; "
                   "dd if=/dev/zero of=/tmp/grown bs=1M count=12 2>&1; echo rc=$?")
        session = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                                    str(pam), "su", "-s", "/bin/sh", "-c", waiting, a], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
        ready = Path(path) / "tmp" / "ready"
        try:
            # Open, and seeing 8M, before the change.
            wait_for(ready.exists, timeout=60)
            blocks, bsize = (int(x) for x in ready.read_text().split())
            assert blocks * bsize == 8 * MIB, (blocks, bsize)
            operations.change_plan(ctx, a, "tmp16")
            assert _size(path) == 16 * MIB
            go.touch()
            out, _ = session.communicate(timeout=120)
            assert "rc=0" in out, out
        finally:
            if session.poll() is None:
                session.kill()
                session.wait()
            go.unlink(missing_ok=True)
            ready.unlink(missing_ok=True)
    try:
        r = lab.host.slotctl("slot", "change-plan", a, "tmp8")
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r
        assert "tmp_size" in r.stderr and "more than the new size 8388608" in r.stderr, r.stderr
        assert _size(path) == 16 * MIB
        assert (lab.tmp_root / str(lab.uid(lab.a)) / "tmp" / "grown").exists()  # nothing lost
        lab.su(lab.a, "rm -f /tmp/grown")
        operations.change_plan(ctx, a, "tmp8")
        assert _size(path) == 8 * MIB
        # A plan without a /tmp size: the tmpfs and its directory go, the next session has the home's.
        operations.change_plan(ctx, a, "plain")
        assert not Path(path).exists() and path not in lab.mounts()
        r = lab.su(lab.a, "stat -f -c fstype=%T /tmp")
        assert "fstype=btrfs" in r.stdout, r.stdout + r.stderr
        operations.change_plan(ctx, a, "tmp8")
        assert _size(path) == 8 * MIB
    finally:
        lab.su(lab.a, "rm -f /tmp/grown")
        ctx.close()


def test_a_missing_tmpfs_refuses_the_session_doctor_says_so_and_host_init_remounts_it(lab: Lab) -> None:
    # What a reboot does: the mount point is there (on disk), the tmpfs is not.
    path = lab.tmp_root / str(lab.uid(lab.a))
    subprocess.run(["umount", str(path)], check=True)
    ctx = lab.host.ctx()
    try:
        assert path.is_dir() and tmpfs_use(str(path)) is None
        r = lab.su(lab.a, "stat -f -c fstype=%T /tmp")
        assert r.returncode != 0 and "fstype" not in r.stdout, r.stdout + r.stderr
        # The app wrapper refuses to start the slot's program too, in one line.
        r = subprocess.run([str(WRAPPER), "--user", lab.a.record.username, "--tmpfs-root", str(lab.tmp_root), "--",
                            "/bin/true"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 1 and "no private /tmp" in r.stderr and len(r.stderr.splitlines()) == 1, r
        problems = [d.problem for d in find_drift(ctx) if d.subject == lab.a.record.username]
        assert any("/tmp tmpfs is not mounted" in p for p in problems), problems
        for step in host_steps(ctx, None):
            step.do()
        assert tmpfs_use(str(path)) is not None
        r = lab.su(lab.a, "stat -f -c fstype=%T /tmp")
        assert r.returncode == 0 and "fstype=tmpfs" in r.stdout, r.stdout + r.stderr
        assert not [d for d in find_drift(ctx) if d.subject == lab.a.record.username]
    finally:
        if tmpfs_use(str(path)) is None:
            slot_tmpfs(ctx).apply(8 * MIB, lab.uid(lab.a), lab.a.record.username)
        ctx.close()


def test_remove_leaves_no_mount_and_no_directory(lab: Lab) -> None:
    ctx = lab.host.ctx()
    try:
        name = lab.host.name()
        c = operations.create_slot(ctx, name, "c@example.org", "DE", plan="tmp8")
        assert isinstance(c, Created) and c.record.uid is not None
        path = lab.tmp_root / str(c.record.uid)
        assert tmpfs_use(str(path)) is not None
        r = run_su(name, "echo left > /tmp/left", lab.stack)
        assert r.returncode == 0, r.stderr
        operations.remove_slot(ctx, name)
        assert not path.exists()
        assert str(path) not in lab.mounts()
    finally:
        ctx.close()


@pytest.mark.parametrize(("value", "word"), [('"-1M"', "tmp_size"), ('"8Q"', "tmp_size"), ('"0"', "tmp_size"),
                                             ("true", "tmp_size")])
def test_a_bad_tmp_size_is_refused_in_one_line(lab: Lab, value: str, word: str) -> None:
    cfg = lab.host.base / f"bad-{secrets.token_hex(3)}.toml"
    text = lab.host.config_path.read_text() + f'\n[plans.bad]\nquota = "256M"\ntmp_size = {value}\n'
    cfg.write_text(text)
    try:
        r = subprocess.run([str(REPO / ".venv" / "bin" / "slotctl"), "slot", "list"],
                           env={**os.environ, "SLOTWARDEN_CONFIG": str(cfg)}, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2, r
        assert f"plans.bad.{word}" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    finally:
        cfg.unlink()


def test_the_wrapper_refuses_a_relative_tmpfs_root(lab: Lab) -> None:
    r = subprocess.run([str(WRAPPER), "--user", lab.a.record.username, "--tmpfs-root", "state/slot-tmp", "--",
                        "/bin/true"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and r.stderr.startswith("usage:"), r


def test_a_tmp_size_beyond_the_host_is_refused_and_nothing_is_made(lab: Lab) -> None:
    name = lab.host.name()
    before = sorted(p.name for p in lab.tmp_root.iterdir())
    r = lab.host.slotctl("slot", "create", name, "--email", "c@example.org", "--country", "DE", "--plan", "tmphuge")
    assert r.returncode == 1, r
    assert "tmp_size" in r.stderr and "exceeds this host" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in lab.tmp_root.iterdir()) == before
