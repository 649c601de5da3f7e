"""The hostile tenant: attacks a tenant with a shell can make, run as that tenant.

Root only sets the scene and clears it; every attempt runs as a slot user. Each class is one
family of attacks; the root-side halves (root's operations racing the tenant) are in
``tests/system/test_hostile_*.py``.
"""

from __future__ import annotations

import secrets
import shlex
from typing import Any

import pytest

from tests.infra.tenants import PREFIX, Slot, as_tenant, assert_refused, subvolume_attack

MiB = 1 << 20


class TestIdentity:
    """A slot's identity is its own: no id of the system's ranges, no borrowed ids, no setuid."""

    def test_slot_ids_come_from_outside_the_ranges_useradd_hands_out(self, host: Any, slots: list[Slot]) -> None:
        defs = {}
        for line in host.file("/etc/login.defs").content_string.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                defs[parts[0]] = int(parts[1])
        ranges = {k: (defs.get(f"{k}_MIN", lo), defs.get(f"{k}_MAX", hi))
                  for k, (lo, hi) in {"UID": (1000, 60000), "SUB_UID": (100000, 600100000)}.items()}
        inside = {s.name: k for s in slots for k, (lo, hi) in ranges.items() if lo <= s.uid <= hi}
        assert inside == {}, "a slot uid that useradd (or a subordinate range) could hand out again"

    def test_each_slot_has_a_private_group_of_its_own_number(self, host: Any, slots: list[Slot]) -> None:
        for s in slots:
            out = host.check_output(f"id -g {shlex.quote(s.name)}; getent group {s.uid}")
            gid, group = out.splitlines()
            assert int(gid) == s.uid and group.split(":")[0] == s.name

    def test_a_tenant_has_no_subordinate_ids_to_map_other_uids(self, host: Any, slots: list[Slot]) -> None:
        for path in ("/etc/subuid", "/etc/subgid"):
            f = host.file(path)
            owners = {ln.split(":", 1)[0] for ln in f.content_string.splitlines() if ln} if f.exists else set()
            assert owners & {s.name for s in slots} == set(), f"slot users in {path}"
        # And from the tenant's side: newuidmap refuses every mapping beyond its own uid.
        s = slots[0]
        probe = ("command -v newuidmap >/dev/null || { echo NO-TOOL; exit 0; }; "
                 "unshare -U sleep 5 & p=$!; sleep 0.3; "
                 f"newuidmap $p 0 {s.uid + 1} 1 2>/dev/null && echo MAPPED; kill $p 2>/dev/null; true")
        assert "MAPPED" not in as_tenant(host, s, probe).stdout

    def test_a_setuid_file_in_a_home_does_not_elevate(self, host: Any, pairs: list[tuple[Slot, Slot]]) -> None:
        a, b = pairs[0]
        pub = f"{a.home}/.swv-pub"
        shell = f"{pub}/sh"
        plant = (f"mkdir -p {shlex.quote(pub)} && cp /bin/bash {shlex.quote(shell)} && "
                 f"chmod 4755 {shlex.quote(shell)} && chmod 755 {shlex.quote(pub)} && chmod 711 {shlex.quote(a.home)}")
        assert as_tenant(host, a, plant).rc == 0
        try:
            # The other tenant runs A's setuid shell (bash -p keeps what the kernel gave it).
            out = as_tenant(host, b, f"{shlex.quote(shell)} -p -c 'id -u' 2>/dev/null || echo CANNOT-RUN")
            assert out.stdout.strip() in {str(b.uid), "CANNOT-RUN"}, f"{b.name} became uid {out.stdout.strip()}"
        finally:
            as_tenant(host, a, f"rm -rf {shlex.quote(pub)}; chmod 700 {shlex.quote(a.home)}")


def _filesystem(host: Any, slot: Slot) -> str:
    return str(as_tenant(host, slot, "stat -f -c %T $HOME").stdout.strip())


