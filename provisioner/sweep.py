"""The removal sweep: everything a slot's UID owns outside its home, found and removed.

Run after the account is locked and every process of the UID is gone, so the tenant cannot
act any more; other tenants still can (swap symlinks in a shared tmp dir), which is why every
removal here goes through directory descriptors: entries are looked up with ``lstat`` relative
to an open directory, directories are opened ``O_NOFOLLOW`` and checked to be what was looked
at, other filesystems are never entered, and a tree goes with ``shutil.rmtree(dir_fd=...)``
(its symlink-attack-safe, descriptor-based walk).

What it sweeps, for a set of UIDs at once (``slot remove-many`` pays for one walk):

- every directory a tenant could write to on every local writable filesystem except the slots
  root: world-writable ones (``/tmp``, ``/var/tmp``, ``/dev/shm``, ``/run/lock`` …) and those
  owned by (or group-writable for) one of the UIDs (``/run/user/UID``), found by one walk of
  the directories of each filesystem, then searched for entries owned by the UIDs;
- the spools where daemons file things in a user's name: cron and at, mail;
- SysV shared memory, message queues and semaphores created by or owned by the UIDs;
- POSIX message queues (an ``mqueue`` filesystem is mounted privately if none is);
- systemd user state: the linger file, and ``loginctl terminate-user`` where systemd runs.

>>> Swept(uid=70000).as_dict()["paths"]
[]
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner.runner import run

# Filesystems that hold files a tenant could have made; everything else (proc, sysfs, cgroup,
# network filesystems …) is left alone.
LOCAL_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "jfs", "reiserfs",
                               "zfs", "devtmpfs", "ramfs", "hugetlbfs", "bcachefs"})
# Where daemons keep a user's things in directories the user cannot write to itself.
SPOOLS = (Path("/var/spool/cron/crontabs"), Path("/var/spool/cron/atjobs"), Path("/var/spool/cron/atspool"),
          Path("/var/mail"), Path("/var/spool/mail"))
LINGER_DIR = Path("/var/lib/systemd/linger")
# At most this many removed paths are listed per UID (the count is always exact).
REPORT_LIMIT = 200


def shown(name: str) -> str:
    r"""NAME (a path or queue name a tenant chose) as printable text: never a control character.

    Undecodable bytes and non-printable characters become backslash escapes, so a reported
    path cannot move the operator's cursor or colour the terminal.

    >>> shown("/tmp/\x1b[31mred\udcff")
    '/tmp/\\x1b[31mred\\xff'
    """
    text = os.fsencode(name).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


@dataclass
class Swept:
    """What the sweep removed for one UID."""

    uid: int
    paths: list[str] = field(default_factory=list)
    removed_paths: int = 0
    ipc: list[str] = field(default_factory=list)
    mqueues: list[str] = field(default_factory=list)
    systemd: list[str] = field(default_factory=list)

    def add_path(self, path: str) -> None:
        self.removed_paths += 1
        if len(self.paths) < REPORT_LIMIT:
            self.paths.append(shown(path))

    def as_dict(self) -> dict[str, Any]:
        return {"uid": self.uid, "paths": list(self.paths), "removed_paths": self.removed_paths,
                "ipc": list(self.ipc), "mqueues": list(self.mqueues), "systemd": list(self.systemd)}


def local_mounts(exclude: Iterable[Path]) -> list[tuple[str, int]]:
    """(mount point, st_dev) of every local writable filesystem, minus those at or under EXCLUDE."""
    skip = [str(p) for p in exclude]
    out: dict[int, str] = {}
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[2] not in LOCAL_FILESYSTEMS or "ro" in parts[3].split(","):
            continue
        mnt = parts[1].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        if any(mnt == s or mnt.startswith(s.rstrip("/") + "/") for s in skip):
            continue
        try:
            dev = os.stat(mnt).st_dev
        except OSError:
            continue
        out.setdefault(dev, mnt)  # a filesystem mounted twice is walked once
    return sorted((m, d) for d, m in out.items())


def _open_dir(name: str, dir_fd: int | None, dev: int) -> int | None:
    """Open directory NAME (relative to DIR_FD) without following a link, on filesystem DEV only."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    if os.fstat(fd).st_dev != dev:
        os.close(fd)
        return None
    return fd


