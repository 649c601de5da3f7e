"""No subvolume of a tenant's own (issue 12): every door into a slot refuses btrfs subvolume creation.

The tenant attacks through each door it has, on a btrfs loop host: an SSH login (a lab sshd in a
network namespace, its own PAM service with ``pam_slotwarden_session.so``), ``su`` and a cron job
(the real ``su`` and a private ``cron`` in a mount namespace of their own, where
``/etc/pam.d/su``/``cron`` are copies with the module added — this machine's PAM files are never
edited), and an app under the host's supervisord. Each time it runs ``btrfs subvolume create``,
``btrfs subvolume snapshot`` and the raw ``BTRFS_IOC_SUBVOL_CREATE_V2`` with an empty qgroup-inherit
list (test_quota_escape's ``SUBVOL_WITH_INHERIT``); each must fail with EPERM, and no subvolume may
appear in its home. The session keeps setgid programs working (``crontab`` is setgid crontab), and
users outside the slots (``nobody``) are left unfiltered.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from provisioner import operations
from provisioner.slots import Created
from provisioner.supervisor import Program, supervisor_for
from tests.system.fixtures.hosts import REPO, SlotHost, make_slot_host, teardown_slot_host
from tests.system.fixtures.netns import LabHost, LabNet, NetOnlyHost
from tests.system.fixtures.processes import wait_for
from tests.system.fixtures.sshd import PASSWORD_LOGIN_OPTS, LabSshd
from tests.system.test_quota_escape import SUBVOL_WITH_INHERIT

pytestmark = pytest.mark.root

SESSION_MODULE = REPO / "pam_hooks" / "c" / "pam_slotwarden_session.so"

# Run as the tenant (sh): the three ways it has to make a subvolume, then what its process is.
ATTACK = (
    "cd \"$HOME\"; "
    "btrfs subvolume create \"$HOME/.swc-sub\" 2>&1; echo create=$?; "
    "btrfs subvolume snapshot \"$HOME\" \"$HOME/.swc-snap\" 2>&1; echo snapshot=$?; "
    f"/usr/bin/python3 -I -c {shlex.quote(SUBVOL_WITH_INHERIT)} \"$HOME\" .swc-raw 2>&1; echo raw=$?; "
    "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status"
)

ATTACK_FILE = ".swc-attack"

@dataclass
class Lab:
    host: SlotHost
    client: LabHost
    sshd: LabSshd
    slot: Created
    other: Created  # a second slot, B
    pam_dir: Path  # copies of su and cron with the session module

    @property
    def name(self) -> str:
        return self.slot.record.username

    @property
    def home(self) -> Path:
        return self.host.slots_root / self.name

    @property
    def attack(self) -> str:
        """The command that runs ATTACK as whoever runs it (the script is the tenant's own file)."""
        return f"/bin/sh {shlex.quote(str(self.home / ATTACK_FILE))}"

    def ssh(self, command: str, who: Created | None = None) -> subprocess.CompletedProcess[str]:
        who = who or self.slot
        r, w = os.pipe()
        os.write(w, who.password.encode() + b"\n")
        os.close(w)
        try:
            argv = self.client.cmd(["sshpass", "-d", str(r), "ssh", *PASSWORD_LOGIN_OPTS, "-p", str(self.sshd.port),
                                    f"{who.record.username}@{self.sshd.addr}", command])
            return subprocess.run(argv, pass_fds=(r,), capture_output=True, text=True, timeout=120)
        finally:
            os.close(r)

    def in_pam_namespace(self, script: str, binds: dict[str, Path], timeout: float = 120
                         ) -> subprocess.CompletedProcess[str]:
        """Run SCRIPT (root's sh) in a private mount namespace with BINDS mounted over their targets."""
        mounts = "".join(f"mount --bind {shlex.quote(str(src))} {shlex.quote(dst)} && " for dst, src in binds.items())
        return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", mounts + script],
                              capture_output=True, text=True, timeout=timeout, cwd="/")

    def su(self, user: str, command: str) -> subprocess.CompletedProcess[str]:
        """The real su (root to USER, a PAM session of service su) with the lab's su PAM file."""
        return self.in_pam_namespace(f"exec su -s /bin/sh {shlex.quote(user)} -c {shlex.quote(command)}",
                                     {"/etc/pam.d/su": self.pam_dir / "su"})