class TestQuotaEscapeThroughSubvolumes:
    """Quota (issue 12): subvolumes and snapshots a tenant makes count against its slot."""

    SUB = ".swv-hostile-sub"

    def _write_past(self, host: Any, slot: Slot, quota_mib: int, where: str) -> Any:
        return as_tenant(host, slot,
                         f"dd if=/dev/urandom of={where}/fill bs=1M count={quota_mib + 8} conv=fsync 2>&1; "
                         f"echo rc=$?; stat -c size=%s {where}/fill")

    def _cleanup(self, host: Any, slot: Slot, path: str) -> None:
        # An empty subvolume is removed by its owner with rmdir (no privilege needed).
        as_tenant(host, slot, f"rm -rf {path}/* 2>/dev/null; rmdir {path} 2>/dev/null || rm -rf {path}")

    @pytest.mark.parametrize("make", ["btrfs subvolume create {p}", "btrfs subvolume snapshot $HOME {p}"])
    def test_nested_subvolume_does_not_lift_the_cap(self, host: Any, slots: list[Slot],
                                                    request: pytest.FixtureRequest, make: str) -> None:
        quota_mib = request.config.getoption("quota_mib")
        slot = slots[0]
        path = f"$HOME/{self.SUB}"
        made = as_tenant(host, slot, make.format(p=path) + " 2>&1")
        try:
            if made.rc != 0:
                # Not btrfs (usrquota homes): no subvolume at all, and the cap covers every file.
                # On btrfs only the slot's seccomp filter may refuse it (TestNoSubvolumeOfItsOwn).
                assert _filesystem(host, slot) != "btrfs" or "Operation not permitted" in made.stdout, made.stdout
                as_tenant(host, slot, f"mkdir -p {path}")
            out = self._write_past(host, slot, quota_mib, path)
            assert "Disk quota exceeded" in out.stdout, out.stdout
            size = int(out.stdout.split("size=")[1].split()[0])
            assert size <= (quota_mib + 1) * MiB
        finally:
            self._cleanup(host, slot, path)


@pytest.mark.usrquota
class TestInodeCap:
    """Quota (issue 12): on usrquota hosts a tenant cannot fill the inode table with empty files."""

    def test_empty_files_stop_at_the_inode_cap(self, host: Any, slots: list[Slot]) -> None:
        slot = slots[0]
        # `true`, not `:`: a failed redirection of a special built-in ends a POSIX shell.
        try:
            out = as_tenant(host, slot, "mkdir -p $HOME/.swv-files && cd $HOME/.swv-files; i=0; "
                                        "while [ $i -lt 200000 ]; do true > f$i 2>/dev/null || break; i=$((i+1)); "
                                        "done; echo made=$i; { true > one-more; } 2>&1; true")
        finally:
            as_tenant(host, slot, "rm -rf $HOME/.swv-files")
        assert "made=" in out.stdout, out.stdout + out.stderr
        made = int(out.stdout.split("made=")[1].split()[0])
        assert made < 200000, "no inode cap: 200,000 empty files made"
        assert "Disk quota exceeded" in out.stdout, out.stdout


def clean_subvolume_attack(host: Any, slot: Slot) -> None:
    """What the attack made before the filter existed (an empty subvolume: rmdir by its owner)."""
    as_tenant(host, slot, f"rmdir $HOME/.swv-tool $HOME/{PREFIX}* 2>/dev/null; rm -rf $HOME/.swv-tool; true")


