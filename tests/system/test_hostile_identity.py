"""Hostile tenants against slot identity and removal, as root sets the scene on this machine.

The attacks need a slot removed and another created between the tenant's move and the check,
which only root can do, so they live here rather than in the testinfra suite:

- UID reuse: ``old`` leaves a setuid shell, tmp files, a crontab, an at job, mail, SysV IPC and a
  POSIX message queue behind; after ``slot remove old`` and ``slot create victim`` the victim
  has another uid and nothing of ``old`` is left anywhere.
- ``--keep-data`` race: a tenant that keeps logging back in and swapping a directory of its home
  for a symlink to a tree outside never gets that tree chowned.
- ``slot remove-many``: the batch path sweeps every slot like the single one.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.sweep import sysv_objects
from tests.system.fixtures.hosts import SlotHost
from tests.system.fixtures.processes import as_user

pytestmark = pytest.mark.root

LINGER = Path("/var/lib/systemd/linger")
MQ_OPEN = ("import ctypes, os, sys; rt = ctypes.CDLL('librt.so.1', use_errno=True); "
           "fd = rt.mq_open(sys.argv[1].encode(), os.O_CREAT | os.O_RDWR, 0o600, None); "
           "sys.exit(0 if fd >= 0 else 1)")
MQ_EXISTS = ("import ctypes, os, sys; rt = ctypes.CDLL('librt.so.1', use_errno=True); "
             "fd = rt.mq_open(sys.argv[1].encode(), os.O_RDONLY, 0, None); "
             "sys.exit(0 if fd >= 0 else 3)")


def create(host: SlotHost, name: str) -> dict:
    r = host.slotctl("slot", "create", name, "--email", f"{name}@example.com", "--country", "DE",
                     "--quota", "32M", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def plant(name: str, tag: str) -> dict[str, Path]:
    """Leave everything a hostile tenant can leave outside its home; return the paths."""
    acct = pwd.getpwnam(name)
    paths = {
        "setuid": Path(f"/var/tmp/.b-{tag}"),
        "tmp": Path(f"/tmp/.old-{tag}"),
        "tmpdir": Path(f"/tmp/.olddir-{tag}"),
        "shm": Path(f"/dev/shm/.old-{tag}"),
        "crontab": Path(f"/var/spool/cron/crontabs/{name}"),
        "mail": Path(f"/var/mail/{name}"),
        "run_user": Path(f"/run/user/{acct.pw_uid}"),
    }
    script = (f"cp /bin/bash {paths['setuid']} && chmod 4755 {paths['setuid']} && "
              f"echo x > {paths['tmp']} && mkdir {paths['tmpdir']} && echo y > {paths['tmpdir']}/f && "
              f"ln -s /etc/shadow {paths['tmpdir']}/link && echo z > {paths['shm']} && "
              "echo '* * * * * true' | crontab - && echo true | at now + 2 hours 2>/dev/null; "
              "ipcmk -M 4096 >/dev/null && ipcmk -Q >/dev/null && ipcmk -S 1 >/dev/null && "
              f"python3 -c {json.dumps(MQ_OPEN)} /sw-{tag}")
    r = as_user(name, script)
    assert r.returncode == 0, r.stderr
    # What daemons file in the user's name: the MTA's spool, logind's runtime dir.
    paths["mail"].write_text("From: x\n\nhello\n")
    os.chown(paths["mail"], acct.pw_uid, 8)  # group mail
    paths["run_user"].mkdir(parents=True, exist_ok=True)
    os.chown(paths["run_user"], acct.pw_uid, acct.pw_gid)
    (paths["run_user"] / "bus").write_text("")
    os.chown(paths["run_user"] / "bus", acct.pw_uid, acct.pw_gid)
    # What `loginctl enable-linger` leaves: a root-owned file named after the user.
    (LINGER / name).write_text("")
    atjobs = [p for p in Path("/var/spool/cron/atjobs").iterdir() if p.stat().st_uid == acct.pw_uid]
    assert atjobs, "the at job was queued"
    paths["atjob"] = atjobs[0]
    return paths


@pytest.fixture
def linger_dir() -> Iterator[Path]:
    """systemd's linger directory (made for the test when this machine has none, then removed)."""
    made = not LINGER.exists()
    LINGER.mkdir(mode=0o755, parents=True, exist_ok=True)
    try:
        yield LINGER
    finally:
        if made:
            shutil.rmtree(LINGER, ignore_errors=True)


