"""Linux accounts through shadow-utils: users, groups, passwords, and the processes of a UID.

Passwords go to ``chpasswd`` on stdin, so only the shadow hash ever exists and no password
appears in ``ps``.
"""

from __future__ import annotations

import fcntl
import grp
import os
import pwd
import secrets
import signal
import string
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from provisioner.errors import ConfigError, SlotError
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


def uid_owner(uid: int) -> str | None:
    """The name of the account that has UID now, if any."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


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


# No subordinate ids for a slot: they would be 65,536 more UIDs in the tenant's hands, handed
# to the next user once the slot is gone.
NO_SUBORDINATE_IDS = ["-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0"]


def add_user(name: str, home: Path, shell: str, uid: int) -> None:
    """Create NAME with UID and a private group of GID UID; the home is made by the quota backend.

    The id comes from the slot range (:meth:`Store.allocate_ids`), never from useradd's own
    counter, which hands a removed user's id to the next one. Undone by :func:`delete_user`.
    """
    try:  # a create killed between the two commands left the group: use it
        need_group = grp.getgrnam(name).gr_gid != uid
    except KeyError:
        need_group = True
    if need_group:
        run(["groupadd", "--gid", str(uid), name])
    try:
        run(["useradd", "--uid", str(uid), "--gid", str(uid), "--no-user-group", "--no-create-home",
             "--home-dir", str(home), "--shell", shell, "--comment", SLOT_COMMENT, *NO_SUBORDINATE_IDS, name])
    except SlotError:
        if need_group:
            run(["groupdel", name], check=False)
        raise


def ids_in_use() -> tuple[set[int], set[int], list[tuple[int, int]]]:
    """(UIDs of passwd, GIDs of group, subordinate ranges [first, last] of subuid and subgid)."""
    ranges: list[tuple[int, int]] = []
    for path in (Path("/etc/subuid"), Path("/etc/subgid")):
        try:
            for line in path.read_text().splitlines():
                parts = line.split(":")
                if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                    ranges.append((int(parts[1]), int(parts[1]) + int(parts[2]) - 1))
        except OSError:
            pass
    return {p.pw_uid for p in pwd.getpwall()}, {g.gr_gid for g in grp.getgrall()}, ranges


def login_defs_ranges(login_defs: Path = Path("/etc/login.defs")) -> dict[str, tuple[int, int]]:
    """The id ranges shadow-utils allocates from on its own: {"UID": (min, max), "SUB_UID": ...}."""
    values: dict[str, int] = {}
    try:
        for line in login_defs.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                values[parts[0]] = int(parts[1])
    except OSError:
        pass
    defaults = {"UID": (1000, 60000), "GID": (1000, 60000), "SUB_UID": (100000, 600100000),
                "SUB_GID": (100000, 600100000)}
    return {k: (values.get(f"{k}_MIN", lo), values.get(f"{k}_MAX", hi)) for k, (lo, hi) in defaults.items()}


def check_slot_range(lowest: int, highest: int, login_defs: Path = Path("/etc/login.defs")) -> None:
    """Refuse a slot id range that overlaps a range shadow-utils hands out by itself.

    useradd would give our retired ids to the next human user, and a subordinate range would
    let its owner map them in a user namespace.

    >>> import tempfile
    >>> defs = Path(tempfile.mkdtemp()) / "login.defs"
    >>> _ = defs.write_text("UID_MIN 1000\\nUID_MAX 60000\\n")
    >>> try:
    ...     check_slot_range(50000, 70000, defs)
    ... except ConfigError as exc:
    ...     print(exc)
    slots.uid_min: the slot id range 50000-70000 overlaps UID_MIN..UID_MAX 1000-60000 of login.defs
    """
    for key, (lo, hi) in login_defs_ranges(login_defs).items():
        if lowest <= hi and lo <= highest:
            raise ConfigError(f"slots.uid_min: the slot id range {lowest}-{highest} overlaps "
                              f"{key}_MIN..{key}_MAX {lo}-{hi} of login.defs")


def id_taken() -> Callable[[int], bool]:
    """A test for ids already used on this host (passwd, group, subordinate ranges)."""
    uids, gids, ranges = ids_in_use()
    return lambda i: i in uids or i in gids or any(lo <= i <= hi for lo, hi in ranges)


# One lock for every store on this host: between checking that an id is free and useradd
# taking it, no other slotwarden (another state dir, a test's) may take it.
ID_LOCK = Path("/run/lock/slotwarden-ids.lock")


@contextmanager
def host_id_lock(path: Path = ID_LOCK) -> Iterator[None]:
    """Hold the host-wide lock of slot id use (a flock, dropped by the kernel if we die)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def id_free_for(uid: int, name: str) -> bool:
    """True if UID can become NAME's uid and gid: no account, no other group, no subordinate range."""
    uids, _gids, ranges = ids_in_use()
    try:
        group_ok = grp.getgrgid(uid).gr_name == name  # NAME's own group, left by a killed create
    except KeyError:
        group_ok = True
    return uid not in uids and group_ok and not any(lo <= uid <= hi for lo, hi in ranges)


def delete_user(name: str) -> None:
    """Remove NAME and its private group if present (exact name; absent is fine)."""
    if lookup_user(name) is not None:
        run(["userdel", name])
    if group_exists(name):
        run(["groupdel", name])


def lock_and_expire(name: str) -> None:
    """Lock NAME's password and expire the account (day 1): PAM refuses every login, keys too."""
    run(["usermod", "--lock", "--expiredate", "1", name])


def set_password(name: str, password: str) -> None:
    """Set NAME's password through chpasswd, the password on stdin."""
    run(["chpasswd"], stdin=f"{name}:{password}\n")


def pids_of(uid: int) -> list[int]:
    """PIDs whose real UID is UID (read from /proc; root sees all even with hidepid)."""
    return [pid for pid, _uid in pids_of_uids({uid})]


def pids_of_uids(uids: set[int]) -> list[tuple[int, int]]:
    """(pid, uid) of every process whose real UID is in UIDS (one scan of /proc)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Uid:"):
                        owner = int(line.split()[1])
                        if owner in uids:
                            found.append((int(entry.name), owner))
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


def stop_processes_of(uids: set[int], timeout: float = 10.0) -> set[int]:
    """SIGKILL every process of UIDS until none is left (one /proc scan a round for all).

    Returns the UIDs whose processes still survive after TIMEOUT (empty: all gone).
    """
    if 0 in uids:
        raise SlotError("refusing to stop the processes of uid 0")
    deadline = time.monotonic() + timeout
    while True:
        found = pids_of_uids(uids)
        if not found:
            return set()
        if time.monotonic() > deadline:
            return {uid for _pid, uid in found}
        for pid, _uid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
