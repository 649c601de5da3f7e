"""Slots for real, as root: users, homes, btrfs quotas, isolation, removal, undo and healing."""

from __future__ import annotations

import crypt
import grp
import json
import os
import pwd
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from provisioner import accounts
from provisioner import steps as plan_mod
from provisioner.errors import StepFailed
from provisioner.operations import create_slot
from provisioner.quota.btrfs import qgroup_ids
from tests.system.fixtures.hosts import REPO, SlotHost
from tests.system.fixtures.processes import as_user, stop_process, wait_for

pytestmark = pytest.mark.root

CREATE_STEPS = ["reserve", "uid", "user", "home", "skeleton", "quota", "password", "activate"]


def shadow_hash(user: str) -> str:
    for line in Path("/etc/shadow").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return fields[1]
    raise AssertionError(f"{user} not in /etc/shadow")


def exists_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def exists_group(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def assert_no_trace(host: SlotHost, name: str, qgroups_before: set[str]) -> None:
    assert not exists_user(name), "user left"
    assert not exists_group(name), "group left"
    assert not (host.slots_root / name).exists(), "home left"
    assert name not in subprocess.run(["btrfs", "subvolume", "list", str(host.slots_root)],
                                      capture_output=True, text=True).stdout.split()
    assert qgroup_ids(host.slots_root) <= qgroups_before, "qgroup left"
    ctx = host.ctx()
    assert ctx.store.get_slot(name) is None, "store row left"
    ctx.close()


def test_create_makes_a_real_slot(slot_host: SlotHost) -> None:
    name = slot_host.name()
    r = slot_host.slotctl("slot", "create", name, "--email", "c@example.com", "--country", "fr",
                          "--quota", "64M", "--payment-ref", "PAYID-XY12", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["username"] == name and out["quota_bytes"] == 64 << 20
    assert out["home"] == str(slot_host.slots_root / name)
    pw = pwd.getpwnam(name)
    assert pw.pw_shell == "/bin/bash" and pw.pw_dir == out["home"]
    assert grp.getgrgid(pw.pw_gid).gr_name == name, "private group"
    st = os.stat(out["home"])
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (pw.pw_uid, pw.pw_gid, 0o700)
    assert (Path(out["home"]) / ".bashrc").stat().st_uid == pw.pw_uid, "skeleton copied and owned"
    hashed = shadow_hash(name)
    assert hashed.startswith("$") and crypt.crypt(out["password"], hashed) == hashed
    ctx = slot_host.ctx()
    rec = ctx.store.get_slot(name)
    assert rec and rec.state == "active" and rec.country == "FR" and rec.payment_ref == "PAYID-XY12"
    assert out["password"] not in slot_host.config_path.parent.joinpath("state", "slotwarden.db").read_bytes().decode(
        "latin-1"), "the password is never stored"
    assert all(out["password"] not in json.dumps(e) for e in ctx.store.audit_entries(name))
    ctx.close()
    # the same document whether --json comes first or last
    first = json.loads(slot_host.slotctl("--json", "slot", "show", name).stdout)
    last = json.loads(slot_host.slotctl("slot", "show", name, "--json").stdout)
    assert first == last and first["enforced_limit_bytes"] == 64 << 20


def test_quota_is_enforced_by_the_kernel(slot_host: SlotHost) -> None:
    name = slot_host.name()
    assert slot_host.slotctl("slot", "create", name, "--email", "q@example.com", "--country", "DE",
                             "--quota", "16M").returncode == 0
    r = as_user(name, "dd if=/dev/zero of=$HOME/big bs=1M count=64 conv=fsync")
    assert r.returncode != 0 and "Disk quota exceeded" in r.stderr
    size = (slot_host.slots_root / name / "big").stat().st_size
    assert size <= 16 << 20


def test_tenants_cannot_enter_list_read_or_write_each_other(slot_host: SlotHost) -> None:
    a, b = slot_host.name(), slot_host.name()
    for n in (a, b):
        assert slot_host.slotctl("slot", "create", n, "--email", "i@example.com", "--country", "DE").returncode == 0
    home_a = slot_host.slots_root / a
    assert as_user(a, "echo secret > $HOME/diary && chmod 644 $HOME/diary").returncode == 0
    for script in (f"ls {home_a}", f"cat {home_a}/diary", f"cd {home_a}", f"touch {home_a}/x",
                   f"ls {slot_host.slots_root}"):
        r = as_user(b, script)
        assert r.returncode != 0 and "Permission denied" in r.stderr, script
    assert not (home_a / "x").exists()
    assert as_user(a, "cat $HOME/diary").stdout.strip() == "secret", "the owner still reads its own"


def test_remove_leaves_no_trace_and_matches_exact_names(slot_host: SlotHost) -> None:
    before = qgroup_ids(slot_host.slots_root)
    bob = slot_host.name()
    bobby = bob + "by"
    for n in (bob, bobby):
        assert slot_host.slotctl("slot", "create", n, "--email", "b@example.com", "--country", "DE",
                                 "--quota", "32M").returncode == 0
    sleeper = subprocess.Popen(["runuser", "-u", bob, "--", "sleep", "300"])
    try:
        r = slot_host.slotctl("slot", "remove", bob, "--json")
        assert r.returncode == 0, r.stderr
        assert sleeper.wait(timeout=10) in (-signal.SIGKILL, 128 + signal.SIGKILL), "processes stopped first"
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
    assert_no_trace(slot_host, bob, before | qgroup_ids(slot_host.slots_root))
    assert exists_user(bobby) and (slot_host.slots_root / bobby).is_dir(), "bobby untouched"
    ctx = slot_host.ctx()
    assert [e["action"] for e in ctx.store.audit_entries(bob)][-1] == "slot.remove", "audit stays"
    ctx.close()
    assert slot_host.slotctl("slot", "remove", bobby).returncode == 0
    assert qgroup_ids(slot_host.slots_root) <= before


@pytest.mark.parametrize("many", [False, True], ids=["remove", "remove-many"])
def test_remove_of_a_vanished_account_spares_whoever_has_its_id_now(slot_host: SlotHost, many: bool,
                                                                     tmp_path: Path) -> None:
    # The slot's account went behind slotwarden's back (userdel by hand) and an admin's useradd
    # (or another store's slot) took its id. Removing the slot must not sweep or kill that account's.
    gone, heir = slot_host.name(), slot_host.name()
    assert slot_host.slotctl("slot", "create", gone, "--email", "g@example.com", "--country", "DE").returncode == 0
    uid = pwd.getpwnam(gone).pw_uid
    subprocess.run(["userdel", gone], check=True)
    subprocess.run(["groupdel", gone], check=False, capture_output=True)
    subprocess.run(["useradd", "--no-create-home", "-u", str(uid), heir], check=True)
    heirs_file = Path(f"/dev/shm/{heir}-work")
    sleeper = subprocess.Popen(["runuser", "-u", heir, "--", "sh", "-c", f"echo mine > {heirs_file}; exec sleep 300"])
    try:
        wait_for(heirs_file.exists, 20, what="the heir's file")
        r = slot_host.slotctl("slot", "remove-many" if many else "remove", gone, "--json")
        assert r.returncode == 0, r.stderr
        assert sleeper.poll() is None, "the heir's process was killed"
        assert heirs_file.read_text() == "mine\n", "the heir's file was swept"
        assert f"belongs to {heir!r}" in r.stdout or many
        assert not (slot_host.slots_root / gone).exists()
    finally:
        stop_process(sleeper)
        accounts.stop_processes(uid)  # the heir's sleep, runuser's child
        heirs_file.unlink(missing_ok=True)
        subprocess.run(["userdel", heir], check=True)


def test_remove_refuses_empty_unknown_and_non_slot_names(slot_host: SlotHost) -> None:
    assert slot_host.slotctl("slot", "remove", "").returncode == 2
    assert slot_host.slotctl("slot", "remove", slot_host.name()).returncode == 1
    r = slot_host.slotctl("slot", "remove", "daemon")
    assert r.returncode == 1 and exists_user("daemon")
    assert slot_host.slotctl("slot", "remove", "../etc").returncode == 2


def test_bad_input_changes_nothing(slot_host: SlotHost) -> None:
    ctx = slot_host.ctx()
    before = (len(ctx.store.audit_entries()), ctx.store.list_slots(), sorted(os.listdir(slot_host.slots_root)))
    name = slot_host.name()
    cases = [
        [name.upper(), "--email", "x@example.com", "--country", "DE"],
        [name, "--email", "not-an-email", "--country", "DE"],
        [name, "--email", "x@example.com", "--country", "QQ"],
        [name, "--email", "x@example.com", "--country", "DE", "--quota", "-5G"],
        [name, "--email", "x@example.com", "--country", "DE", "--payment-ref", "a b;rm -rf /"],
        ["root", "--email", "x@example.com", "--country", "DE"],
        ["bin", "--email", "x@example.com", "--country", "DE"],
        [name + "\x1b[2J", "--email", "x@example.com", "--country", "DE"],
    ]
    for args in cases:
        r = slot_host.slotctl("slot", "create", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        assert "\x1b" not in r.stderr
    after = (len(ctx.store.audit_entries()), ctx.store.list_slots(), sorted(os.listdir(slot_host.slots_root)))
    assert after == before
    # other jobs may add accounts meanwhile; none of ours may exist
    assert not any(line.split(":", 1)[0].startswith(name) for line in Path("/etc/passwd").read_text().splitlines())
    ctx.close()


def test_existing_account_is_never_adopted(slot_host: SlotHost) -> None:
    name = slot_host.name()
    subprocess.run(["useradd", "--no-create-home", name], check=True)
    try:
        r = slot_host.slotctl("slot", "create", name, "--email", "x@example.com", "--country", "DE")
        assert r.returncode == 1 and "never adopted" in r.stderr
    finally:
        subprocess.run(["userdel", name], check=True)


@pytest.mark.parametrize("step", CREATE_STEPS)
def test_failure_at_each_create_step_leaves_nothing(slot_host: SlotHost, step: str) -> None:
    before = qgroup_ids(slot_host.slots_root)
    name = slot_host.name()
    ctx = slot_host.ctx()
    plan_mod.fail_at_step = step
    try:
        with pytest.raises(StepFailed, match=f"step '{step}'"):
            create_slot(ctx, name, "f@example.com", "DE", "32M")
    finally:
        plan_mod.fail_at_step = None
        ctx.close()
    assert_no_trace(slot_host, name, before)


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from provisioner import steps as plan
    from provisioner.config import load_config
    from provisioner.context import Context
    from provisioner.operations import create_slot
    def kill(step):
        if step == {step!r}:
            os.kill(os.getpid(), signal.SIGKILL)
    plan.after_step = kill
    create_slot(Context(load_config(Path({cfg!r}))), {name!r}, "k@example.com", "DE", "32M")
    """
)


@pytest.mark.parametrize("step", CREATE_STEPS[:-1])
@pytest.mark.parametrize("heal", ["rerun", "remove"])
def test_kill_9_mid_create_is_healed(slot_host: SlotHost, step: str, heal: str) -> None:
    before = qgroup_ids(slot_host.slots_root)
    name = slot_host.name()
    code = KILLER.format(repo=str(REPO), step=step, cfg=str(slot_host.config_path), name=name)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    doctor = slot_host.slotctl("doctor", "--json")
    assert doctor.returncode == 1 and any(d["subject"] == name and "half-made" in d["problem"]
                                          for d in json.loads(doctor.stdout)["drift"])
    if heal == "rerun":
        r = slot_host.slotctl("slot", "create", name, "--email", "k@example.com", "--country", "DE",
                              "--quota", "32M", "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["resumed"] is True and out["state"] == "active"
        assert crypt.crypt(out["password"], shadow_hash(name)) == shadow_hash(name)
        st = os.stat(out["home"])
        assert st.st_uid == pwd.getpwnam(name).pw_uid and stat.S_IMODE(st.st_mode) == 0o700
        assert slot_host.slotctl("doctor").returncode == 0, slot_host.slotctl("doctor").stdout
        assert slot_host.slotctl("slot", "remove", name).returncode == 0
    else:
        r = slot_host.slotctl("slot", "remove", name)
        assert r.returncode == 0, r.stderr
    assert_no_trace(slot_host, name, before)
    assert slot_host.slotctl("doctor").returncode == 0


def test_keep_data_moves_home_aside_owned_by_root(slot_host: SlotHost) -> None:
    name = slot_host.name()
    assert slot_host.slotctl("slot", "create", name, "--email", "k@example.com", "--country", "DE").returncode == 0
    assert as_user(name, "echo keep > $HOME/notes").returncode == 0
    uid = pwd.getpwnam(name).pw_uid
    assert slot_host.slotctl("slot", "remove", name, "--keep-data").returncode == 0
    assert not exists_user(name) and not (slot_host.slots_root / name).exists()
    kept = [p for p in (slot_host.slots_root / ".kept").iterdir() if p.name.startswith(name + "-")]
    assert len(kept) == 1
    assert (kept[0] / "notes").read_text() == "keep\n"
    # One rename, no chown walk: the top is root's and 0700 inside a root-only 0700 directory;
    # the files keep the retired uid, which no account has or will ever get.
    st_kept = os.lstat(slot_host.slots_root / ".kept")
    assert (st_kept.st_uid, stat.S_IMODE(st_kept.st_mode)) == (0, 0o700)
    assert os.lstat(kept[0]).st_uid == 0 and stat.S_IMODE(kept[0].stat().st_mode) == 0o700
    assert os.lstat(kept[0] / "notes").st_uid == uid
    ctx = slot_host.ctx()
    assert [r["retired_at"] is not None for r in ctx.store.slot_ids() if r["id"] == uid] == [True]
    ctx.close()
    with pytest.raises(KeyError):
        pwd.getpwuid(uid)
    ctx = slot_host.ctx()
    assert [k["username"] for k in ctx.store.kept_homes()].count(name) == 1
    ctx.quota.remove_home(kept[0])
    ctx.store.delete_kept_home(str(kept[0]))
    ctx.close()


def test_passwd_replaces_the_hash(slot_host: SlotHost) -> None:
    name = slot_host.name()
    assert slot_host.slotctl("slot", "create", name, "--email", "p@example.com", "--country", "DE").returncode == 0
    old = shadow_hash(name)
    r = slot_host.slotctl("slot", "passwd", name, "--json")
    assert r.returncode == 0
    new_pw = json.loads(r.stdout)["password"]
    assert shadow_hash(name) != old and crypt.crypt(new_pw, shadow_hash(name)) == shadow_hash(name)


def test_create_many_goes_on_past_a_bad_row(slot_host: SlotHost) -> None:
    a, b = slot_host.name(), slot_host.name()
    csv = slot_host.base / "batch.csv"
    csv.write_text(f"username,email,country,quota\n{a},a@example.com,DE,16M\nBAD!,x@example.com,DE,\n"
                   f"{b},b@example.com,NL,\n")
    r = slot_host.slotctl("slot", "create-many", str(csv), "--json")
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert (out["created"], out["failed"]) == (2, 1)
    assert [x["ok"] for x in out["results"]] == [True, False, True]
    assert exists_user(a) and exists_user(b)


def test_host_init_is_idempotent(slot_host: SlotHost) -> None:
    args = ["host", "init", "--slots-root", str(slot_host.slots_root), "--quota-backend", "btrfs",
            "--loopback-image", str(slot_host.base / "slots.img"), "--loopback-size", "1G", "--no-persist", "--json"]
    r = slot_host.slotctl(*args)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["changed"] is False
    ctx = slot_host.ctx()
    has_slots = bool(ctx.store.list_slots())
    ctx.close()
    other = slot_host.slotctl("host", "init", "--slots-root", str(slot_host.base / "elsewhere"), "--no-persist")
    if has_slots:
        assert other.returncode == 1 and "remove them" in other.stderr


def test_doctor_reports_drift(slot_host: SlotHost) -> None:
    name = slot_host.name()
    assert slot_host.slotctl("slot", "create", name, "--email", "d@example.com", "--country", "DE").returncode == 0
    home = slot_host.slots_root / name
    home.chmod(0o755)
    r = slot_host.slotctl("doctor", "--json")
    assert r.returncode == 1
    assert {"subject": name, "problem": f"home {home} has mode 755, expected 700"} in json.loads(r.stdout)["drift"]
    home.chmod(0o700)
    assert slot_host.slotctl("slot", "remove", name).returncode == 0


def test_batch_failure_is_undone_whole_then_rows_fail_alone(slot_host: SlotHost) -> None:
    from provisioner.operations import BatchRow, create_many

    before = qgroup_ids(slot_host.slots_root)
    names = [slot_host.name() for _ in range(3)]
    ctx = slot_host.ctx()
    plan_mod.fail_at_step = "skeleton"
    try:
        out = create_many(ctx, [BatchRow(n, "m@example.com", "DE", "16M") for n in names])
    finally:
        plan_mod.fail_at_step = None
        ctx.close()
    assert all(isinstance(o, StepFailed) and o.step == "skeleton" for o in out)
    for n in names:
        assert_no_trace(slot_host, n, before)


def test_batch_creates_real_slots_with_working_passwords(slot_host: SlotHost) -> None:
    from provisioner.operations import BatchRow, Created, create_many

    names = [slot_host.name() for _ in range(5)]
    ctx = slot_host.ctx()
    out = create_many(ctx, [BatchRow(n, "m@example.com", "DE", "16M") for n in names])
    ctx.close()
    assert all(isinstance(o, Created) for o in out)
    for n, o in zip(names, out, strict=True):
        assert isinstance(o, Created)
        h = shadow_hash(n)
        assert crypt.crypt(o.password, h) == h
        st = os.stat(o.record.home)
        pw = pwd.getpwnam(n)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (pw.pw_uid, 0o700)
        assert grp.getgrgid(pw.pw_gid).gr_name == n
    r = as_user(names[0], "dd if=/dev/zero of=$HOME/big bs=1M count=40 conv=fsync")
    assert "Disk quota exceeded" in r.stderr
    assert slot_host.slotctl("doctor").returncode == 0


def test_a_tenant_sees_only_its_own_processes(slot_host: SlotHost) -> None:
    a, b = slot_host.name(), slot_host.name()
    for n in (a, b):
        assert slot_host.slotctl("slot", "create", n, "--email", "h@example.com", "--country", "DE").returncode == 0
    sleeper = subprocess.Popen(["runuser", "-u", a, "--", "sleep", "301"])
    try:
        seen_by_b = as_user(b, "ps -eo user:32,pid,args")
        seen_by_a = as_user(a, "ps -eo user:32,pid,args")
        assert seen_by_b.returncode == 0 and seen_by_a.returncode == 0
        assert "sleep 301" in seen_by_a.stdout
        assert "sleep 301" not in seen_by_b.stdout and a not in seen_by_b.stdout
        assert "root" not in seen_by_b.stdout.split(), "root's processes are hidden too"
        r = as_user(b, f"cat /proc/{sleeper.pid}/cmdline")
        assert r.returncode != 0
    finally:
        sleeper.kill()
        sleeper.wait()
