"""SocketKeeper: hold the guard's socket and run the service behind it, where systemd does not.

``python3 -m pam_hooks keep`` is what supervisord runs (``slotctl guard supervise``
without systemd). It binds the root-only socket once and starts ``serve`` with
it on fd 3 (``LISTEN_FDS``, exactly as systemd's socket activation), and starts
it again whenever it exits. A login that arrives while the service restarts
(a crash, a damaged store being set aside, an upgrade) waits in the socket's
backlog instead of finding nothing and falling to ``fail_mode``. The keeper
itself does nothing else, so it has little reason to die; if it does, the
supervisor starts it again.

SIGTERM/SIGINT stop the service, then the keeper, and remove the socket.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import time
from pathlib import Path

from pam_hooks.config import GuardConfig
from pam_hooks.service import SD_LISTEN_FDS_START, bind_socket

log = logging.getLogger("slotwarden.guard")

PR_SET_PDEATHSIG = 1
# How long a new keeper waits for an old service (its orphan, ending) to let go of the socket.
TAKEOVER_SECONDS = 15.0
# Waits between restarts of a service that keeps exiting: it must not spin, nor wait long.
BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)


class SocketKeeper:
    """Binds the socket, runs ``serve`` on it, restarts it; ``run()`` blocks until SIGTERM."""

    def __init__(self, cfg: GuardConfig, config_file: Path | None) -> None:
        self.cfg = cfg
        self.config_file = config_file
        self.child: int | None = None
        self.stopping = False
        self.restarts = 0

    def _serve_argv(self) -> list[str]:
        argv = [sys.executable, "-m", "pam_hooks", "serve"]
        if self.config_file is not None:
            argv += ["--config", str(self.config_file)]
        return argv

    def _spawn(self, fd: int) -> int:
        keeper = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: the socket on fd 3, LISTEN_* naming itself, then the service
            try:
                # The service goes when the keeper goes (even by SIGKILL): the supervisor then
                # starts one keeper with one service, never a second one beside an orphan.
                ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
                if os.getppid() != keeper:
                    os._exit(1)
                if fd == SD_LISTEN_FDS_START:
                    os.set_inheritable(fd, True)  # dup2 onto itself would leave close-on-exec set
                else:
                    os.dup2(fd, SD_LISTEN_FDS_START)
                    os.close(fd)
                os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1")
                argv = self._serve_argv()
                os.execv(argv[0], argv)  # noqa: S606 - our own interpreter, an argument list
            finally:
                os._exit(127)
        return pid

    def _stop(self, _sig: int, _frame: object) -> None:
        self.stopping = True
        if self.child is not None:
            try:
                os.kill(self.child, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def run(self) -> int:
        """Hold the socket until told to stop; returns the exit code."""
        deadline = time.monotonic() + TAKEOVER_SECONDS
        while True:
            try:
                sock = bind_socket(self.cfg.socket)
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        log.info("holding %s for the guard service", self.cfg.socket)
        failures = 0
        try:
            while not self.stopping:
                started = time.monotonic()
                self.child = self._spawn(sock.fileno())
                while True:
                    try:
                        _pid, status = os.waitpid(self.child, 0)
                        break
                    except InterruptedError:
                        continue
                self.child = None
                if self.stopping:
                    break
                code = os.waitstatus_to_exitcode(status)
                failures = 0 if time.monotonic() - started > 30 else failures + 1
                wait = BACKOFF[min(failures, len(BACKOFF) - 1)]
                self.restarts += 1
                log.error("guard service exited (%d); starting it again in %.1f s, the socket stays", code, wait)
                time.sleep(wait)
        finally:
            sock.close()
            try:
                self.cfg.socket.unlink()
            except FileNotFoundError:
                pass
        return 0