def _with_module(service: str, dest: Path, prefix: str) -> None:
    text = Path(f"/etc/pam.d/{service}").read_text()
    dest.write_text(text + f"\nsession required {SESSION_MODULE} parent=slotwarden-{prefix}\n")
    os.chmod(dest, 0o644)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    assert SESSION_MODULE.exists(), "run 'make pam' first (builds pam_slotwarden_session.so)"
    prefix = f"tc{secrets.token_hex(2)}"
    # Not under /tmp (where world_traversable_tmpdir puts other tests' hosts): a private /tmp
    # mounted over the slots root would hide the homes, so the module gives none there.
    base = Path(tempfile.mkdtemp(prefix="slotwarden-confine-", dir="/var/lib"))
    base.chmod(0o755)
    host = make_slot_host(base, prefix)
    pam_dir = Path(tempfile.mkdtemp(prefix="swc-pam-"))
    try:
        for service in ("su", "cron"):
            _with_module(service, pam_dir / service, prefix)
        ctx = host.ctx()
        slot = operations.create_slot(ctx, host.name(), "c@example.org", "DE", quota="64M")
        other = operations.create_slot(ctx, host.name(), "d@example.org", "DE", quota="64M")
        ctx.close()
        assert isinstance(slot, Created) and isinstance(other, Created)
        script = host.slots_root / slot.record.username / ATTACK_FILE
        script.write_text(ATTACK + "\n")
        pw = pwd.getpwnam(slot.record.username)
        os.chown(script, pw.pw_uid, pw.pw_gid)
        port = 2300 + secrets.randbelow(90)
        with LabNet(f"swc{secrets.token_hex(2)}-") as net:
            plain = net.host("srv", "198.51.100.1")
            client = net.host("c", "198.51.100.20")
            with LabSshd(NetOnlyHost(plain.netns, plain.addr), port=port,
                         pam_service=f"slotwarden-test-conf-{prefix}") as sshd:
                with sshd.pam_file.open("a") as f:
                    f.write(f"session required {SESSION_MODULE} parent=slotwarden-{prefix}\n")
                yield Lab(host, client, sshd, slot, other, pam_dir)
    finally:
        teardown_slot_host(host)
        shutil.rmtree(pam_dir, ignore_errors=True)
        for ctrl in Path("/sys/fs/cgroup").iterdir():
            if (ctrl / f"slotwarden-{prefix}").is_dir():
                (ctrl / f"slotwarden-{prefix}").rmdir()


def _subvolumes_below(home: Path) -> list[str]:
    out = subprocess.run(["btrfs", "subvolume", "list", "-o", str(home)], capture_output=True, text=True,
                         check=True).stdout
    return [line.split(" path ", 1)[1] for line in out.splitlines() if " path " in line]


def _assert_refused(lab: Lab, out: str) -> None:
    try:
        for what in ("create", "snapshot", "raw"):
            assert f"{what}=0" not in out, f"{what} made a subvolume:\n{out}"
        assert out.count("Operation not permitted") >= 3, out
        assert "Seccomp:\t2" in out, out
        # Without no_new_privs: setuid and setgid programs keep working in the session.
        assert "NoNewPrivs:\t0" in out, out
        assert _subvolumes_below(lab.home) == []
    finally:
        for leftover in _subvolumes_below(lab.home):  # before the fix: the tenant's subvolumes
            subprocess.run(["btrfs", "subvolume", "delete", str(lab.host.slots_root / leftover)],
                           capture_output=True, check=False)


def test_an_ssh_login_cannot_make_a_subvolume(lab: Lab) -> None:
    r = lab.ssh(lab.attack)
    assert "create=" in r.stdout, r.stdout + r.stderr + "\n".join(lab.sshd.log[-20:])
    _assert_refused(lab, r.stdout)


def test_su_to_the_slot_cannot_make_a_subvolume(lab: Lab) -> None:
    r = lab.su(lab.name, lab.attack)
    assert "create=" in r.stdout, r.stdout + r.stderr
    _assert_refused(lab, r.stdout)


def test_users_outside_the_slots_are_left_unfiltered(lab: Lab) -> None:
    r = lab.su("nobody", "grep -E '^Seccomp:' /proc/self/status")
    assert r.returncode == 0 and "Seccomp:\t0" in r.stdout, r.stdout + r.stderr


