"""GuardEnv: a private guard for one test module - config, state dir, service, PAM service.

Everything lives in a temp dir (SLOTWARDEN_CONFIG points there); the guard
service runs as a child process, optionally inside a lab network namespace so
its blackhole routes land there. ``slotctl`` is the real CLI module.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pam_hooks.client import GuardUnavailable, request
from pam_hooks.config import GuardConfig, load_guard_config

REPO = Path(__file__).resolve().parents[2]
# This checkout's module, named by absolute path in the test PAM files: tests of parallel
# checkouts never share (or overwrite) one copy in the system's module directory.
MODULE_PATH = REPO / "pam_hooks" / "c" / "pam_slotwarden.so"
SLOTCTL = str(Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "slotctl")

# What systemd does before it execs a socket-activated service: the socket on fd 3, LISTEN_* set.
ACTIVATE = """
import os, sys
os.dup2(int(sys.argv[1]), 3)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1")
os.execv(sys.argv[2], sys.argv[2:])
"""

COUNTER = """#!/bin/sh
# Counts password checks that reach the real stack (after the guard's preauth).
printf '%s %s\\n' "$PAM_USER" "$PAM_RHOST" >> "{log}"
exit 0
"""


@dataclass
class GuardEnv:
    """A guard with its own config/state/socket; ``start()``/``stop()`` the service."""

    settings: dict[str, Any] = field(default_factory=dict)
    netns: str | None = None
    tmp: Path = field(init=False)
    proc: subprocess.Popen[bytes] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="swg-guard-"))
        os.chmod(self.tmp, 0o755)
        self.config = self.tmp / "slotwarden.toml"
        lines = [f'state_dir = "{self.tmp}/state"', "[guard]", f'socket = "{self.tmp}/run/guard.sock"']
        for k, v in self.settings.items():
            lines.append(f"{k} = {json.dumps(v)}")
        self.config.write_text("\n".join(lines) + "\n")
        self.cfg: GuardConfig = load_guard_config(self.config)
        self.checks_log = self.tmp / "checks.log"
        self.counter = self.tmp / "count-check.sh"
        self.counter.write_text(COUNTER.format(log=self.checks_log))
        os.chmod(self.counter, 0o755)
        self.services: list[Path] = []
        self.log = self.tmp / "guard.log"
        self.columns = 200  # the terminal width the CLI's tables get
        # The service's code and the module the PAM lines name (a benchmark's baseline sets older ones).
        self.code_dir = REPO
        self.module_path = MODULE_PATH

    @property
    def env(self) -> dict[str, str]:
        """Environment for CLI calls."""
        return {**os.environ, "SLOTWARDEN_CONFIG": str(self.config), "PYTHONPATH": str(REPO),
                "COLUMNS": str(self.columns)}

    def start(self, nofile: int | None = None, listen_fd: int | None = None,
              activate: list[str] | None = None, wait: bool = True, command: str = "serve") -> None:
        """Start ``guard serve`` and wait until it answers.

        ``nofile`` caps its descriptors (soft and hard); ``listen_fd`` hands it a
        listening socket the way systemd does (fd 3, LISTEN_PID, LISTEN_FDS);
        ``activate`` is a command prefix that does that itself (systemd-socket-activate);
        ``command`` "keep" runs the socket keeper (which runs serve behind it).
        """
        serve = [sys.executable, "-m", "pam_hooks", command, "--config", str(self.config)]
        argv = serve
        pass_fds: tuple[int, ...] = ()
        if listen_fd is not None:
            argv = [sys.executable, "-c", ACTIVATE, str(listen_fd), *serve]
            pass_fds = (listen_fd,)
        if activate is not None:
            argv = [*activate, *serve]
        # (no preexec_fn: the test process has threads) umask 077 for a socket made by a wrapper
        argv = ["sh", "-c", 'umask 077 && exec "$@"', "sh", *argv]
        if nofile is not None:
            argv = ["prlimit", f"--nofile={nofile}:{nofile}", "--", *argv]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, cwd=self.code_dir, env={**self.env, "PYTHONPATH": str(self.code_dir)},
                                         stdout=log, stderr=log, pass_fds=pass_fds)
        if not wait:
            return
        for _ in range(200):
            try:
                if request(self.cfg.socket, 'JSON\t{"op": "ping"}', timeout=1):
                    return
            except (GuardUnavailable, OSError):
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("guard service did not start:\n" + self.log.read_text())

    def alive(self) -> bool:
        """The service process is still running."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM the service and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def slotctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``slotctl guard ARGS`` (the installed CLI) with this env's config."""
        r = subprocess.run([SLOTCTL, "guard", *args], cwd=REPO, env=self.env,
                           capture_output=True, text=True, check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"slotctl guard {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r

    def json(self, *args: str) -> Any:
        """``slotctl guard ARGS --json``, parsed."""
        return json.loads(self.slotctl(*args, "--json").stdout)

    def pam_service(self, text: str = "@include common-auth\n@include common-account\n",
                    count_checks: bool = False) -> str:
        """Create /etc/pam.d/slotwarden-test-<rand> from ``text`` and install the guard into it."""
        name = f"slotwarden-test-{secrets.token_hex(4)}"
        path = Path("/etc/pam.d") / name
        path.write_text(text)
        self.services.append(path)
        self.install(name)
        if count_checks:
            self.add_counter(path)
        return name

    def install(self, service: str) -> None:
        """``slotctl guard install`` into /etc/pam.d/SERVICE with this checkout's module."""
        from pam_hooks.install import built_module

        if self.module_path == MODULE_PATH:
            built_module()  # (re)build it if the source is newer
        self.slotctl("install", "--service", service, "--no-supervise", "--module-path", str(self.module_path))

    def add_counter(self, path: Path) -> None:
        """Insert a pam_exec line that logs every password check reaching the real stack."""
        lines = path.read_text().splitlines(keepends=True)
        for i, ln in enumerate(lines):
            if "pam_slotwarden.so" in ln and ln.startswith("auth") and "authsucc" not in ln:
                lines.insert(i + 1, f"auth optional pam_exec.so quiet seteuid {self.counter}\n")
                break
        else:
            raise AssertionError("no guard preauth line")
        path.write_text("".join(lines))

    def checks(self, user: str | None = None) -> int:
        """How many password checks reached the stack (optionally for one user)."""
        if not self.checks_log.exists():
            return 0
        rows = self.checks_log.read_text().splitlines()
        return sum(1 for r in rows if user is None or r.split(" ")[0] == user)

    def close(self) -> None:
        """Stop the service, remove the test PAM services and the temp dir."""
        self.stop()
        for p in self.services:
            p.unlink(missing_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


class SyslogSink:
    """A datagram socket standing in for /dev/log: every line sent to it, as bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o666)
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        while not self._stop.is_set():
            try:
                self.lines.append(self.sock.recv(65536))
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        """Stop reading and remove the socket."""
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        self.path.unlink(missing_ok=True)
