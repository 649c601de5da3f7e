"""Shared pieces of the fleet system tests: a lab host directory, its inventory, checks, teardown.

A *lab host* is this machine seen as a fleet host whose every path site.yml touches lives in a
temp dir: the venv (installed from the wheel built from this checkout), the config, the state
dir, the btrfs loopback image and its mount, the sshd drop-in. Nothing under /etc/slotwarden,
/var/lib/slotwarden or /etc/ssh is touched; /etc/fstab is left alone (persist off).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from provisioner import accounts
from provisioner.config import load_config
from provisioner.context import Context
from provisioner.executors import SlotChange
from provisioner.executors.ansible import AnsibleExecutor
from provisioner.operations import remove_slot

with warnings.catch_warnings():  # verifying a password against its shadow hash; in 3.11's stdlib
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt
REPO = Path(__file__).resolve().parents[2]


def random_name(prefix: str = "tf") -> str:
    return prefix + secrets.token_hex(3)


@dataclass
class LabHost:
    """One fleet host's paths (all under ROOT) and the slot names a test made on it."""

    root: Path
    wheelhouse: Path
    made: list[str] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.root / "etc" / "slotwarden.toml"

    @property
    def slots_root(self) -> Path:
        return self.root / "slots"

    def vars(self) -> dict[str, str]:
        r = self.root
        return {
            "slotwarden_prefix": str(r / "opt"),
            "slotwarden_config": str(self.config),
            "slotwarden_state_dir": str(r / "state"),
            "slotwarden_loopback_image": str(r / "slots.img"),
            "slotwarden_loopback_size": "512M",
            "slotwarden_loopback_root": str(self.slots_root),
            "slotwarden_persist": "false",
            "slotwarden_link_slotctl": "false",
            "slotwarden_sshd_dropin": str(r / "sshd_config.d" / "50-slotwarden.conf"),
            "slotwarden_sshd_reload": "false",
            # A venv in the temp dir: the .deb installs host-wide (make deb-test and the VM lab
            # prove that path).
            "slotwarden_install": "wheelhouse",
            "slotwarden_wheelhouse": str(self.wheelhouse),
            # The guard's profiles go to a temp dir; enabling them (pam-auth-update edits
            # /etc/pam.d/common-*) and starting the service are host-wide: not on a shared machine.
            "slotwarden_guard": "true",
            "slotwarden_pam_configs_dir": str(r / "pam-configs"),
            "slotwarden_guard_enable_pam": "false",
            "slotwarden_guard_supervise": "false",
        }

    def write_inventory(self, host_line: str, extra: dict[str, str] | None = None) -> Path:
        lines = ["[slotwarden]", host_line, "", "[slotwarden:vars]"]
        lines += [f"{k}={v}" for k, v in {**self.vars(), **(extra or {})}.items()]
        path = self.root / "inventory.ini"
        path.write_text("\n".join(lines) + "\n")
        return path

    def context(self) -> Context:
        return Context(load_config(self.config))


def make_lab_host(kind: str, wheelhouse: Path) -> LabHost:
    root = Path(tempfile.mkdtemp(prefix=f"swf-{kind}-", dir="/tmp"))
    os.chmod(root, 0o755)  # tenants must be able to traverse to their homes
    (root / "sshd_config.d").mkdir()
    return LabHost(root, wheelhouse)


def teardown_lab_host(lab: LabHost) -> None:
    """Remove every slot the lab's store knows and every name a test made, unmount, delete."""
    if lab.config.exists():
        try:
            ctx = lab.context()
            for rec in ctx.store.list_slots():
                try:
                    remove_slot(ctx, rec.username)
                except Exception:  # keep cleaning up
                    pass
            ctx.close()
        except Exception:
            pass
    for name in lab.made:
        acct = accounts.lookup_user(name)
        if acct is not None and acct.comment == accounts.SLOT_COMMENT:
            subprocess.run(["userdel", name], check=False, capture_output=True)
        if accounts.group_exists(name):
            subprocess.run(["groupdel", name], check=False, capture_output=True)
    if os.path.ismount(lab.slots_root):
        subprocess.run(["umount", str(lab.slots_root)], check=False, capture_output=True)
    img = lab.root / "slots.img"
    out = subprocess.run(["losetup", "-j", str(img)], capture_output=True, text=True).stdout
    for line in out.splitlines():
        subprocess.run(["losetup", "-d", line.split(":", 1)[0]], check=False, capture_output=True)
    shutil.rmtree(lab.root, ignore_errors=True)