def test_a_cron_job_cannot_make_a_subvolume(lab: Lab) -> None:
    # A private cron daemon: its own spool, /run and (empty) system crontabs, the lab's PAM
    # file; the machine's cron and its jobs are untouched. The tenant installs its crontab with
    # the setgid crontab(1) from inside its filtered su session.
    ns = Path(tempfile.mkdtemp(prefix="swc-cron-"))
    try:
        spool = ns / "crontabs"
        spool.mkdir()
        shutil.chown(spool, "root", "crontab")
        os.chmod(spool, 0o1730)
        (ns / "cron.d").mkdir()
        (ns / "crontab").write_text("")
        (ns / "run").mkdir(mode=0o755)
        out = lab.home / ".swc-cron.out"
        job = f"* * * * * {lab.attack} > {shlex.quote(str(out))} 2>&1\n"
        # /run of its own: cron's pid file (/run/crond.pid) never lands on the machine's /run.
        binds = {"/run": ns / "run", "/var/spool/cron/crontabs": spool, "/etc/cron.d": ns / "cron.d",
                 "/etc/crontab": ns / "crontab", "/etc/pam.d/su": lab.pam_dir / "su",
                 "/etc/pam.d/cron": lab.pam_dir / "cron"}
        as_tenant = f"printf %s {shlex.quote(job)} | crontab -"
        install = (f"su -s /bin/sh {shlex.quote(lab.name)} -c {shlex.quote(as_tenant)} || exit 3; "
                   "timeout -k 5 150 cron -f -L 0 & "
                   f"i=0; while ! grep -qs NoNewPrivs {shlex.quote(str(out))} && [ $i -lt 140 ]; do sleep 1; "
                   "i=$((i+1)); done; kill $!; wait")
        r = lab.in_pam_namespace(install, binds, timeout=200)
        assert r.returncode != 3, "crontab(1), setgid, failed in the tenant's filtered session: " + r.stderr
        text = out.read_text() if out.exists() else ""
        assert "create=" in text, f"the cron job did not run:\n{r.stdout}{r.stderr}"
        _assert_refused(lab, text)
    finally:
        shutil.rmtree(ns, ignore_errors=True)
        (lab.home / ".swc-cron.out").unlink(missing_ok=True)


