"""The app socket directory, walked by descriptor: what the front door links and what it refuses.

Run as any user: the checks compare the socket's owner with the caller's own UID, and the
front door's link directory is made with the caller's group.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioner.apps import appsockets
from provisioner.apps.appsockets import SocketNotReady, check_socket, front_door_link, link_name, socket_path
from provisioner.apps.listeners import ListenerRefused
from provisioner.names import USERNAME_RE

UID, GID = os.getuid(), os.getgid()


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "appsock"
    root.mkdir(mode=0o711)
    if UID != 0:  # the "root-owned" checks compare with root: let an unprivileged run own the tree
        monkeypatch.setattr(appsockets, "_root_dir", lambda d: d.mkdir(mode=0o711, exist_ok=True))
        monkeypatch.setattr(appsockets, "_link_dir", _own_link_dir)
    (root / "alice" / "jupyterlab").mkdir(parents=True, mode=0o700)
    return root


def _own_link_dir(socket_dir: Path, hub_gid: int) -> int:
    (socket_dir / appsockets.LINK_DIR).mkdir(mode=0o750, exist_ok=True)
    return os.open(socket_dir / appsockets.LINK_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)


@pytest.fixture
def listening(tree: Path) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(socket_path(tree, "alice", "jupyterlab")))
    s.listen()
    yield s
    s.close()


def test_the_link_is_the_checked_inode_and_survives_a_swap(tree: Path, listening: socket.socket) -> None:
    link = front_door_link(tree, "alice", "jupyterlab", UID, GID)
    assert link == tree / ".frontdoor" / "alice.jupyterlab.sock"
    assert os.stat(link).st_ino == os.stat(socket_path(tree, "alice", "jupyterlab")).st_ino
    # the tenant swaps a symlink in for its socket: the link still reaches the checked socket
    sock = socket_path(tree, "alice", "jupyterlab")
    sock.unlink()
    sock.symlink_to("/run/elsewhere.sock")
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(str(link))
    with pytest.raises(ListenerRefused, match="symlink"):
        front_door_link(tree, "alice", "jupyterlab", UID, GID)


def test_a_symlinked_app_directory_is_refused(tree: Path, tmp_path: Path) -> None:
    (tree / "alice" / "jupyterlab").rmdir()
    (tmp_path / "elsewhere").mkdir()
    (tree / "alice" / "jupyterlab").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ListenerRefused, match="not a directory"):
        check_socket(tree, "alice", "jupyterlab", UID)


def test_a_plain_file_is_refused_and_nothing_yet_is_not_ready(tree: Path) -> None:
    with pytest.raises(SocketNotReady):
        check_socket(tree, "alice", "jupyterlab", UID)
    socket_path(tree, "alice", "jupyterlab").write_text("")
    with pytest.raises(ListenerRefused, match="not a socket"):
        check_socket(tree, "alice", "jupyterlab", UID)


def test_another_uids_socket_is_refused(tree: Path, listening: socket.socket) -> None:
    with pytest.raises(ListenerRefused, match="squatted socket"):
        check_socket(tree, "alice", "jupyterlab", UID + 1)
    assert not (tree / ".frontdoor").exists() or not any((tree / ".frontdoor").iterdir())


def test_a_dead_socket_is_not_ready(tree: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(socket_path(tree, "alice", "jupyterlab")))
    s.close()  # bound, never listening: the file stays, nobody accepts
    with pytest.raises(SocketNotReady, match="nobody accepts"):
        front_door_link(tree, "alice", "jupyterlab", UID, GID)


@given(st.from_regex(USERNAME_RE, fullmatch=True), st.from_regex(USERNAME_RE, fullmatch=True),
       st.from_regex(USERNAME_RE, fullmatch=True), st.from_regex(USERNAME_RE, fullmatch=True))
def test_link_names_never_collide(s1: str, a1: str, s2: str, a2: str) -> None:
    assert (link_name(s1, a1) == link_name(s2, a2)) == ((s1, a1) == (s2, a2))
    assert "/" not in link_name(s1, a1) and not link_name(s1, a1).startswith(".")


@pytest.mark.skipif(UID != 0, reason="chown to another UID needs root")
def test_prepare_replaces_what_an_earlier_slot_of_the_name_left(tmp_path: Path) -> None:
    root = tmp_path / "appsock"
    (root / "alice" / "wordpress").mkdir(parents=True)
    os.chown(root / "alice", 4242, 4242)
    (root / "alice" / "leftover").write_text("x")
    sock = appsockets.prepare(root, "alice", "jupyterlab", 1234, 1234, 999)
    assert sock == root / "alice" / "jupyterlab" / "http.sock" and not (root / "alice" / "leftover").exists()
    st_slot, st_app = (root / "alice").stat(), (root / "alice" / "jupyterlab").stat()
    assert (st_slot.st_uid, oct(st_slot.st_mode & 0o7777)) == (1234, "0o700")
    assert (st_app.st_uid, st_app.st_gid, oct(st_app.st_mode & 0o7777)) == (1234, 999, "0o2700")
    assert (root.stat().st_uid, oct(root.stat().st_mode & 0o777)) == (0, "0o711")
