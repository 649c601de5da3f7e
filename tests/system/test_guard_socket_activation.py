"""The guard service takes the socket systemd passes (slotwarden-guard.socket, LISTEN_FDS).

The socket is made here as systemd makes it (bound, listening, 0600) and handed to
``slotctl guard serve`` as fd 3 with LISTEN_PID/LISTEN_FDS, the sd_listen_fds protocol. A
login attempt queued before the service runs is answered; the service never unlinks a socket
it did not make, so a restart finds it still there (the window the .socket unit closes).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pam_hooks.client import request
from tests.system.fixtures.guard import GuardEnv
from tests.system.fixtures.processes import stop_process, wait_for

pytestmark = pytest.mark.root
SLOTCTL = str(Path(sys.executable).parent / "slotctl")


@pytest.fixture
def env() -> Iterator[GuardEnv]:
    e = GuardEnv({})
    try:
        yield e
    finally:
        e.close()


def systemd_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.listen(16)
    return sock


# What systemd does between fork and exec: the socket onto fd 3, LISTEN_PID = the pid that execs.
EXEC_AS_SYSTEMD = (
    "import os, sys\n"
    "os.dup2(int(sys.argv[1]), 3)\n"
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1', LISTEN_FDNAMES='guard')\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def serve_with(env: GuardEnv, listener: socket.socket) -> subprocess.Popen[bytes]:
    """``slotctl guard serve`` started the way slotwarden-guard.socket starts it."""
    fd = listener.fileno()
    return subprocess.Popen([sys.executable, "-c", EXEC_AS_SYSTEMD, str(fd), SLOTCTL, "guard", "serve"],
                            env=env.env, pass_fds=(fd,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_serves_the_inherited_socket_and_leaves_it_in_place(env: GuardEnv) -> None:
    path = env.cfg.socket
    path.parent.mkdir(parents=True, exist_ok=True)
    listener = systemd_socket(path)
    # A PAM module's connection queued before the service exists: systemd holds it meanwhile.
    early = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    early.connect(str(path))
    inode = path.stat().st_ino
    proc = serve_with(env, listener)
    try:
        early.sendall(b'JSON\t{"op": "ping"}\n')
        early.settimeout(20)
        assert b'"pong"' in early.recv(4096)
        assert request(path, 'JSON\t{"op": "ping"}', timeout=5).endswith('"pong"}')
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else b""
        # systemd's socket is still there, the same one, and still takes connections
        assert path.stat().st_ino == inode and oct(path.stat().st_mode & 0o777) == "0o600"
        late = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        late.connect(str(path))
        late.close()
    finally:
        early.close()
        stop_process(proc)
        listener.close()


def test_without_listen_fds_it_binds_its_own(env: GuardEnv) -> None:
    proc = subprocess.Popen([SLOTCTL, "guard", "serve"], env={**env.env, "LISTEN_PID": "1", "LISTEN_FDS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: env.cfg.socket.exists(), timeout=30)
        assert request(env.cfg.socket, 'JSON\t{"op": "ping"}', timeout=5).endswith('"pong"}')
    finally:
        stop_process(proc)
    assert not env.cfg.socket.exists()  # its own socket: removed when it stops