def test_uid_reuse_no_identity_or_leftover_passes_to_the_next_tenant(slot_host: SlotHost, linger_dir: Path) -> None:
    old, victim, tag = slot_host.name(), slot_host.name(), secrets.token_hex(3)
    old_uid = create(slot_host, old)["uid"]
    paths = plant(old, tag)
    assert sysv_objects({old_uid}), "the tenant made SysV IPC objects"
    assert paths["setuid"].stat().st_mode & 0o4000
    r = slot_host.slotctl("slot", "remove", old, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout).get("sweep", {})
    made = create(slot_host, victim)
    try:
        assert made["uid"] != old_uid, "the victim got the removed tenant's uid"
        with pytest.raises(KeyError):
            pwd.getpwuid(old_uid)
        for what, p in paths.items():
            assert not (p.exists() or p.is_symlink()), f"{what} left behind: {p}"
        assert Path("/etc/shadow").exists(), "the symlink was removed, not followed"
        assert sysv_objects({old_uid}) == [], "SysV IPC left behind"
        assert subprocess.run(["python3", "-c", MQ_EXISTS, f"/sw-{tag}"]).returncode == 3, "mqueue left"
        # What the removal reported: the paths, the IPC objects, the queue.
        for what in ("setuid", "tmp", "tmpdir", "shm", "crontab", "mail", "run_user", "atjob"):
            assert str(paths[what]) in report["paths"], (what, report["paths"])
        assert len(report["ipc"]) == 3 and report["mqueues"] == [f"sw-{tag}"]
        assert f"linger {old}" in report["systemd"] and not Path(f"/var/lib/systemd/linger/{old}").exists()
        ctx = slot_host.ctx()
        audit = [e for e in ctx.store.audit_entries(old) if e["action"] == "slot.remove"][-1]
        assert audit["detail"]["swept"]["removed_paths"] == report["removed_paths"] >= 8
        ids = {r["id"]: r for r in ctx.store.slot_ids()}
        ctx.close()
        assert ids[old_uid]["username"] == old and ids[old_uid]["retired_at"] is not None
        assert ids[made["uid"]]["username"] == victim and ids[made["uid"]]["retired_at"] is None
        # The victim: nothing of its own outside its home, and no way to the old setuid shell.
        assert as_user(victim, f"test -e {paths['setuid']}").returncode == 1
        assert pwd.getpwnam(victim).pw_gid == made["uid"], "private group with the same number"
        assert victim not in Path("/etc/subuid").read_text(), "a slot gets no subordinate ids"
    finally:
        assert slot_host.slotctl("slot", "remove", victim).returncode == 0


def test_a_removed_uid_is_never_handed_out_again(slot_host: SlotHost) -> None:
    seen: set[int] = set()
    for _ in range(3):
        name = slot_host.name()
        uid = create(slot_host, name)["uid"]
        assert uid not in seen
        ctx = slot_host.ctx()
        assert ctx.config.slots.uid_min <= uid <= ctx.config.slots.uid_max
        ctx.close()
        seen.add(uid)
        assert slot_host.slotctl("slot", "remove", name).returncode == 0


