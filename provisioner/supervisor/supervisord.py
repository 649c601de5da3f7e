"""The supervisord backend: a supervisord of our own, configured under ``<state_dir>/supervisor``.

Layout (all root-only, the directory is 0700)::

    supervisor/supervisord.conf      written by ensure_running()
    supervisor/programs/NAME.conf    one [program:NAME] section per program
    supervisor/logs/NAME.log         the program's output (capped, one backup)
    supervisor/supervisor.sock       XML-RPC, mode 0700 root: only root can drive it

supervisord watches its own configuration file: when it disappears (the state dir was removed:
this installation is gone, e.g. a test's private state dir), supervisord stops its programs
and exits instead of running on with nothing to answer to.

It is driven over its XML-RPC socket (no ``supervisorctl`` process per call): a program is
added with ``reloadConfig`` + ``addProcessGroup`` and removed with ``stopProcess`` +
``removeProcessGroup``, so other programs keep running. supervisord restarts a program that
dies (``autorestart``) and starts every program again when supervisord itself starts, which
``host init`` (or the first app install) does.

>>> s = Supervisord(Path("/tmp/sw-doc"))
>>> s.config_dir
PosixPath('/tmp/sw-doc/supervisor')
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shlex
import socket
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

from provisioner.errors import SlotError
from provisioner.runner import run
from provisioner.steps import Step
from provisioner.supervisor import Program, ProgramStatus, SupervisorError
from provisioner.supervisor.confine import INSTALLED, confine_argv, confine_wrapper

SUPERVISORD = "/usr/bin/supervisord"
# Run by supervisord as root: join each cgroup given ($1 = how many), then exec the confine
# wrapper, which becomes the slot user. Everything in it is root's (sh, the wrapper, the cgroup
# files); the program itself runs only after the drop, as the user, so a tenant's file is never
# executed by root.
JOIN_CGROUPS = ('n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1/cgroup.procs" || exit 97; '
                'shift; n=$((n-1)); done; exec "$@"')
# supervisord fault codes (supervisor.xmlrpc.Faults) we treat as "already so".
BAD_NAME, NOT_RUNNING, ALREADY_STARTED, ALREADY_ADDED, STILL_RUNNING = 10, 70, 60, 90, 91
_SUN_PATH_MAX = 100


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__()
        self._path = path
        self._timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        return _UnixConnection(self._path, self._timeout)


def _escape(value: str) -> str:
    """supervisord expands ``%(name)s`` in values: a literal % is written %%."""
    return value.replace("%", "%%")


def render_program(program: Program, log_dir: Path, confine: str = str(INSTALLED)) -> str:
    """The ``[program:NAME]`` section for PROGRAM (pure; tested as data).

    A slot's program (any user but root) starts as root through CONFINE, the seccomp wrapper,
    which drops to the slot user itself (what supervisord's ``user=`` does: uid, gid,
    supplementary groups) after installing the filter; before that it joins its cgroups.
    """
    env = {"HOME": program.cwd, **program.environment}
    inner = list(program.argv)
    if program.env_file is not None:
        # supervisord has no env-file option: a tiny exec wrapper reads it as the user would.
        inner = ["/bin/sh", "-c", 'set -a; . "$0"; set +a; exec "$@"', program.env_file, *program.argv]
    log = log_dir / f"{program.name}.log"
    user_line = [f"user={program.user}"]
    command = shlex.join(inner)
    if program.user != "root":
        env = {**env, "USER": program.user, "LOGNAME": program.user}
        confined = confine_argv(confine, program.user, inner, program.tmpfs_root)
        command = shlex.join(confined)
        if program.cgroups:
            # supervisord cannot place a child in a cgroup: the child does it as root first.
            command = shlex.join(["/bin/sh", "-c", JOIN_CGROUPS, "slotwarden-join", str(len(program.cgroups)),
                                  *program.cgroups, *confined])
        user_line = []
    env_line = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(env.items()) if '"' not in v)
    lines = [
        f"[program:{program.name}]",
        f"command={_escape(command)}",
        *user_line,
        f"directory={_escape(program.cwd)}",
        f"environment={env_line}",
        "autostart=true",
        f"autorestart={'true' if program.autorestart else 'false'}",
        f"startsecs={program.startsecs}",
        "startretries=10",
        f"stopsignal={program.stopsignal}",
        "stopwaitsecs=10",
        "stopasgroup=true",
        "killasgroup=true",
        "redirect_stderr=true",
        f"stdout_logfile={_escape(str(log))}",
        "stdout_logfile_maxbytes=1MB",
        "stdout_logfile_backups=1",
        "",
    ]
    return "\n".join(lines)


class Supervisord:
    """A supervisord of our own, driven over XML-RPC."""

    name = "supervisord"

    def __init__(self, state_dir: Path, timeout: float = 30.0) -> None:
        self.config_dir = state_dir / "supervisor"
        self.conf = self.config_dir / "supervisord.conf"
        self.programs_dir = self.config_dir / "programs"
        self.log_dir = self.config_dir / "logs"
        sock = self.config_dir / "supervisor.sock"
        if len(str(sock)) > _SUN_PATH_MAX:  # AF_UNIX paths are short; a deep state dir gets /run
            digest = hashlib.sha256(str(self.config_dir).encode()).hexdigest()[:16]
            sock = Path("/run") / f"slotwarden-supervisor-{digest}.sock"
        self.socket = sock
        self.timeout = timeout

    # --- the supervisor itself ------------------------------------------------------------

    def render_config(self) -> str:
        d = self.config_dir
        return "\n".join([
            "; written by slotwarden (host init); programs live in programs/*.conf",
            "[unix_http_server]",
            f"file={self.socket}",
            "chmod=0700",
            "",
            "[supervisord]",
            f"logfile={d / 'supervisord.log'}",
            "logfile_maxbytes=1MB",
            "logfile_backups=1",
            f"pidfile={d / 'supervisord.pid'}",
            f"childlogdir={self.log_dir}",
            "directory=/",
            "umask=077",
            "minfds=4096",
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[supervisorctl]",
            f"serverurl=unix://{self.socket}",
            "",
            "[program:slotwarden-state-watch]",
            "command=" + _escape(shlex.join(["/bin/sh", "-c", 'while [ -e "$0" ]; do sleep 5; done; kill -TERM $PPID',
                                             str(self.conf)])),
            "autorestart=unexpected",
            "exitcodes=0",
            "startsecs=0",
            "stdout_logfile=NONE",
            "stderr_logfile=NONE",
            "",
            "[include]",
            f"files={self.programs_dir}/*.conf",
            "",
        ])

    def _rpc(self) -> Any:
        proxy = xmlrpc.client.ServerProxy("http://localhost", transport=_UnixTransport(str(self.socket),
                                                                                       self.timeout))
        return proxy.supervisor

    def is_running(self) -> bool:
        try:
            state = self._rpc().getState()
        except (OSError, xmlrpc.client.Error):
            return False
        return bool(state.get("statename") == "RUNNING")

    def config_ok(self) -> bool:
        try:
            return self.conf.read_text() == self.render_config()
        except OSError:
            return False

    @staticmethod
    def detects() -> bool:
        """supervisord runs on any host (it is this project's own)."""
        return True

    def host_steps(self) -> list[Step]:
        if self.is_running() and self.config_ok():
            return []
        return [Step("supervisor", f"start supervisord with {self.conf} (programs in {self.programs_dir})",
                     self.ensure_running)]

    def ensure_running(self) -> None:
        """Write the configuration and start supervisord unless it already answers (idempotent)."""
        for d in (self.config_dir, self.programs_dir, self.log_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(d, 0o700)
        if not self.config_ok():
            tmp = self.conf.with_suffix(".tmp")
            tmp.write_text(self.render_config())
            os.replace(tmp, self.conf)
        if self.is_running():
            return
        if not Path(SUPERVISORD).exists():
            raise SupervisorError(f"{SUPERVISORD} is not installed (apt-get install supervisor)")
        run([SUPERVISORD, "-c", str(self.conf)])
        deadline = time.monotonic() + 20
        while not self.is_running():
            if time.monotonic() > deadline:
                raise SupervisorError(f"supervisord did not come up on {self.socket}; "
                                      f"see {self.config_dir / 'supervisord.log'}")
            time.sleep(0.1)

    def shutdown(self) -> None:
        """Stop supervisord and every program it runs (tests and `host` teardown)."""
        if not self.is_running():
            return
        pid_file = self.config_dir / "supervisord.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            pid = None
        try:
            self._rpc().shutdown()
        except (OSError, xmlrpc.client.Error):
            pass
        deadline = time.monotonic() + 30
        while pid is not None and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)

    # --- programs -------------------------------------------------------------------------

    def _call(self, method: str, *args: Any, ok: tuple[int, ...] = ()) -> Any:
        try:
            return getattr(self._rpc(), method)(*args)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode in ok:
                return None
            raise SupervisorError(f"supervisord {method}{args!r}: {fault.faultString}") from None
        except OSError as exc:
            raise SupervisorError(f"supervisord is not reachable on {self.socket} ({exc}): "
                                  "run 'slotctl host init'") from None

    def _conf_of(self, name: str) -> Path:
        if "/" in name or name.startswith("."):
            raise SlotError(f"program name {name!r} is invalid")
        return self.programs_dir / f"{name}.conf"

    def ensure_program(self, program: Program) -> None:
        self.ensure_running()
        path = self._conf_of(program.name)
        text = render_program(program, self.log_dir,
                              confine_wrapper() if program.user != "root" else str(INSTALLED))
        try:
            changed = path.read_text() != text
        except FileNotFoundError:
            changed = True
        if changed:
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
        added, modified, _removed = self._call("reloadConfig")[0]
        if program.name in modified:
            self._call("stopProcess", program.name, True, ok=(BAD_NAME, NOT_RUNNING))
            self._call("removeProcessGroup", program.name, ok=(BAD_NAME,))
            added = [*added, program.name]
        if program.name in added:
            self._call("addProcessGroup", program.name, ok=(ALREADY_ADDED,))
        self.start(program.name)

    def wait_running(self, name: str, timeout: float = 30.0) -> ProgramStatus:
        """Wait until NAME is RUNNING; raise if it fails to start (FATAL) or takes too long."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status(name)
            if st.running:
                return st
            if st.state in {"fatal", "absent", "stopped", "exited"} or time.monotonic() > deadline:
                raise SupervisorError(f"{name} did not start (state {st.state}); "
                                      f"see {self.log_dir / (name + '.log')}")
            time.sleep(0.1)

    def remove_program(self, name: str) -> None:
        path = self._conf_of(name)
        if self.is_running():
            self._call("stopProcess", name, True, ok=(BAD_NAME, NOT_RUNNING))
            self._call("removeProcessGroup", name, ok=(BAD_NAME,))
        path.unlink(missing_ok=True)
        for log in self.log_dir.glob(f"{name}.log*"):
            log.unlink(missing_ok=True)

    def start(self, name: str) -> None:
        self._call("startProcess", name, True, ok=(ALREADY_STARTED,))
        self.wait_running(name)

    def stop(self, name: str) -> None:
        self._call("stopProcess", name, True, ok=(NOT_RUNNING,))

    def restart(self, name: str) -> None:
        self.stop(name)
        self.start(name)

    def status(self, name: str) -> ProgramStatus:
        try:
            info = self._rpc().getProcessInfo(name)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode == BAD_NAME:
                return ProgramStatus(name, False, False, None, None, "absent")
            raise SupervisorError(f"supervisord getProcessInfo: {fault.faultString}") from None
        except OSError:
            known = self._conf_of(name).exists()
            return ProgramStatus(name, known, False, None, None, "supervisor-down")
        running = info["statename"] == "RUNNING"
        return ProgramStatus(name, True, running, info["pid"] or None if running else None,
                             float(info["start"]) if running and info["start"] else None,
                             str(info["statename"]).lower())

    def programs(self) -> list[str]:
        return sorted(p.stem for p in self.programs_dir.glob("*.conf"))
