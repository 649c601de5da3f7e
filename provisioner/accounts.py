"""Linux accounts through shadow-utils: users, groups, passwords, and the processes of a UID.

Passwords go to ``chpasswd`` on stdin, so only the shadow hash ever exists and no password
appears in ``ps``.
"""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import signal
import string
import time
from dataclasses import dataclass
from pathlib import Path

from provisioner.errors import SlotError
from provisioner.runner import run

SLOT_COMMENT = "slotwarden slot"
# 62 symbols: 22 of them carry ~131 bits, above the 128-bit floor of the policy.
_ALPHABET = string.ascii_letters + string.digits


def generate_password(length: int = 22) -> str:
    """A random password from the OS CSPRNG."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


@dataclass(frozen=True)
class Account:
    """A passwd entry as the system has it."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str
    comment: str


def lookup_user(name: str) -> Account | None:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    return Account(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, pw.pw_shell, pw.pw_gecos)


def group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def uid_min(login_defs: Path = Path("/etc/login.defs")) -> int:
    """UID_MIN from login.defs (1000 when unset)."""
    try:
        for line in login_defs.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "UID_MIN" and parts[1].isdigit():
                return int(parts[1])
    except OSError:
        pass
    return 1000


def add_user(name: str, home: Path, shell: str) -> None:
    """Create NAME with its own private group; the home is made by the quota backend."""
    run(["useradd", "--user-group", "--no-create-home", "--home-dir", str(home),
         "--shell", shell, "--comment", SLOT_COMMENT, name])


def delete_user(name: str) -> None:
    """Remove NAME and its private group if present (exact name; absent is fine)."""
    if lookup_user(name) is not None:
        run(["userdel", name])
    if group_exists(name):
        run(["groupdel", name])


def set_password(name: str, password: str) -> None:
    """Set NAME's password through chpasswd, the password on stdin."""
    run(["chpasswd"], stdin=f"{name}:{password}\n")


def pids_of(uid: int) -> list[int]:
    """PIDs whose real UID is UID (read from /proc; root sees all even with hidepid)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Uid:"):
                        if int(line.split()[1]) == uid:
                            found.append(int(entry.name))
                        break
        except (OSError, ValueError):
            continue
    return found


def stop_processes(uid: int, timeout: float = 10.0) -> int:
    """SIGKILL every process of UID until none is left; return how many were killed."""
    if uid == 0:
        raise SlotError("refusing to stop the processes of uid 0")
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        pids = pids_of(uid)
        if not pids:
            return len(killed)
        if time.monotonic() > deadline:
            raise SlotError(f"processes of uid {uid} survive SIGKILL: {pids[:5]}")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