@pytest.mark.confine
class TestNoSubvolumeOfItsOwn:
    """Quota (issue 12): no door into a slot lets the tenant make a subvolume (the seccomp filter).

    The doors: sudo (how this suite becomes the tenant: a PAM session of service sudo), su run by
    root, an SSH login the tenant makes with a key of its own, a cron job the tenant installs.
    """

    def test_through_sudo(self, host: Any, slots: list[Slot]) -> None:
        slot = slots[0]
        try:
            assert_refused(as_tenant(host, slot, subvolume_attack()).stdout, _filesystem(host, slot))
        finally:
            clean_subvolume_attack(host, slot)

    def test_through_su(self, host: Any, slots: list[Slot]) -> None:
        slot = slots[0]
        script = f"cd $HOME && {subvolume_attack()}"
        try:
            out = host.run(f"su -s /bin/sh {shlex.quote(slot.name)} -c {shlex.quote(script)}")
            assert_refused(out.stdout, _filesystem(host, slot))
        finally:
            clean_subvolume_attack(host, slot)

    def test_through_an_ssh_login_with_its_own_key(self, host: Any, slots: list[Slot]) -> None:
        slot = slots[0]
        key = "$HOME/.ssh/swv-confine"
        setup = (f"mkdir -p -m 700 $HOME/.ssh && rm -f {key} {key}.pub && ssh-keygen -q -t ed25519 -N '' "
                 f"-C swv-confine -f {key} && cat {key}.pub >> $HOME/.ssh/authorized_keys && "
                 "chmod 600 $HOME/.ssh/authorized_keys")
        assert as_tenant(host, slot, setup).rc == 0
        try:
            login = (f"ssh -F /dev/null -i {key} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                     "-o BatchMode=yes -o LogLevel=ERROR -o PasswordAuthentication=no "
                     f"{shlex.quote(slot.name)}@127.0.0.1 {shlex.quote(subvolume_attack())}")
            out = as_tenant(host, slot, login)
            assert "Seccomp:" in out.stdout, out.stdout + out.stderr
            assert_refused(out.stdout, _filesystem(host, slot))
        finally:
            as_tenant(host, slot, f"sed -i '/ swv-confine$/d' $HOME/.ssh/authorized_keys; rm -f {key} {key}.pub")
            clean_subvolume_attack(host, slot)

    @pytest.mark.cron
    def test_through_a_cron_job(self, host: Any, slots: list[Slot]) -> None:
        slot = slots[0]
        out_file = "$HOME/.swv-cron.out"
        # The attack as a script of the tenant's own (a crontab line holds no newline, and % is one).
        script = "$HOME/.swv-attack"
        job = f"* * * * * cd $HOME && /bin/sh {script} > {out_file}.tmp 2>&1; mv {out_file}.tmp {out_file}"
        plant = (f"rm -f {out_file}; cat > {script} <<'SWV-EOF'\n{subvolume_attack()}\nSWV-EOF\n"
                 f"printf '%s\\n' {shlex.quote(job)} | crontab -")
        assert as_tenant(host, slot, plant).rc == 0
        try:
            waited = as_tenant(host, slot, f"i=0; while [ ! -s {out_file} ] && [ $i -lt 150 ]; do sleep 1; "
                                           f"i=$((i+1)); done; cat {out_file}")
            assert "Seccomp:" in waited.stdout, "the cron job did not run within 150 s: " + waited.stdout
            assert_refused(waited.stdout, _filesystem(host, slot))
        finally:
            as_tenant(host, slot, f"crontab -r; rm -f {out_file} {out_file}.tmp {script}")
            clean_subvolume_attack(host, slot)


@pytest.mark.confine
class TestPrivateTmp:
    """Identity and quota (issue 12): a slot's /tmp and /var/tmp are its own, inside its quota.

    Each session of a slot (and each of its apps) gets the instances in its home
    (``~/.slot-tmp/tmp``, ``var-tmp``) mounted on /tmp and /var/tmp: nothing a tenant leaves
    there is seen by another slot or left behind in the host's shared directories.
    """

    def test_another_slot_never_sees_them(self, host: Any, pairs: list[tuple[Slot, Slot]]) -> None:
        a, b = pairs[0]
        name = f".swv-private-{secrets.token_hex(4)}"
        assert as_tenant(host, a, f"echo mine > /tmp/{name} && echo mine > /var/tmp/{name}").rc == 0
        try:
            out = as_tenant(host, b, f"ls /tmp/{name} /var/tmp/{name} 2>&1; true").stdout
            assert out.count("No such file") == 2, out
            # Root (no slot) sees the host's own /tmp, where nothing of A's is.
            assert not host.file(f"/tmp/{name}").exists and not host.file(f"/var/tmp/{name}").exists
            assert as_tenant(host, a, f"cat /tmp/{name} /var/tmp/{name}").stdout.split() == ["mine", "mine"]
        finally:
            as_tenant(host, a, f"rm -f /tmp/{name} /var/tmp/{name}")

    def test_they_count_against_its_quota(self, host: Any, slots: list[Slot],
                                          request: pytest.FixtureRequest) -> None:
        quota_mib = request.config.getoption("quota_mib")
        out = as_tenant(host, slots[0], f"dd if=/dev/zero of=/tmp/.swv-fill bs=1M count={quota_mib + 8} "
                                        "conv=fsync 2>&1; stat -c size=%s /tmp/.swv-fill; rm -f /tmp/.swv-fill")
        assert "Disk quota exceeded" in out.stdout, out.stdout
        size = int(out.stdout.split("size=")[1].split()[0])
        assert size <= (quota_mib + 1) * MiB