def test_keep_data_never_chowns_outside_the_kept_tree_while_the_tenant_races(slot_host: SlotHost,
                                                                            tmp_path: Path) -> None:
    name = slot_host.name()
    create(slot_host, name)
    # A tree outside the home, owned by nobody: the old code's path walk chowned it to root.
    outside = Path(f"/tmp/slotwarden-canary-{secrets.token_hex(3)}")
    outside.mkdir(mode=0o755)
    try:
        (outside / "canary").write_text("c")
        for p in (outside / "canary", outside):
            os.chown(p, 65534, 65534)
        # Many directories to walk, so a swap lands while the old walk runs.
        assert as_user(name, "for i in $(seq 1 300); do mkdir -p $HOME/d$i/x && touch $HOME/d$i/x/f; done"
                       ).returncode == 0
        stop = threading.Event()
        racer_runs = [0]

        def racer() -> None:
            # Logging back in (su runs the account phase: an expired account is refused) and
            # swapping every directory for a symlink to the outside tree, over and over.
            swap = (f"for i in $(seq 1 300); do rm -rf $HOME/d$i 2>/dev/null; ln -sfn {outside} $HOME/d$i "
                    "2>/dev/null; done")
            while not stop.is_set():
                subprocess.run(["su", "-s", "/bin/sh", name, "-c", swap], capture_output=True, timeout=60)
                racer_runs[0] += 1

        t = threading.Thread(target=racer)
        t.start()
        time.sleep(0.5)
        r = slot_host.slotctl("slot", "remove", name, "--keep-data", "--json")
        stop.set()
        t.join(60)
        assert r.returncode == 0, r.stderr
        assert racer_runs[0] >= 1
        for p in (outside, outside / "canary"):
            st = os.lstat(p)
            assert (st.st_uid, st.st_gid) == (65534, 65534), f"{p} was chowned by the removal"
        kept = Path(json.loads(r.stdout)["kept"])
        assert kept.parent == slot_host.slots_root / ".kept"
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(outside)], check=False)
        ctx = slot_host.ctx()
        for k in ctx.store.kept_homes():
            if k["username"] == name:
                ctx.quota.remove_home(Path(k["path"]))
                ctx.store.delete_kept_home(k["path"])
        ctx.close()


def test_remove_many_sweeps_every_slot_and_goes_on_past_bad_names(slot_host: SlotHost, tmp_path: Path) -> None:
    names = [slot_host.name() for _ in range(4)]
    csv_file = tmp_path / "slots.csv"
    csv_file.write_text("username,email,country,quota\n" + "".join(f"{n},{n}@example.com,DE,32M\n" for n in names))
    made = slot_host.slotctl("slot", "create-many", str(csv_file), "--json")
    assert made.returncode == 0, made.stderr
    uids = {r["username"]: r["uid"] for r in json.loads(made.stdout)["results"]}
    assert len(set(uids.values())) == len(names)
    tag = secrets.token_hex(3)
    for n in names:
        script = (f"echo x > /tmp/.rm-{tag}-{n} && ipcmk -M 4096 >/dev/null && "
                  "(setsid sleep 600 </dev/null >/dev/null 2>&1 &)")
        assert as_user(n, script).returncode == 0
    assert all(Path(f"/tmp/.rm-{tag}-{n}").exists() for n in names)
    assert all(n not in Path("/etc/subuid").read_text() for n in names), "no subordinate ids"
    ghost = slot_host.name()
    r = slot_host.slotctl("slot", "remove-many", names[0], ghost, "bad/name", *names[1:], "--json")
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout)
    assert (out["removed"], out["failed"]) == (4, 2)
    by_name = {row["username"]: row for row in out["results"]}
    assert not by_name[ghost]["ok"] and "no slot" in by_name[ghost]["error"]
    for n in names:
        row = by_name[n]
        assert row["ok"] and f"/tmp/.rm-{tag}-{n}" in row["sweep"]["paths"] and len(row["sweep"]["ipc"]) == 1
        assert not Path(f"/tmp/.rm-{tag}-{n}").exists()
        assert not (slot_host.slots_root / n).exists()
        with pytest.raises(KeyError):
            pwd.getpwnam(n)
    assert sysv_objects(set(uids.values())) == []
    ctx = slot_host.ctx()
    assert all(ctx.store.get_slot(n) is None for n in names)
    retired = {r["id"] for r in ctx.store.slot_ids() if r["retired_at"] is not None}
    ctx.close()
    assert set(uids.values()) <= retired
    assert slot_host.slotctl("doctor").returncode == 0, slot_host.slotctl("doctor").stdout