def _writable_places(mount: str, dev: int, tenant: Callable[[int], bool],
                     exclude_devs: set[int], exclude_inodes: set[tuple[int, int]]) -> list[str]:
    """Directories under MOUNT a tenant could have written to (one walk of its directories).

    World-writable ones, and those owned by (or group-writable for) an id TENANT says is a slot's.

    Files are not looked at here: only directories, which are few. A place found is not
    descended into; the sweep searches it whole.
    """
    found: list[str] = []
    stack = [mount]
    while stack:
        path = stack.pop()
        fd = _open_dir(path, None, dev)
        if fd is None:
            continue
        try:
            with os.scandir(fd) as it:
                entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
            for name, is_dir in entries:
                if not is_dir:
                    continue
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue
                if st.st_dev != dev or st.st_dev in exclude_devs or (st.st_dev, st.st_ino) in exclude_inodes:
                    continue
                full = os.path.join(path, name)
                mode = st.st_mode
                if mode & stat.S_IWOTH or tenant(st.st_uid) or (mode & stat.S_IWGRP and tenant(st.st_gid)):
                    found.append(full)
                else:
                    stack.append(full)
        finally:
            os.close(fd)
    return found


def _sweep_dir(fd: int, path: str, dev: int, by_uid: dict[int, Swept], skip: set[tuple[int, int]],
               depth: int = 0) -> None:
    """Remove every entry under the open directory FD owned by one of the UIDs of BY_UID.

    Directories in SKIP ((st_dev, st_ino) of the slots root) are neither searched nor removed.
    """
    if depth > 64:
        return
    try:
        with os.scandir(fd) as it:
            names = [e.name for e in it]
    except OSError:
        return
    for name in names:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            continue
        full = os.path.join(path, name)
        if (st.st_dev, st.st_ino) in skip:
            continue
        owner = by_uid.get(st.st_uid)
        if owner is not None:
            try:
                if stat.S_ISDIR(st.st_mode):
                    if st.st_dev != dev:
                        continue  # a mount point: never cross into another filesystem
                    shutil.rmtree(name, dir_fd=fd)
                else:
                    os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                continue
            except OSError:
                continue
            owner.add_path(full)
        elif stat.S_ISDIR(st.st_mode) and st.st_dev == dev:
            sub = _open_dir(name, fd, dev)
            if sub is None:
                continue
            try:
                got = os.fstat(sub)
                if (got.st_dev, got.st_ino) == (st.st_dev, st.st_ino):  # not swapped meanwhile
                    _sweep_dir(sub, full, dev, by_uid, skip, depth + 1)
            finally:
                os.close(sub)


def open_path(path: str) -> int | None:
    """Open directory PATH from ``/`` one component at a time, following no link on the way.

    A tenant that swaps a directory of the path for a symlink (between the walk that found the
    place and now) gets None, never a descriptor somewhere else.
    """
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    for part in [p for p in path.split("/") if p]:
        if part in (".", ".."):
            os.close(fd)
            return None
        try:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError:
            os.close(fd)
            return None
        os.close(fd)
        fd = nxt
    return fd


def _sweep_place(path: str, by_uid: dict[int, Swept], skip: set[tuple[int, int]]) -> None:
    """Sweep PATH: removed whole if one of the UIDs owns it, else searched.

    >>> _sweep_place("/nonexistent/place", {}, set())
    """
    parent, name = os.path.split(path.rstrip("/"))
    if not name:
        return
    pfd = open_path(parent)
    if pfd is None:
        return
    try:
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) in skip:
            return
        owner = by_uid.get(st.st_uid)
        if owner is not None and st.st_dev == os.fstat(pfd).st_dev:
            shutil.rmtree(name, dir_fd=pfd)
            owner.add_path(path)
            return
        # Not the UIDs' own, or a filesystem mounted there (systemd's /run/user/UID tmpfs):
        # what is inside is searched.
        fd = _open_dir(name, pfd, st.st_dev)
        if fd is None:
            return
        try:
            got = os.fstat(fd)
            if (got.st_dev, got.st_ino) == (st.st_dev, st.st_ino):
                _sweep_dir(fd, path, st.st_dev, by_uid, skip)
        finally:
            os.close(fd)
    except OSError:
        return
    finally:
        os.close(pfd)


