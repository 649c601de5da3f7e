"""Files that root writes into a tenant's home, safely: no symlink in the path is ever followed.

The home belongs to the tenant, who may plant a symlink (``~/apps -> /etc``) to make root write
somewhere else. Every operation here walks the path one component at a time with
``O_NOFOLLOW | O_DIRECTORY`` relative to the previous directory's descriptor, creates what is
missing owned by the slot user, and writes files through a temporary name in the final
directory, ``fchown``/``fchmod`` before the rename.

>>> rel_parts("apps/demo/config.json")
['apps', 'demo', 'config.json']
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from provisioner.errors import SlotError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def rel_parts(rel: str) -> list[str]:
    """The components of a relative path, refusing absolute paths and ``..``."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if rel.startswith("/") or not parts or ".." in parts:
        raise SlotError(f"path {rel!r} must be relative, inside the home")
    return parts


@contextlib.contextmanager
def _open_dir(home: Path, parts: list[str], uid: int, gid: int, create: bool) -> Iterator[int]:
    """A descriptor of HOME/PARTS, each component opened without following symlinks."""
    fd = os.open(home, _DIR_FLAGS)
    try:
        for part in parts:
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o700, dir_fd=fd)
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.fchown(nfd, uid, gid)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise SlotError(f"{home}/{'/'.join(parts)}: {part} is not a directory (symlink?); "
                                    "refusing to follow it") from None
                raise
            os.close(fd)
            fd = nfd
        yield fd
    finally:
        os.close(fd)


def make_dirs(home: Path, rel: str, uid: int, gid: int, mode: int = 0o700) -> Path:
    """Create HOME/REL (and parents) owned by UID:GID; returns the path."""
    with _open_dir(home, rel_parts(rel), uid, gid, create=True) as fd:
        os.fchmod(fd, mode)
    return home / rel


def write_file(home: Path, rel: str, data: str | bytes, uid: int, gid: int, mode: int = 0o600) -> Path:
    """Atomically write HOME/REL, owned by UID:GID with MODE (parents created 0700)."""
    parts = rel_parts(rel)
    raw = data.encode() if isinstance(data, str) else data
    with _open_dir(home, parts[:-1], uid, gid, create=True) as dfd:
        tmp = f".{parts[-1]}.{secrets.token_hex(6)}.tmp"
        ffd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        try:
            os.fchown(ffd, uid, gid)
            os.fchmod(ffd, mode)
            view = memoryview(raw)
            while view:
                view = view[os.write(ffd, view):]
            os.fsync(ffd)
        except BaseException:
            os.close(ffd)
            os.unlink(tmp, dir_fd=dfd)
            raise
        os.close(ffd)
        os.rename(tmp, parts[-1], src_dir_fd=dfd, dst_dir_fd=dfd)
    return home / rel


def read_file(home: Path, rel: str) -> str | None:
    """The text of HOME/REL, or None when it is absent (symlinks are not followed)."""
    parts = rel_parts(rel)
    try:
        with _open_dir(home, parts[:-1], 0, 0, create=False) as dfd:
            ffd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            with os.fdopen(ffd, encoding="utf-8") as f:
                return f.read()
    except (FileNotFoundError, SlotError):
        return None


def symlink(home: Path, rel: str, target: str, uid: int, gid: int) -> None:
    """Make HOME/REL a symlink to TARGET (replacing an old link), owned by UID:GID."""
    parts = rel_parts(rel)
    with _open_dir(home, parts[:-1], uid, gid, create=True) as dfd:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(parts[-1], dir_fd=dfd)
        os.symlink(target, parts[-1], dir_fd=dfd)
        os.chown(parts[-1], uid, gid, dir_fd=dfd, follow_symlinks=False)


def remove_tree(home: Path, rel: str) -> None:
    """Remove HOME/REL whatever it is (file, link, tree); absent is fine. Never follows links.

    A path that runs through a symlink the tenant planted is treated as absent: nothing of ours
    is there, and nothing outside the home is touched.
    """
    parts = rel_parts(rel)
    try:
        with _open_dir(home, parts[:-1], 0, 0, create=False) as dfd:
            try:
                st = os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                return
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(parts[-1], dir_fd=dfd)  # fd-based on Linux: links are removed, not followed
            else:
                os.unlink(parts[-1], dir_fd=dfd)
    except (FileNotFoundError, SlotError):
        return


def remove_empty_dir(home: Path, rel: str) -> None:
    """Remove HOME/REL if it is an empty directory."""
    parts = rel_parts(rel)
    try:
        with _open_dir(home, parts[:-1], 0, 0, create=False) as dfd:
            os.rmdir(parts[-1], dir_fd=dfd)
    except (FileNotFoundError, SlotError):
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.ENOTDIR):
            raise