def _runs_as(owner: str, other: str, home: Path) -> str:
    """OTHER runs OWNER's setuid copy of bash; the uid it ends up with."""
    pub = home / ".swv-pub"
    assert as_user(owner, f"mkdir -p {pub} && cp /bin/bash {pub}/sh && chmod 4755 {pub}/sh && chmod 755 {pub} "
                          f"&& chmod 711 {home}").returncode == 0
    try:
        return as_user(other, f"{pub}/sh -p -c 'id -u'").stdout.strip()
    finally:
        as_user(owner, f"rm -rf {pub}; chmod 700 {home}")


def test_slots_filesystem_is_nosuid_nodev_and_host_init_restores_it(slot_host: SlotHost) -> None:
    from provisioner.host import host_init, parse_host_request
    from provisioner.quota import mount_of

    a, b = slot_host.name(), slot_host.name()
    uid_a = create(slot_host, a)["uid"]
    uid_b = create(slot_host, b)["uid"]
    root = slot_host.slots_root
    try:
        assert {"nosuid", "nodev"} <= mount_of(root)[2]
        assert _runs_as(a, b, root / a) == str(uid_b)
        # A host mounted the old way: the other tenant becomes the owner of the setuid file.
        subprocess.run(["mount", "-o", "remount,suid,dev", str(root)], check=True)
        assert _runs_as(a, b, root / a) == str(uid_a), "the scene: suid mounts let tenants borrow identities"
        ctx = slot_host.ctx()
        req = parse_host_request(ctx, str(root), "btrfs", str(slot_host.base / "slots.img"), "1G", True, False)
        plan = host_init(ctx, req)
        assert "mount-options" in [s.name for s in plan.steps]
        assert [s.name for s in host_init(ctx, req, dry_run=True).steps] == [], "idempotent"
        ctx.close()
        assert {"nosuid", "nodev"} <= mount_of(root)[2]
        assert _runs_as(a, b, root / a) == str(uid_b)
    finally:
        subprocess.run(["mount", "-o", "remount,nosuid,nodev", str(root)], check=False)
        for n in (a, b):
            slot_host.slotctl("slot", "remove", n)


def test_doctor_reports_ids_that_break_the_never_twice_rule(slot_host: SlotHost) -> None:
    name = slot_host.name()
    uid = create(slot_host, name)["uid"]
    assert slot_host.slotctl("slot", "remove", name).returncode == 0
    squatter = slot_host.name()
    subprocess.run(["useradd", "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", "--uid", str(uid),
                    "--no-create-home", squatter], check=True, capture_output=True)
    try:
        r = slot_host.slotctl("doctor", "--json")
        assert r.returncode == 1
        assert {"subject": squatter, "problem": f"holds uid {uid}, retired from slot {name!r}"} in \
            json.loads(r.stdout)["drift"]
    finally:
        subprocess.run(["userdel", squatter], check=False)
    assert slot_host.slotctl("doctor").returncode == 0