def password_matches(name: str, password: str) -> bool:
    """Whether PASSWORD is NAME's password according to /etc/shadow."""
    for line in Path("/etc/shadow").read_text().splitlines():
        parts = line.split(":")
        if parts[0] == name:
            return crypt.crypt(password, parts[1]) == parts[1]
    return False


def files_containing(needle: str, *roots: Path, max_size: int = 64 << 20) -> list[Path]:
    """Every regular file under ROOTS (not crossing into other mounts, e.g. the slots filesystem)
    whose bytes contain NEEDLE; files over MAX_SIZE (the sparse loopback image) are skipped."""
    raw = needle.encode()
    found = []
    for root in roots:
        if root.is_file():
            candidates = [root]
        else:
            candidates = []
            for d, dirs, files in os.walk(root):
                dirs[:] = [x for x in dirs if not os.path.ismount(os.path.join(d, x))]
                candidates += [Path(d) / f for f in files]
        for path in candidates:
            try:
                if (path.is_file() and not path.is_symlink() and path.stat().st_size <= max_size
                        and raw in path.read_bytes()):
                    found.append(path)
            except OSError:
                continue
    return found


def check_slot_lifecycle(ex: AnsibleExecutor, lab: LabHost, host: str, runner_dirs: list[Path]) -> None:
    """site.yml has run on HOST: create for real, no change on re-run, check mode inert, absent leaves no trace."""
    name = random_name()
    lab.made.append(name)
    want = SlotChange.parse({"username": name, "email": f"{name}@example.com", "country": "DE", "quota": "64M"})

    # Check mode: the outcome says what would happen, and nothing happens.
    [o] = ex.apply([want], check=True)
    assert (o.host, o.username, o.action, o.changed, o.ok) == (host, name, "created", True, True), o
    assert o.password is None
    assert accounts.lookup_user(name) is None
    assert lab.context().store.get_slot(name) is None
    assert not (lab.slots_root / name).exists()

    # Create for real.
    [o] = ex.apply([want])
    assert (o.action, o.changed, o.ok) == ("created", True, True), o
    assert o.password and len(o.password) >= 22
    password = o.password
    acct = accounts.lookup_user(name)
    assert acct is not None and acct.comment == accounts.SLOT_COMMENT
    home = lab.slots_root / name
    st = home.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (acct.uid, 0o700)
    ctx = lab.context()
    rec = ctx.store.get_slot(name)
    assert rec is not None and rec.state == "active" and rec.quota_bytes == 64 << 20
    assert ctx.quota.usage(name, home).limit_bytes == 64 << 20
    assert password_matches(name, password), "the password handed back is not the slot's password"

    # A second run reports no change (the play's stats too).
    [o] = ex.apply([want])
    assert (o.action, o.changed, o.ok) == ("unchanged", False, True), o
    assert o.password is None
    assert ex.last_run is not None and ex.last_run.changed == 0

    # Check mode on absent: the slot stays.
    gone = SlotChange.parse({"username": name, "state": "absent"})
    [o] = ex.apply([gone], check=True)
    assert (o.action, o.changed) == ("removed", True), o
    assert accounts.lookup_user(name) is not None and home.is_dir()

    # Absent removes without trace (the audit rows stay).
    uid = acct.uid
    [o] = ex.apply([gone])
    assert (o.action, o.changed, o.ok) == ("removed", True, True), o
    assert accounts.lookup_user(name) is None
    assert not accounts.group_exists(name)
    assert not home.exists()
    ctx = lab.context()
    assert ctx.store.get_slot(name) is None
    assert not any(line.split(":")[2:3] == [str(uid)] for line in Path("/etc/passwd").read_text().splitlines())
    assert [e["action"] for e in ctx.store.audit_entries(name)][-1] == "slot.remove"
    [o] = ex.apply([gone])
    assert (o.action, o.changed) == ("unchanged", False)

    # The password reached us (above) and nowhere else: not in artifacts, env/, logs, state.
    leaks = files_containing(password, *runner_dirs, lab.root, Path("/var/log"))
    assert not leaks, f"the slot password leaked into {leaks}"
