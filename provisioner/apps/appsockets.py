"""App listeners on Unix sockets: one private directory per slot and app, checked by descriptor.

Apps that can (JupyterLab, WordPress's nginx) listen on ``<apps.socket_dir>/<slot>/<app>/http.sock``
instead of a TCP port, so no other tenant can connect to them or take their place::

    <socket_dir>/                     root 0711: nobody but root makes entries here
    <socket_dir>/<slot>/              the slot's, 0700
    <socket_dir>/<slot>/<app>/        the slot's, 02700, group the Hub's: the app binds http.sock
    <socket_dir>/.frontdoor/          root:<Hub group> 0750: <slot>.<app>.sock, hard links made by root

The app's directory is the tenant's, so the tenant can always put something else at
``http.sock`` (a symlink to another slot's socket, to the Hub's own sockets). The front door
(nginx, the Hub's user) therefore never connects by that path: root opens it with
``O_PATH | O_NOFOLLOW`` one component at a time, accepts only a socket inode the slot owns whose
listener (``SO_PEERCRED``, connected through ``/proc/self/fd``) is the slot's UID, and hard-links
*that inode* into ``.frontdoor``, which only root writes. What nginx reaches is the inode that
was checked, whatever the tenant renames afterwards; a new socket (the app restarted) gets a
new link on the next request, after the same checks.

A hard link needs one filesystem: both trees live under ``socket_dir``, outside the homes
(their btrfs subvolumes would refuse it, and a tenant could rename a link directory inside its
home).

>>> link_name("alice", "jupyterlab")
'alice.jupyterlab.sock'
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import socket
import stat
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from provisioner.apps import homefiles
from provisioner.apps.listeners import ListenerRefused
from provisioner.steps import Step

if TYPE_CHECKING:
    from provisioner.apps import Installation
    from provisioner.context import Context

SOCKET_NAME = "http.sock"
LINK_DIR = ".frontdoor"
_PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class SocketNotReady(ListenerRefused):
    """Nothing listens at the app's socket yet (absent, or nobody accepts on it)."""


def link_name(slot: str, app: str) -> str:
    """The front door's link for SLOT's APP ('.' is in neither name's alphabet)."""
    return f"{slot}.{app}.sock"


def socket_path(socket_dir: Path, slot: str, app: str) -> Path:
    """Where SLOT's APP binds its listener."""
    return socket_dir / slot / app / SOCKET_NAME


def front_door_path(socket_dir: Path, slot: str, app: str) -> Path:
    """What the front door connects to (a root-made link to the checked inode)."""
    return socket_dir / LINK_DIR / link_name(slot, app)


def _root_dir(socket_dir: Path) -> None:
    """Make SOCKET_DIR (root 0711) unless it is there; refuse one a non-root user owns or a symlink."""
    socket_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
    st = os.lstat(socket_dir)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
        raise ListenerRefused(f"{socket_dir} (apps.socket_dir) must be a directory owned by root")
    os.chmod(socket_dir, 0o711)  # noqa: S103 - traversable, not listable  # noqa: S103 - traversable, not listable: the slots enter their own


def prepare(socket_dir: Path, slot: str, app: str, uid: int, gid: int, hub_gid: int) -> Path:
    """Make SLOT's empty socket directory for APP afresh; returns the socket's path.

    Whatever the tenant left at ``<slot>/<app>`` (a planted symlink, files) is removed without
    following it; if the tenant plants something again meanwhile, the walk refuses it.
    """
    _root_dir(socket_dir)
    with contextlib.suppress(FileNotFoundError):
        if os.lstat(socket_dir / slot).st_uid != uid:  # left by an earlier slot of that name: not this one's
            homefiles.remove_tree(socket_dir, slot)
    homefiles.make_dirs(socket_dir, slot, uid, gid, 0o700)
    homefiles.remove_tree(socket_dir, f"{slot}/{app}")
    homefiles.make_dirs(socket_dir, f"{slot}/{app}", uid, hub_gid, 0o2700)
    return socket_path(socket_dir, slot, app)


def remove(socket_dir: Path, slot: str, app: str, *, last: bool) -> None:
    """Remove APP's socket directory and the front door's link; LAST: the slot's whole directory."""
    if not socket_dir.is_dir():
        return
    homefiles.remove_tree(socket_dir, f"{slot}/{app}")
    if last:
        homefiles.remove_tree(socket_dir, slot)
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        fd = os.open(socket_dir / LINK_DIR, _PATH_DIR)
        try:
            os.unlink(link_name(slot, app), dir_fd=fd)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)