def test_sweep_follows_no_symlink_another_tenant_swaps_in(slot_host: SlotHost) -> None:
    a, b, tag = slot_host.name(), slot_host.name(), secrets.token_hex(3)
    create(slot_host, a)
    create(slot_host, b)
    home_a = slot_host.slots_root / a
    assert as_user(a, "echo keep > $HOME/notes && mkdir -p $HOME/d && echo x > $HOME/d/f").returncode == 0
    # B points the sweep at A's home (what --keep-data is about to keep): a plain symlink, and a
    # directory swapped for one over and over while A is removed.
    lnk, swap = f"/tmp/.lnk-{tag}", f"/tmp/.swap-{tag}"
    assert as_user(b, f"ln -s {home_a} {lnk}").returncode == 0
    racer = subprocess.Popen(["runuser", "-u", b, "--", "/bin/bash", "-c",
                              f"while :; do mkdir {swap} 2>/dev/null; rmdir {swap} 2>/dev/null; "
                              f"ln -s {home_a} {swap} 2>/dev/null; rm -f {swap}; done"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        r = slot_host.slotctl("slot", "remove", a, "--keep-data", "--json")
        assert r.returncode == 0, r.stderr
        kept = Path(json.loads(r.stdout)["kept"])
        assert (kept / "notes").read_text() == "keep\n" and (kept / "d" / "f").read_text() == "x\n"
        assert not any(p.startswith(str(home_a)) or p.startswith(lnk) or p.startswith(swap)
                       for p in json.loads(r.stdout)["sweep"]["paths"])
        assert os.readlink(lnk) == str(home_a), "another tenant's symlink is not the removed tenant's"
    finally:
        racer.kill()
        racer.wait()
        subprocess.run(["rm", "-rf", lnk, swap], check=False)
        slot_host.slotctl("slot", "remove", b)
        ctx = slot_host.ctx()
        for k in ctx.store.kept_homes():
            if k["username"] == a:
                ctx.quota.remove_home(Path(k["path"]))
                ctx.store.delete_kept_home(k["path"])
        ctx.close()


def test_two_stores_on_one_host_never_hand_out_the_same_id(slot_host: SlotHost) -> None:
    from tests.system.fixtures.hosts import make_slot_host, teardown_slot_host, world_traversable_tmpdir

    other = make_slot_host(world_traversable_tmpdir("ids"), f"ti{secrets.token_hex(2)}", size="1G")
    try:
        results: list[subprocess.CompletedProcess[str]] = []
        ours: list[str] = []

        def run_creates(host: SlotHost, many: bool) -> None:
            names = [host.name() for _ in range(4)]
            if host is slot_host:
                ours.extend(names)
            if many:
                csv_file = host.base / f"{names[0]}.csv"
                csv_file.write_text("username,email,country\n" + "".join(f"{n},{n}@example.com,DE\n" for n in names))
                results.append(host.slotctl("slot", "create-many", str(csv_file), "--json"))
            else:
                for n in names:
                    results.append(host.slotctl("slot", "create", n, "--email", f"{n}@example.com",
                                                "--country", "DE", "--json"))

        threads = [threading.Thread(target=run_creates, args=(h, m))
                   for h, m in ((slot_host, False), (other, False), (slot_host, True), (other, True))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
        uids = [pwd.getpwnam(line.split(":", 1)[0]).pw_uid for line in Path("/etc/passwd").read_text().splitlines()
                if line.startswith((slot_host.prefix, other.prefix))]
        assert len(uids) == len(set(uids)) and len(uids) >= 16
    finally:
        teardown_slot_host(other)
        ctx = slot_host.ctx()
        made = [n for n in ours if ctx.store.get_slot(n) is not None]
        ctx.close()
        if made:
            assert slot_host.slotctl("slot", "remove-many", *made).returncode == 0


def test_a_tenant_chosen_file_name_cannot_type_into_the_operators_terminal(slot_host: SlotHost) -> None:
    name, tag = slot_host.name(), secrets.token_hex(3)
    create(slot_host, name)
    evil = f"/tmp/.e-{tag}\x1b]0;owned\x07\x1b[2J\x1b[31m"
    assert as_user(name, f"touch {shlex.quote(evil)}").returncode == 0
    r = slot_host.slotctl("slot", "remove", name)
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert f"/tmp/.e-{tag}\\x1b]0;owned\\x07" in r.stdout
    assert not Path(evil).exists()


def test_remove_many_keep_data_keeps_each_home_with_one_rename(slot_host: SlotHost) -> None:
    names = [slot_host.name() for _ in range(2)]
    for n in names:
        create(slot_host, n)
        assert as_user(n, "echo mine > $HOME/notes").returncode == 0
    r = slot_host.slotctl("slot", "remove-many", *names, "--keep-data", "--json")
    assert r.returncode == 0, r.stderr
    ctx = slot_host.ctx()
    try:
        for row in json.loads(r.stdout)["results"]:
            kept = Path(row["kept"])
            assert kept.parent == slot_host.slots_root / ".kept" and kept.name.endswith(f"-{row['uid']}")
            st = os.lstat(kept)
            assert (st.st_uid, st.st_mode & 0o777) == (0, 0o700)
            assert (kept / "notes").read_text() == "mine\n" and os.lstat(kept / "notes").st_uid == row["uid"]
            assert [k["username"] for k in ctx.store.kept_homes() if k["path"] == str(kept)] == [row["username"]]
    finally:
        for k in ctx.store.kept_homes():
            if k["username"] in names:
                ctx.quota.remove_home(Path(k["path"]))
                ctx.store.delete_kept_home(k["path"])
        ctx.close()
