"""The account files (passwd, shadow, group, gshadow, subuid, subgid), edited many names at once.

``userdel`` and ``usermod`` rewrite every account file once per name; removing 1,000 slots that
way is 2,000 rewrites. Here one rewrite per file serves a whole batch, under the same locks
shadow-utils takes (glibc's ``lckpwdf`` and the ``FILE.lock`` link files), so a concurrent
``useradd`` waits for us or we for it, and no change is ever lost. Each file is written to a
temporary file in ``/etc``, synced, given the old file's owner and mode, and renamed over it;
the old version stays as ``FILE-``, as shadow-utils keeps it.

>>> _drop_subordinate(["alice:100000:65536", "bob:165536:65536"], {"alice"})
['bob:165536:65536']
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from provisioner.errors import SlotError

ETC = Path("/etc")
Edit = Callable[[list[str]], list[str]]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


@contextmanager
def _lock_file(path: Path, attempts: int = 150) -> Iterator[None]:
    """shadow-utils' lock of PATH: ``PATH.PID`` holding our pid, hard-linked to ``PATH.lock``."""
    pid = os.getpid()
    mine = path.with_name(f"{path.name}.{pid}")
    lock = path.with_name(f"{path.name}.lock")
    fd = os.open(mine, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, str(pid).encode())
    finally:
        os.close(fd)
    try:
        for _ in range(attempts):
            try:
                os.link(mine, lock)
                break
            except FileExistsError:
                if _holder_is_gone(lock):
                    lock.unlink(missing_ok=True)
                    continue
                time.sleep(0.02)
        else:
            raise SlotError(f"{lock} is held by another process; try again later")
    finally:
        mine.unlink(missing_ok=True)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _holder_is_gone(lock: Path) -> bool:
    try:
        text = lock.read_bytes().split(b"\0", 1)[0].strip()
        os.kill(int(text), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError):
        return False
    return False


@contextmanager
def locked(paths: list[Path], system: bool = True) -> Iterator[None]:
    """Hold ``lckpwdf`` (when SYSTEM: the files are this host's) and the lock of every file in PATHS."""
    if not system:
        with ExitStack() as stack:
            for p in paths:
                stack.enter_context(_lock_file(p))
            yield
        return
    libc = _libc()
    if libc.lckpwdf() != 0:
        raise SlotError(f"cannot lock the account files: {os.strerror(ctypes.get_errno() or errno.EAGAIN)}")
    try:
        with ExitStack() as stack:
            for p in paths:
                stack.enter_context(_lock_file(p))
            yield
    finally:
        libc.ulckpwdf()


def _rewrite(path: Path, edit: Edit) -> None:
    """Replace PATH by EDIT(its lines); unchanged content is not written at all."""
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    new = edit(lines)
    if new == lines:
        return
    st = path.stat()
    _replace(path.with_name(path.name + "-"), text.encode(), st)  # the old version, as shadow-utils keeps it
    _replace(path, ("\n".join(new) + "\n").encode() if new else b"", st)


def _replace(path: Path, data: bytes, like: os.stat_result) -> None:
    """Atomically make PATH hold DATA with LIKE's owner and mode, never readable by others meanwhile."""
    tmp = path.with_name(f"{path.name}+slotwarden.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchown(fd, like.st_uid, like.st_gid)
        os.fchmod(fd, like.st_mode & 0o7777)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)


def edit_files(edits: dict[str, Edit], etc: Path = ETC) -> None:
    """Apply EDITS (file name in ETC -> edit of its lines) under the account-file locks."""
    paths = [etc / name for name in edits]
    with locked([p for p in paths if p.exists()], system=etc == ETC):
        for name, edit in edits.items():
            _rewrite(etc / name, edit)


def _name(line: str) -> str:
    return line.split(":", 1)[0]


def _drop_subordinate(lines: list[str], names: set[str]) -> list[str]:
    return [ln for ln in lines if _name(ln) not in names]


def _drop_groups(lines: list[str], names: set[str], member_field: int) -> list[str]:
    """Drop the groups called NAMES and NAMES from every other group's member list."""
    out = []
    for ln in lines:
        fields = ln.split(":")
        if fields[0] in names:
            continue
        if len(fields) > member_field and fields[member_field]:
            members = fields[member_field].split(",")
            kept = [m for m in members if m not in names]
            if kept != members:
                fields[member_field] = ",".join(kept)
                ln = ":".join(fields)
        out.append(ln)
    return out


def _drop_admins(lines: list[str], names: set[str]) -> list[str]:
    """gshadow: NAMES out of the groups and out of the administrator lists (field 2)."""
    return [":".join([*f[:2], ",".join(a for a in f[2].split(",") if a not in names), *f[3:]])
            if len(f) > 3 and f[2] else ln
            for ln in _drop_groups(lines, names, 3) for f in [ln.split(":")]]


def drop_subordinate_ids(names: list[str], etc: Path = ETC) -> None:
    """Take away the subordinate UID/GID ranges of NAMES (``newusers`` hands every user one).

    A slot must not own ids beyond its own: a range is handed to the next user once its owner
    is gone, and with it whatever the old owner's namespaces left on disk.
    """
    wanted = set(names)
    edit: Edit = lambda lines: _drop_subordinate(lines, wanted)  # noqa: E731
    edit_files({"subuid": edit, "subgid": edit}, etc)


def lock_and_expire(names: list[str], etc: Path = ETC) -> None:
    """Lock the passwords of NAMES and expire their accounts (day 1): no login of any kind."""
    wanted = set(names)

    def edit(lines: list[str]) -> list[str]:
        out = []
        for ln in lines:
            f = ln.split(":")
            if f[0] in wanted and len(f) >= 9:
                if not f[1].startswith("!"):
                    f[1] = "!" + f[1]
                f[7] = "1"
                ln = ":".join(f)
            out.append(ln)
        return out

    edit_files({"shadow": edit}, etc)


def remove_accounts(names: list[str], etc: Path = ETC) -> None:
    """Delete the users NAMES, their private groups, memberships and subordinate ids at once."""
    wanted = set(names)
    edit_files({
        "passwd": lambda lines: [ln for ln in lines if _name(ln) not in wanted],
        "shadow": lambda lines: [ln for ln in lines if _name(ln) not in wanted],
        "group": lambda lines: _drop_groups(lines, wanted, 3),
        "gshadow": lambda lines: _drop_admins(lines, wanted),
        "subuid": lambda lines: _drop_subordinate(lines, wanted),
        "subgid": lambda lines: _drop_subordinate(lines, wanted),
    }, etc)
