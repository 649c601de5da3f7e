"""The per-slot lock: changes of one slot run one at a time, across processes and threads.

Every operation of :mod:`provisioner.operations` takes it; nothing else should change a slot.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from provisioner.context import Context
from provisioner.errors import SlotError
from provisioner.names import RESERVED_NAMES, validate_username


def check_name_shape(username: object) -> str:
    """USERNAME if it has the shape of a slot name (BadInput otherwise), reserved names included.

    For operations on a slot that exists (or may not): ``slot remove daemon`` must say there is
    no such slot, not that the name is reserved, and a slot whose name became reserved later
    (a new catalog app) must still be removable.
    """
    if isinstance(username, str) and username in RESERVED_NAMES:
        return username
    return validate_username(username)


_held_locks = threading.local()


@contextmanager
def slot_lock(ctx: Context, username: str) -> Iterator[None]:
    """Hold the slot's lock: changes of one slot run one at a time, across processes and threads.

    A ``flock`` on ``<state_dir>/locks/USERNAME.lock``; the kernel drops it if the holder dies.
    USERNAME must have a slot name's shape (it becomes a file name). Re-entrant within one
    thread (an operation that holds the lock may call another that takes it); other threads
    and processes wait.
    """
    check_name_shape(username)
    lock_dir = ctx.config.state_dir / "locks"
    path = lock_dir / f"{username}.lock"
    held: set[str] = _held_locks.__dict__.setdefault("paths", set())
    if str(path) in held:
        yield
        return
    lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder before us removed the file (slot terminated): lock the new one
    held.add(str(path))
    try:
        yield
    finally:
        held.discard(str(path))
        os.close(fd)  # closing the descriptor releases the lock


def drop_lock_file(ctx: Context, username: str) -> None:
    """Remove the lock file of a terminated slot (call while holding its lock)."""
    (ctx.config.state_dir / "locks" / f"{username}.lock").unlink(missing_ok=True)

def require_slot(ctx: Context, username: str) -> None:
    """Refuse a name that is no slot before locking it (no lock file left for a typo)."""
    check_name_shape(username)
    if ctx.store.get_slot(username) is None:
        raise SlotError(f"no slot named {username!r}")