@dataclass(frozen=True)
class SweepScope:
    """Where a sweep looks: everything local but EXCLUDE (the slots root).

    Directories owned by an id of ID_RANGE (a slot's) count as tenant-writable places. The
    places one walk finds are kept in CACHE and reused for MAX_AGE seconds (0: always walk);
    ``/run/user/UID`` and the spools are searched every time regardless.
    """

    exclude: tuple[Path, ...]
    id_range: tuple[int, int] = (65536, 99999)
    cache: Path | None = None
    max_age: float = 0.0


# A single `slot remove` reuses the places found within the last hour (a walk of / costs
# 0.5-4 s here); `slot remove-many` always walks once for its whole batch.
PLACES_MAX_AGE = 3600.0


def _excluded(exclude: Iterable[Path]) -> tuple[set[int], set[tuple[int, int]]]:
    devs: set[int] = set()
    inodes: set[tuple[int, int]] = set()
    for p in exclude:
        try:
            st = os.stat(p)
        except OSError:
            continue
        inodes.add((st.st_dev, st.st_ino))
        if os.path.ismount(p):
            devs.add(st.st_dev)
    return devs, inodes


def walk_places(scope: SweepScope, uids: set[int]) -> list[str]:
    """Every tenant-writable directory of the local writable filesystems (one walk of each)."""
    lo, hi = scope.id_range
    exclude_devs, exclude_inodes = _excluded(scope.exclude)

    def tenant(i: int) -> bool:
        return lo <= i <= hi or i in uids

    places: list[str] = []
    for mount, dev in local_mounts(scope.exclude):
        if dev in exclude_devs:
            continue
        try:
            mst = os.stat(mount)
        except OSError:
            continue
        if mst.st_mode & stat.S_IWOTH or tenant(mst.st_uid):
            places.append(mount)  # e.g. /dev/shm or /tmp as its own tmpfs
        else:
            places += _writable_places(mount, dev, tenant, exclude_devs, exclude_inodes)
    return places