def test_an_app_cannot_make_a_subvolume(lab: Lab) -> None:
    ctx = lab.host.ctx()
    try:
        sup = supervisor_for(ctx)
        out = lab.home / ".swc-app.out"
        prog = Program(app="swconfine", user=lab.name, cwd=str(lab.home), startsecs=0, autorestart=False,
                       argv=["/bin/sh", "-c", f"{lab.attack} > .swc-app.tmp 2>&1; mv .swc-app.tmp .swc-app.out; "
                                              "exec sleep 600"])
        sup.ensure_program(prog)
        try:
            wait_for(out.exists, timeout=60, what="the app to write its output")
            _assert_refused(lab, out.read_text())
        finally:
            sup.remove_program(prog.name)
            out.unlink(missing_ok=True)
    finally:
        ctx.close()
    # The wrapper refuses to run a slot program as root, whatever a caller asks.
    r = subprocess.run([str(REPO / "pam_hooks" / "c" / "slotwarden-confine"), "--user", "root", "--", "/bin/true"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "uid or gid 0" in r.stderr


def test_bad_calls_of_the_wrapper_are_one_line_errors() -> None:
    wrapper = str(REPO / "pam_hooks" / "c" / "slotwarden-confine")
    for argv, code in (([], 2), (["--user"], 2), (["--", ""], 2), (["--user", "x", "true"], 2),
                       (["--user", f"nosuch{secrets.token_hex(3)}", "--", "/bin/true"], 1),
                       (["--", "/nonexistent/program"], 127)):
        r = subprocess.run([wrapper, *argv], capture_output=True, text=True, timeout=30)
        assert r.returncode == code, (argv, r.returncode, r.stderr)
        assert r.stderr.count("\n") == 1, r.stderr


# --- the private /tmp and /var/tmp ---------------------------------------------------------------


def test_tmp_is_the_slots_own_invisible_to_another_slot_and_to_the_host(lab: Lab) -> None:
    tag = secrets.token_hex(4)
    a = lab.ssh(f"echo secret > /tmp/swc-{tag} && echo secret > /var/tmp/swc-{tag} && ls /tmp/swc-{tag}")
    assert a.returncode == 0, a.stdout + a.stderr
    try:
        # B, through its own door (su) and A's (ssh), finds nothing of A's in its /tmp.
        b = lab.su(lab.other.record.username, f"ls /tmp/swc-{tag} /var/tmp/swc-{tag} 2>&1; true")
        assert b.stdout.count("No such file") == 2, b.stdout + b.stderr
        b = lab.ssh(f"ls /tmp/swc-{tag} 2>&1; true", who=lab.other)
        assert "No such file" in b.stdout, b.stdout + b.stderr
        assert not Path(f"/tmp/swc-{tag}").exists() and not Path(f"/var/tmp/swc-{tag}").exists()
        # A's next session, through another door, sees its own.
        again = lab.su(lab.name, f"cat /tmp/swc-{tag} /var/tmp/swc-{tag}")
        assert again.stdout.split() == ["secret", "secret"], again.stdout + again.stderr
        inst = lab.home / ".slot-tmp"
        st = inst.stat()
        assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o711)
        assert (inst / "tmp" / f"swc-{tag}").exists() and (inst / "var-tmp" / f"swc-{tag}").exists()
    finally:
        lab.ssh(f"rm -f /tmp/swc-{tag} /var/tmp/swc-{tag}")


def test_tmp_counts_against_the_slots_quota(lab: Lab) -> None:
    r = lab.ssh("dd if=/dev/zero of=/tmp/swc-fill bs=1M count=96 conv=fsync 2>&1; echo rc=$?; "
                "stat -c size=%s /tmp/swc-fill; rm -f /tmp/swc-fill")
    assert "Disk quota exceeded" in r.stdout, r.stdout + r.stderr
    size = int(r.stdout.split("size=")[1].split()[0])
    assert size <= 65 << 20, f"{size} bytes in /tmp behind a 64 MiB quota"


def test_an_app_shares_its_slots_tmp(lab: Lab) -> None:
    tag = secrets.token_hex(4)
    ctx = lab.host.ctx()
    try:
        sup = supervisor_for(ctx)
        prog = Program(app="swctmp", user=lab.name, cwd=str(lab.home), startsecs=0, autorestart=False,
                       argv=["/bin/sh", "-c", f"echo from-app > /tmp/swc-app-{tag}; exec sleep 600"])
        sup.ensure_program(prog)
        try:
            r = lab.ssh(f"i=0; while [ ! -s /tmp/swc-app-{tag} ] && [ $i -lt 60 ]; do sleep 1; i=$((i+1)); done; "
                        f"cat /tmp/swc-app-{tag}")
            assert r.stdout.strip() == "from-app", r.stdout + r.stderr
            assert (lab.home / ".slot-tmp" / "tmp" / f"swc-app-{tag}").exists()
            assert not Path(f"/tmp/swc-app-{tag}").exists()
        finally:
            sup.remove_program(prog.name)
            Path(f"/tmp/swc-app-{tag}").unlink(missing_ok=True)  # before the fix: the host's /tmp
            lab.ssh(f"rm -f /tmp/swc-app-{tag}")
    finally:
        ctx.close()


@pytest.mark.parametrize("plant", ["ln -s {other} .slot-tmp", "ln -s /etc .slot-tmp", "mkfifo .slot-tmp",
                                   "mkdir -p .slot-tmp/tmp .slot-tmp/var-tmp && chmod 777 .slot-tmp"])
def test_a_planted_slot_tmp_is_set_aside_never_followed(lab: Lab, plant: str) -> None:
    tag = secrets.token_hex(4)
    other_home = lab.host.slots_root / lab.other.record.username
    # The tenant moves its instances away and plants something of its own under the name.
    script = (f"cd $HOME && mv .slot-tmp .swc-old-{tag} && " + plant.format(other=shlex.quote(str(other_home)))
              + " && echo planted")
    r = lab.su(lab.name, script)
    assert "planted" in r.stdout, r.stdout + r.stderr
    try:
        r = lab.ssh(f"echo mine > /tmp/swc-{tag}; grep -E ' /tmp ' /proc/self/mountinfo")
        assert r.returncode == 0, r.stdout + r.stderr
        inst = lab.home / ".slot-tmp"
        st = inst.lstat()
        assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o711) and inst.is_dir() and not inst.is_symlink()
        assert (inst / "tmp" / f"swc-{tag}").read_text() == "mine\n"
        # Nothing made where a planted link pointed (this machine's /etc changes under other tests).
        assert not any((Path("/etc") / n).exists() for n in ("tmp", "var-tmp", f"swc-{tag}"))
        assert not (other_home / "tmp").exists() and not (other_home / f"swc-{tag}").exists()
        assert any(p.name.startswith(".slot-tmp.moved-") for p in lab.home.iterdir())
    finally:
        # Root clears the scene: what was set aside, and the old instances (root's, 0711).
        for p in lab.home.iterdir():
            if p.name.startswith((".slot-tmp.moved-", f".swc-old-{tag}")):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        (lab.home / ".slot-tmp" / "tmp" / f"swc-{tag}").unlink(missing_ok=True)
