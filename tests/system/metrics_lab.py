"""A throwaway slotwarden host for the metrics and data tests: own config, state dir, btrfs
loop image, cgroup parent, facts dir and slotwarden-me path — all removed in teardown.

Users are named ``tm`` + random; nothing outside the lab's tmp dir and its cgroup parent is
touched.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SLOTCTL = str(Path(sys.executable).parent / "slotctl")
TENANT_PYTHON = "/usr/bin/python3"


@dataclass
class Lab:
    """One lab host; ``slotctl`` runs with its config."""

    root: Path
    config: Path
    cgroup_parent: str
    me_path: Path
    env: dict[str, str]
    passwords: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def slots_root(self) -> Path:
        return self.root / "slots"

    def slotctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([SLOTCTL, *args], env=self.env, capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"slotctl {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        return proc

    def slotctl_json(self, *args: str) -> Any:
        return json.loads(self.slotctl(*args, "--json").stdout)

    def create_slot(self, quota: str = "100M") -> str:
        name = "tm" + secrets.token_hex(4)
        out = self.slotctl_json("slot", "create", name, "--email", f"{name}@example.com", "--country", "DE",
                                "--quota", quota, "--payment-ref", f"PAYID-{name.upper()}")
        self.passwords[name] = out["password"]
        return name

    def cgroup_dirs(self, name: str) -> dict[str, Path]:
        return {c: Path("/sys/fs/cgroup") / c / self.cgroup_parent / name for c in ("cpuacct", "memory", "blkio")}

    def start_as(self, name: str, code: str, *, in_cgroup: bool = True) -> subprocess.Popen[bytes]:
        """Start ``python3 -c CODE`` as NAME; IN_CGROUP places it in the slot's cgroup from birth,
        as a login session hook would."""
        dirs = list(self.cgroup_dirs(name).values()) if in_cgroup else []

        def enter() -> None:
            for d in dirs:
                (d / "cgroup.procs").write_text(str(os.getpid()))

        p = subprocess.Popen(["runuser", "-u", name, "--", TENANT_PYTHON, "-c", code],
                             preexec_fn=enter, cwd="/", stdout=subprocess.PIPE)
        self.procs.append(p)
        return p

    def run_as(self, name: str, argv: list[str], *, in_cgroup: bool = True) -> subprocess.CompletedProcess[str]:
        dirs = list(self.cgroup_dirs(name).values()) if in_cgroup else []

        def enter() -> None:
            for d in dirs:
                (d / "cgroup.procs").write_text(str(os.getpid()))

        return subprocess.run(["runuser", "-u", name, "--", *argv], preexec_fn=enter, cwd="/",
                              capture_output=True, text=True, timeout=120)


def uid_pids(uid: int) -> set[int]:
    """Every PID whose real UID is UID, as root sees /proc."""
    out = set()
    for e in os.scandir("/proc"):
        if e.name.isdigit():
            try:
                for line in open(f"/proc/{e.name}/status"):
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            out.add(int(e.name))
                        break
            except OSError:
                pass
    return out


@pytest.fixture(name="lab", scope="module")
def lab_fixture() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("the metrics system tests need root")
    root = Path(tempfile.mkdtemp(prefix="tmlab."))
    os.chmod(root, 0o755)  # tenants reach slotwarden-me under it
    parent = "slotwarden-tm" + secrets.token_hex(4)
    config = root / "slotwarden.toml"
    config.write_text(
        f'state_dir = "{root}/state"\n'
        f"[metrics]\n"
        f'cgroup_parent = "{parent}"\nfacts_dir = "{root}/facts"\nme_path = "{root}/bin/slotwarden-me"\n'
        # A socket nobody listens on: requests to the guard fall back to this lab's own store,
        # never to a guard service another test (or the host) runs.
        f'[guard]\nsocket = "{root}/guard.sock"\n'
    )
    env = {**os.environ, "SLOTWARDEN_CONFIG": str(config)}
    lab = Lab(root, config, parent, root / "bin" / "slotwarden-me", env)
    try:
        lab.slotctl("host", "init", "--loopback-image", str(root / "slots.img"), "--loopback-size", "512M",
                    "--slots-root", str(root / "slots"), "--no-persist")
        yield lab
    finally:
        for p in lab.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        try:
            listing = lab.slotctl_json("slot", "list")
        except Exception:
            listing = []
        for row in listing:
            lab.slotctl("slot", "remove", row["username"], check=False)
        for name in list(lab.passwords):  # anything the store lost track of
            try:
                uid = pwd.getpwnam(name).pw_uid
            except KeyError:
                uid = None
            for pid in uid_pids(uid) if uid is not None else ():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["userdel", name], check=False, capture_output=True)
            subprocess.run(["groupdel", name], check=False, capture_output=True)
        for c in ("cpuacct", "memory", "blkio"):
            base = Path("/sys/fs/cgroup") / c / parent
            if base.is_dir():
                for d in base.iterdir():
                    if d.is_dir():
                        d.rmdir()
                base.rmdir()
        subprocess.run(["umount", str(root / "slots")], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