def find_places(scope: SweepScope, uids: set[int]) -> list[str]:
    """The tenant-writable places: from the cache while it is fresh, else walked (and cached)."""
    key = [str(p) for p in scope.exclude] + [str(i) for i in scope.id_range]
    if scope.cache is not None and scope.max_age > 0:
        try:
            st = os.stat(scope.cache, follow_symlinks=False)
            cached = json.loads(scope.cache.read_text())
            if (stat.S_ISREG(st.st_mode) and st.st_uid == 0 and time.time() - cached["at"] < scope.max_age
                    and cached["key"] == key and all(isinstance(p, str) for p in cached["places"])):
                return list(cached["places"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    places = walk_places(scope, uids)
    if scope.cache is not None:
        # A temporary file of its own (O_EXCL, 0600): removals running side by side (the API's
        # threads) each write theirs and the last rename wins; a shared name made one fail.
        fd, tmp = tempfile.mkstemp(prefix=f".{scope.cache.name}.", suffix=".tmp", dir=scope.cache.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"at": time.time(), "key": key, "places": places}, f)
            os.replace(tmp, scope.cache)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return places


def sweep_files(uids: dict[int, str], scope: SweepScope) -> dict[int, Swept]:
    """Remove what UIDS (uid -> username) own on the local filesystems outside the scope's EXCLUDE."""
    by_uid = {uid: Swept(uid) for uid in uids}
    _devs, exclude_inodes = _excluded(scope.exclude)
    places = find_places(scope, set(uids))
    places += [f"/run/user/{uid}" for uid in uids]
    places += [str(p) for p in SPOOLS if p.is_dir()]
    for place in dict.fromkeys(places):
        _sweep_place(place, by_uid, exclude_inodes)
    return by_uid


# --- IPC ----------------------------------------------------------------------------------------

_IPC_KINDS = {"shm": ("shmid", "-m"), "msg": ("msqid", "-q"), "sem": ("semid", "-s")}


def sysv_objects(uids: set[int], proc: Path = Path("/proc/sysvipc")) -> list[tuple[str, int, int]]:
    """(kind, id, owner uid) of every SysV IPC object created or owned by one of UIDS.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "shm").write_text("key shmid perms size cpid lpid nattch uid gid cuid cgid\\n"
    ...                            "0 7 600 4096 1 1 0 70001 70001 70001 70001\\n"
    ...                            "0 8 600 4096 1 1 0 1000 1000 1000 1000\\n")
    >>> sysv_objects({70001}, d)
    [('shm', 7, 70001)]
    """
    out = []
    for kind, (id_col, _flag) in _IPC_KINDS.items():
        try:
            lines = (proc / kind).read_text().splitlines()
        except OSError:
            continue
        if not lines:
            continue
        header = lines[0].split()
        try:
            i_id, i_uid, i_cuid = header.index(id_col), header.index("uid"), header.index("cuid")
        except ValueError:
            continue
        for line in lines[1:]:
            cols = line.split()
            if len(cols) < len(header):
                continue
            try:
                ident, owners = int(cols[i_id]), (int(cols[i_uid]), int(cols[i_cuid]))
            except ValueError:
                continue
            owner = next((o for o in owners if o in uids), None)
            if owner is not None:
                out.append((kind, ident, owner))
    return out


def sweep_ipc(by_uid: dict[int, Swept]) -> None:
    """Remove the SysV IPC objects of the UIDs (one ``ipcrm`` for all of them)."""
    found = sysv_objects(set(by_uid))
    if not found:
        return
    argv = ["ipcrm"]
    for kind, ident, _uid in found:
        argv += [_IPC_KINDS[kind][1], str(ident)]
    run(argv, check=False)  # an object gone meanwhile is fine
    for kind, ident, uid in found:
        by_uid[uid].ipc.append(f"{kind} {ident}")


MQUEUE_PREFIX = "slotwarden-mqueue-"


def _mqueue_mount(mounts: str | None = None) -> str | None:
    """Where mqueue is mounted, not counting another sweep's private mount (it goes away under us).

    >>> _mqueue_mount("mqueue /tmp/slotwarden-mqueue-x1 mqueue rw 0 0\\nmqueue /dev/mqueue mqueue rw 0 0\\n")
    '/dev/mqueue'
    >>> _mqueue_mount("mqueue /tmp/slotwarden-mqueue-x1 mqueue rw 0 0\\n") is None
    True
    """
    text = Path("/proc/self/mounts").read_text() if mounts is None else mounts
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "mqueue" and not Path(parts[1]).name.startswith(MQUEUE_PREFIX):
            return parts[1]
    return None


def sweep_mqueues(by_uid: dict[int, Swept]) -> None:
    """Unlink the POSIX message queues owned by the UIDs (mounting mqueue privately if needed)."""
    mnt = _mqueue_mount()
    private = None
    if mnt is None:
        private = tempfile.mkdtemp(prefix=MQUEUE_PREFIX)
        if run(["mount", "-t", "mqueue", "-o", "nosuid,nodev,noexec", "mqueue", private], check=False).returncode:
            os.rmdir(private)
            return
        mnt = private
    try:
        fd = _open_dir(mnt, None, os.stat(mnt).st_dev)
        if fd is None:
            return
        try:
            for name in os.listdir(fd):
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue
                owner = by_uid.get(st.st_uid)
                if owner is not None:
                    try:
                        os.unlink(name, dir_fd=fd)
                        owner.mqueues.append(shown(name))
                    except OSError:
                        pass
        finally:
            os.close(fd)
    finally:
        if private is not None:
            # Lazily: a concurrent reader of /proc/self/mounts may hold it open for a moment.
            run(["umount", "--lazy", private], check=False)
            os.rmdir(private)


def sweep_systemd(by_uid: dict[int, Swept], names: dict[int, str]) -> None:
    """End the UIDs' systemd user sessions and managers and drop their linger files."""
    systemd = Path("/run/systemd/system").is_dir()
    for uid, swept in by_uid.items():
        name = names[uid]
        linger = LINGER_DIR / name
        if linger.is_file() and not linger.is_symlink():
            linger.unlink()
            swept.systemd.append(f"linger {name}")
        if systemd and run(["loginctl", "terminate-user", str(uid)], check=False).returncode == 0:
            swept.systemd.append(f"terminate-user {uid}")


def sweep(uids: dict[int, str], scope: SweepScope) -> dict[int, Swept]:
    """The whole sweep for UIDS (uid -> username) within SCOPE."""
    by_uid = {uid: Swept(uid) for uid in uids}
    sweep_systemd(by_uid, uids)  # first: logind then unmounts /run/user/UID itself
    for uid, found in sweep_files(uids, scope).items():
        found.systemd = by_uid[uid].systemd
        by_uid[uid] = found
    sweep_ipc(by_uid)
    sweep_mqueues(by_uid)
    return by_uid