@contextlib.contextmanager
def _opened_socket(socket_dir: Path, slot: str, app: str, uid: int) -> Iterator[tuple[int, os.stat_result]]:
    """An O_PATH descriptor of SLOT's socket inode, refused unless it is a socket UID owns."""
    fds: list[int] = []
    where = f"{socket_dir}/{slot}/{app}/{SOCKET_NAME}"
    try:
        fds.append(os.open(socket_dir, _PATH_DIR))
        for part in (slot, app):
            try:
                fds.append(os.open(part, _PATH_DIR, dir_fd=fds[-1]))
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    raise SocketNotReady(f"{where}: no directory {part}") from None
                raise ListenerRefused(f"{where}: {part} is not a directory (a symlink?)") from None
        try:
            fds.append(os.open(SOCKET_NAME, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fds[-1]))
        except FileNotFoundError:
            raise SocketNotReady(f"nothing listens at {where}") from None
        st = os.fstat(fds[-1])
        if not stat.S_ISSOCK(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a socket"
            raise ListenerRefused(f"{where} is {kind}: refusing to follow it")
        if st.st_uid != uid:
            raise ListenerRefused(f"{where} is owned by uid {st.st_uid}, not the slot's uid {uid} "
                                  "(a squatted socket)")
        yield fds[-1], st
    finally:
        for fd in reversed(fds):
            os.close(fd)


def _check_listener(fd: int, where: str, uid: int) -> None:
    """Connect to the inode behind FD and refuse unless its listener's process runs as UID."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
        s.settimeout(5)
        try:
            s.connect(f"/proc/self/fd/{fd}")
        except OSError as exc:
            raise SocketNotReady(f"nobody accepts at {where} ({os.strerror(exc.errno or 0)})") from None
        _pid, peer_uid, _gid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    if peer_uid != uid:
        raise ListenerRefused(f"{where} is served by uid {peer_uid}, not the slot's uid {uid} (a squatted socket)")


def check_socket(socket_dir: Path, slot: str, app: str, uid: int) -> None:
    """Refuse (ListenerRefused; SocketNotReady while nothing listens) unless UID serves SLOT's APP."""
    with _opened_socket(socket_dir, slot, app, uid) as (fd, _st):
        _check_listener(fd, str(socket_path(socket_dir, slot, app)), uid)


def refuse_squatter(socket_dir: Path, slot: str, app: str, uid: int) -> None:
    """Before (re)starting the app: refuse if its socket's name holds a stranger's socket or a symlink.

    Nothing there, or the slot's own socket (live or left by the stopped app), is fine: the app
    replaces it when it binds.
    """
    try:
        check_socket(socket_dir, slot, app, uid)
    except SocketNotReady:
        return


def wait_socket(socket_dir: Path, slot: str, app: str, uid: int, timeout: float) -> None:
    """Wait until the slot's own process listens on its socket; a stranger's or a symlink fails at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check_socket(socket_dir, slot, app, uid)
            return
        except SocketNotReady:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def _link_dir(socket_dir: Path, hub_gid: int) -> int:
    """A descriptor of ``.frontdoor`` (made root:HUB_GID 0750 if missing); a non-root one is refused."""
    _root_dir(socket_dir)
    root = os.open(socket_dir, _PATH_DIR)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(LINK_DIR, 0o700, dir_fd=root)
        fd = os.open(LINK_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root)
    finally:
        os.close(root)
    st = os.fstat(fd)
    if st.st_uid != 0:
        os.close(fd)
        raise ListenerRefused(f"{socket_dir}/{LINK_DIR} is not root's")
    if st.st_gid != hub_gid or stat.S_IMODE(st.st_mode) != 0o750:
        os.fchown(fd, 0, hub_gid)
        os.fchmod(fd, 0o750)
    return fd


def front_door_link(socket_dir: Path, slot: str, app: str, uid: int, hub_gid: int) -> Path:
    """Check SLOT's socket (owner, type, listener) and point the front door's link at that inode.

    Returns the link's path for nginx. Raises ListenerRefused (a symlink, another UID's socket
    or listener) or SocketNotReady (nothing listens); the link then stays as it was, pointing at
    an inode that was checked before (or nowhere).
    """
    with _opened_socket(socket_dir, slot, app, uid) as (fd, st):
        link_fd = _link_dir(socket_dir, hub_gid)
        try:
            name = link_name(slot, app)
            try:
                have = os.stat(name, dir_fd=link_fd, follow_symlinks=False)
                if (have.st_dev, have.st_ino) == (st.st_dev, st.st_ino):
                    return socket_dir / LINK_DIR / name
            except FileNotFoundError:
                pass
            _check_listener(fd, str(socket_path(socket_dir, slot, app)), uid)
            tmp = f".{name}.{secrets.token_hex(6)}"
            # linkat(AT_SYMLINK_FOLLOW) on the descriptor's magic link: the checked inode itself.
            os.link(f"/proc/self/fd/{fd}", tmp, dst_dir_fd=link_fd, follow_symlinks=True)
            os.rename(tmp, name, src_dir_fd=link_fd, dst_dir_fd=link_fd)
            return socket_dir / LINK_DIR / name
        finally:
            os.close(link_fd)


def hub_gid(ctx: Context) -> int:
    """The group of the Hub's user (nginx's workers), or root's when this host has no Hub user."""
    import pwd

    from provisioner.hub.config import hub_config

    try:
        return pwd.getpwnam(hub_config(ctx.config).user).pw_gid
    except KeyError:
        return 0


def install_step(ctx: Context, inst: Installation) -> Step:
    """The install step that makes the app's socket directory (undone by :func:`teardown`)."""
    return Step("app-socket-dir", f"make {inst.socket.parent} (02700, {inst.username}, the Hub's group)",
                lambda: prepare(inst.settings.socket_dir, inst.username, inst.app, inst.uid, inst.gid, hub_gid(ctx)),
                lambda: teardown(ctx, inst))


def teardown(ctx: Context, inst: Installation) -> None:
    """Remove the app's socket directory and link; the slot's directory too once no socket app is left."""
    from provisioner.apps import catalog, registry_of

    others = [r.app for r in registry_of(ctx).installs(inst.username)
              if r.app != inst.app and getattr(catalog().get(r.app), "unix_socket", False)]
    remove(inst.settings.socket_dir, inst.username, inst.app, last=not others)
