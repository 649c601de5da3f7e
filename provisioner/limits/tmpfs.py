"""A slot's /tmp of the size its plan sells: one tmpfs per slot, mounted by root outside the home.

A plan's ``tmp_size`` gives the slot a tmpfs of that size at ``<state_dir>/slot-tmp/UID``
(``state_dir`` root-only, ``slot-tmp`` root's 0700: no tenant reaches another slot's tmpfs, nor
its own by this path), mounted ``size=N,mode=0711,uid=0,gid=0,nosuid,nodev`` and holding the two
instances ``tmp`` and ``var-tmp`` (root's, 1777). ``pam_slotwarden_session.so`` (``tmpfs_root=``)
and ``slotwarden-confine`` (``--tmpfs-root``) bind them over /tmp and /var/tmp of each session and
app of the slot instead of ``~/.slot-tmp`` (``pam_hooks/c/slot_tmp.h``). The kernel refuses a
write past the size with ENOSPC; the home's quota is not touched. tmpfs pages are charged to the
memory cgroup of the process that writes them, so /tmp also counts against the slot's
``memory_max`` (and ``swap_max`` when they are swapped out).

The mount point directory stays on disk while the slot has a tmp_size: it tells the session
module and the wrapper that this slot must get a tmpfs, so after a reboot (the mount gone, the
directory still there) the slot's logins and apps are refused until ``slotctl host init``
remounts it, rather than run on the home's /tmp.

>>> tmpfs_options(8 << 20)
'size=8388608,nr_inodes=3072,mode=0711,uid=0,gid=0,nosuid,nodev'
>>> page_rounded(1)
4096
"""

from __future__ import annotations

import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from provisioner.limits.enforcement import LimitsError
from provisioner.metrics.kernel import tmpfs_use
from provisioner.runner import run

INSTANCES = ("tmp", "var-tmp")
PAGE = os.sysconf("SC_PAGE_SIZE")


def page_rounded(size: int) -> int:
    """SIZE as the kernel keeps a tmpfs size: rounded up to whole pages."""
    return -(-size // PAGE) * PAGE


def inode_cap(size: int) -> int:
    """The files and directories a slot's tmpfs of SIZE may hold.

    ``size=`` caps only the pages of data: empty files, directories and symlinks take none, and
    tmpfs's default inode count is half the host's RAM pages, each inode costing kernel memory
    outside the slot's cgroup. A file with data takes at least a page, so SIZE / page of them fit
    anyway; 1024 more are for the empty ones.
    """
    return size // PAGE + 1024


def tmpfs_options(size: int) -> str:
    """The mount options of a slot's tmpfs of SIZE bytes."""
    return f"size={size},nr_inodes={inode_cap(size)},mode=0711,uid=0,gid=0,nosuid,nodev"


@dataclass(frozen=True)
class TmpUse:
    """A mounted slot tmpfs: its size and data stored (bytes), its inode cap and inodes in use."""

    size: int
    used: int
    inodes: int
    inodes_used: int


class SlotTmpfs:
    """The slots' tmpfs under ROOT (``<state_dir>/slot-tmp``). Every method is idempotent."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, uid: int) -> Path:
        if uid <= 0:
            raise LimitsError("tmp_size: the slot's user does not exist yet")
        return self.root / str(uid)

    def expected(self, uid: int) -> bool:
        """The slot was sold a /tmp size here (its mount point directory exists)."""
        try:
            return stat.S_ISDIR(os.lstat(self.path(uid)).st_mode)
        except FileNotFoundError:
            return False

    def use(self, uid: int, mountinfo: str | None = None) -> TmpUse | None:
        """Size and use of the slot's tmpfs, None when none is mounted (MOUNTINFO: see tmpfs_use)."""
        path = str(self.path(uid))
        figures = tmpfs_use(path, mountinfo)
        if figures is None:
            return None
        st = os.statvfs(path)
        return TmpUse(*figures, st.f_files, st.f_files - st.f_ffree)

    def _root_dir(self) -> None:
        # Root's 0700, never a symlink: the mount point below must not be a path a tenant steers.
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(self.root)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
            raise LimitsError(f"tmp_size: {self.root} is not a directory of root's")
        os.chmod(self.root, 0o700)

    def apply(self, size: int | None, uid: int, username: str) -> None:
        """Give UID a tmpfs of SIZE (remounted if it has one), or (SIZE None) none at all.

        Refuses (nothing changed) to shrink it below what is stored in it now.
        """
        if size is None:
            self.clear(uid)
            return
        self._root_dir()
        path = self.path(uid)
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            if path.is_symlink() or not path.is_dir():
                raise LimitsError(f"tmp_size: {path} is not a directory") from None
        now = self.use(uid)
        if now is None:
            run(["mount", "-t", "tmpfs", "-o", tmpfs_options(size), f"slot-tmp-{username}", str(path)])
        elif (now.size, now.inodes) != (page_rounded(size), inode_cap(size)):
            refusal = shrink_refusal(username, now, size)
            if refusal:
                raise LimitsError(refusal)
            run(["mount", "-o", f"remount,size={size},nr_inodes={inode_cap(size)}", str(path)])
        for name in INSTANCES:
            inst = path / name
            try:
                inst.mkdir()
            except FileExistsError:
                pass
            st = os.lstat(inst)
            if not stat.S_ISDIR(st.st_mode):
                raise LimitsError(f"tmp_size: {inst} is not a directory")
            os.chown(inst, 0, 0, follow_symlinks=False)
            os.chmod(inst, 0o1777)  # noqa: S103 - what /tmp is; the tmpfs root above is root's 0711

    def clear(self, uid: int) -> None:
        """Unmount UID's tmpfs (its contents are gone) and remove its mount point: no trace left."""
        path = self.path(uid)
        while tmpfs_use(str(path)) is not None:
            r = subprocess.run(["umount", str(path)], capture_output=True, text=True, check=False)
            if r.returncode != 0:
                # Busy (a process of root's still in it): detach it; the kernel frees it after.
                run(["umount", "--lazy", str(path)])
        try:
            path.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise LimitsError(f"tmp_size: cannot remove {path}: {exc.strerror}") from None


def shrink_refusal(username: str, now: TmpUse, size: int) -> str | None:
    """The one line refusing a /tmp smaller than what the slot keeps in it (None: it fits)."""
    if now.used > size:
        return (f"tmp_size: {username} keeps {now.used} bytes in /tmp and /var/tmp, more than the new size "
                f"{size}; it must remove files first")
    if now.inodes_used > inode_cap(size):
        return (f"tmp_size: {username} keeps {now.inodes_used} files in /tmp and /var/tmp, more than the "
                f"{inode_cap(size)} a size of {size} holds; it must remove files first")
    return None
