"""Idmapped mounts: a view of one directory in which one user's files belong to another.

A support grant shows a slot's home to one staff account: the home's tree is cloned
(``open_tree``), given an ID mapping that makes the tenant's UID/GID appear as the staff's
(``mount_setattr`` with ``MOUNT_ATTR_IDMAP``, read-only unless write was approved, always
``nosuid,nodev``) and attached below a directory only that staff account can enter
(``move_mount`` onto a descriptor, never a path a user could swap). Linux ≥ 5.12 (ext4, xfs;
btrfs from 5.15); Debian 12's 6.1 has all three system calls, driven here through ``ctypes``.

Nothing else is widened: files of other owners appear as the overflow UID (``nobody``), and a
symlink the tenant planted is resolved with the staff's own credentials, outside the mapping,
so ``~/x -> /etc/shadow`` shows the staff exactly what the staff could read anyway.

Revoking unmounts the view after killing the staff's processes that still pin it (a shell whose
working directory is inside would otherwise keep reading a lazily detached mount).

>>> id_map(1001, 2002)
'1001 2002 1\\n'
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import time
from pathlib import Path

from provisioner.errors import SlotError

# The new mount API's numbers are the same on every architecture (they came after the 424 unification).
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
MOUNT_ATTR_IDMAP = 0x100000
MOVE_MOUNT_F_EMPTY_PATH, MOVE_MOUNT_T_EMPTY_PATH = 0x4, 0x40
CLONE_NEWUSER = 0x10000000
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

_libc = ctypes.CDLL(None, use_errno=True)


class MountError(SlotError):
    """The kernel refused to make or remove an idmapped view."""


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def id_map(inside: int, outside: int) -> str:
    """One line of ``uid_map``/``gid_map``: INSIDE (the on-disk owner) shows as OUTSIDE."""
    return f"{inside} {outside} 1\n"


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise MountError(f"{what}: {os.strerror(err)}")
    return ret


def user_namespace(uid_map: str, gid_map: str) -> int:
    """A descriptor of a new user namespace with these maps (a child holds it while we write them)."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only unshares and waits
        try:
            os.close(ready_r)
            os.close(done_w)
            ok = _libc.unshare(CLONE_NEWUSER) == 0
            os.write(ready_w, b"1" if ok else b"0")
            os.read(done_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise MountError("cannot create a user namespace for the ID mapping")
        Path(f"/proc/{pid}/uid_map").write_text(uid_map)
        Path(f"/proc/{pid}/setgroups").write_text("deny")
        Path(f"/proc/{pid}/gid_map").write_text(gid_map)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(done_w)
        os.close(ready_r)
        os.waitpid(pid, 0)


def mount_idmapped(source: Path, target_fd: int, *, uid: tuple[int, int], gid: tuple[int, int],
                   read_only: bool) -> None:
    """Attach SOURCE (not a symlink) on the directory TARGET_FD, owner UID[0]/GID[0] shown as UID[1]/GID[1]."""
    ns = user_namespace(id_map(*uid), id_map(*gid))
    tree = -1
    try:
        tree = _check(_libc.syscall(SYS_OPEN_TREE, AT_FDCWD, os.fsencode(source),
                                    OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_SYMLINK_NOFOLLOW), "open_tree")
        flags = MOUNT_ATTR_IDMAP | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | (MOUNT_ATTR_RDONLY if read_only else 0)
        attr = _MountAttr(flags, 0, 0, ns)
        _check(_libc.syscall(SYS_MOUNT_SETATTR, tree, b"", AT_EMPTY_PATH, ctypes.byref(attr),
                             ctypes.sizeof(attr)), "mount_setattr (idmap)")
        _check(_libc.syscall(SYS_MOVE_MOUNT, tree, b"", target_fd, b"",
                             MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH), "move_mount")
    finally:
        if tree >= 0:
            os.close(tree)
        os.close(ns)


def mount_id(fd: int) -> int:
    """The kernel's mount ID of the object FD refers to (from ``/proc/self/fdinfo``)."""
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("mnt_id:"):
            return int(line.split()[1])
    raise MountError("no mnt_id in fdinfo")  # pragma: no cover - every kernel since 3.15 has it


def _pins(pid: str, mnt: int) -> bool:
    """Whether process PID has its cwd, root or an open file on mount MNT."""
    links = [f"/proc/{pid}/cwd", f"/proc/{pid}/root"]
    with contextlib.suppress(OSError):
        links += [f"/proc/{pid}/fd/{n}" for n in os.listdir(f"/proc/{pid}/fd")]
    for link in links:
        try:
            fd = os.open(link, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if mount_id(fd) == mnt:
                return True
        except (OSError, ValueError):
            pass
        finally:
            os.close(fd)
    return False


def _uid_of(pid: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def pinning_processes(mnt: int, uid: int) -> list[int]:
    """The processes of UID whose cwd, root or open files are on mount MNT."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _uid_of(p) == uid and _pins(p, mnt)]


def is_mount_root(path: Path) -> bool:
    """Whether PATH (not followed) is the root of a mount other than its parent's."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        pfd = os.open(path.parent, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            return mount_id(fd) != mount_id(pfd)
        finally:
            os.close(pfd)
    finally:
        os.close(fd)


def unmount(path: Path, uid: int, timeout: float = 5.0) -> list[int]:
    """Remove the view at PATH: kill UID's processes that pin it, unmount; returns their PIDs.

    Absent is fine. Still busy after TIMEOUT (a process of another user, root's shell): the view
    is detached, so no new path lookup reaches it.
    """
    if not is_mount_root(path):
        return []
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        mnt = mount_id(fd)
    finally:
        os.close(fd)
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while True:
        pids = pinning_processes(mnt, uid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        if _libc.umount2(os.fsencode(path), UMOUNT_NOFOLLOW) == 0:
            return killed
        err = ctypes.get_errno()
        if err != errno.EBUSY:
            raise MountError(f"umount {path}: {os.strerror(err)}")
        if time.monotonic() > deadline:
            _check(_libc.umount2(os.fsencode(path), MNT_DETACH | UMOUNT_NOFOLLOW), f"umount -l {path}")
            return killed
        time.sleep(0.05)
