"""Process supervisors: keep long-running programs (apps, the guard service) up, as a given user.

One backend per file, chosen by name through :data:`BACKENDS` (imported lazily):

- ``supervisord`` — for hosts whose PID 1 is not systemd (containers, CI): a supervisord run
  with its own configuration under ``<state_dir>/supervisor``, driven over its root-only
  XML-RPC unix socket.
- ``systemd`` — template units ``slotwarden-APP@USERNAME.service`` with a per-instance
  drop-in holding the command line.

Both take a :class:`Program` (the command, the user, the working directory, a non-secret
environment) and never put a secret on a command line: secrets live in the app's own 0600
config file, which the program reads.

>>> p = Program(app="demo", user="alice", argv=["/bin/sleep", "1000"], cwd="/tmp")
>>> p.name
'slotwarden-demo@alice'
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from provisioner.errors import BadInput, SlotError
from provisioner.extensions import Hooks
from provisioner.steps import Step

if TYPE_CHECKING:
    from provisioner.context import Context

# scheme -> "module:Class", imported on first use (testinfra's BACKENDS map). Order is detection
# order (each class's ``detects()``): supervisord runs anywhere, so it comes last.
BACKENDS: dict[str, str] = {
    "systemd": "provisioner.supervisor.systemd:Systemd",
    "supervisord": "provisioner.supervisor.supervisord:Supervisord",
}
_PART_RE = re.compile(r"[a-z][a-z0-9_-]{0,47}")


@dataclass(frozen=True)
class Program:
    """A long-running program to keep up.

    ``environment`` must not hold a secret (supervisord keeps it in its config, systemd in a
    unit file); ``env_file`` names a file the program's environment is read from instead.
    """

    app: str
    user: str
    argv: list[str]
    cwd: str
    environment: dict[str, str] = field(default_factory=dict)
    env_file: str | None = None
    autorestart: bool = True
    # Seconds the program must stay up to count as started; a crash sooner is a failed start.
    startsecs: int = 1
    stopsignal: str = "TERM"
    # Where the program runs (set by provisioner.limits): cgroup directories it joins before it
    # drops to USER (supervisord), or the systemd slice of its unit.
    cgroups: tuple[str, ...] = ()
    slice: str | None = None
    # Where the slots' /tmp tmpfs are (``<state_dir>/slot-tmp``): the wrapper binds the slot's
    # over /tmp when it was sold a /tmp size (supervisord; set by provisioner.limits too).
    tmpfs_root: str | None = None

    def __post_init__(self) -> None:
        for what, value in (("app", self.app), ("user", self.user)):
            if not _PART_RE.fullmatch(value):
                raise BadInput(f"program {what} {value!r} is invalid")
        if not self.argv or not self.argv[0].startswith("/"):
            raise BadInput(f"program {self.name}: argv[0] must be an absolute path")
        # One line each: supervisord's ini and systemd's unit files would read a newline as a new key.
        if any(c in a for a in (*self.argv, self.cwd, self.tmpfs_root or "") for c in "\n\r\x00"):
            raise BadInput(f"program {self.name}: a newline or NUL in its command line or directory")
        for d in self.cgroups:
            if not d.startswith("/sys/fs/cgroup/") or ".." in d.split("/") or any(c in d for c in "\n\x00'\""):
                raise BadInput(f"program {self.name}: cgroup {d!r} is invalid")
        if self.slice is not None and not re.fullmatch(r"[A-Za-z0-9_-]+\.slice", self.slice):
            raise BadInput(f"program {self.name}: slice {self.slice!r} is invalid")
        for key, value in self.environment.items():
            if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", key) or "\n" in value or "\x00" in value:
                raise BadInput(f"program {self.name}: environment {key!r} is invalid")

    @property
    def name(self) -> str:
        """``slotwarden-APP@USER``: the systemd instance name, used by every backend."""
        return program_name(self.app, self.user)


def program_name(app: str, user: str) -> str:
    return f"slotwarden-{app}@{user}"


@dataclass(frozen=True)
class ProgramStatus:
    """What the supervisor says about one program right now."""

    name: str
    known: bool
    running: bool
    pid: int | None
    since: float | None  # UNIX time the current process started
    state: str

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


class SupervisorBackend(Protocol):
    """What every supervisor backend offers. All methods are idempotent."""

    name: str

    def ensure_running(self) -> None:
        """Make the supervisor itself ready (start supervisord; nothing for systemd)."""

    def host_steps(self) -> list[Step]:
        """What ``host init`` must do to make the supervisor ready (empty: ready); refuses a host
        where this backend cannot work."""

    def is_running(self) -> bool:
        """Whether the supervisor answers."""

    def ensure_program(self, program: Program) -> None:
        """Install or update PROGRAM and start it (restarting it when its definition changed)."""

    def remove_program(self, name: str) -> None:
        """Stop program NAME and forget it (absent is fine)."""

    def start(self, name: str) -> None:
        """Start program NAME (running already is fine)."""

    def stop(self, name: str) -> None:
        """Stop program NAME (stopped already is fine); it stays known."""

    def restart(self, name: str) -> None:
        """Stop then start program NAME."""

    def wait_running(self, name: str, timeout: float = 30.0) -> ProgramStatus:
        """Wait until NAME runs (supervisord raises if it cannot start; systemd returns the status)."""

    def status(self, name: str) -> ProgramStatus:
        """Running?, pid, since, for NAME (an unknown name is ``known=False``)."""

    def programs(self) -> list[str]:
        """Names of every program this backend manages."""

    def shutdown(self) -> None:
        """Stop the supervisor itself if this backend runs one (tests; never on production)."""


def _backend_class(name: str) -> Any:
    target = BACKENDS.get(name)
    if target is None:
        raise BadInput(f"supervisor {name!r} is unknown: use one of auto, {', '.join(sorted(BACKENDS))}")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def detect_backend() -> str:
    """The first backend of :data:`BACKENDS` that detects it can work here (systemd when PID 1
    is systemd, else supervisord)."""
    return next(name for name in BACKENDS if _backend_class(name).detects())


def load_supervisor(name: str, state_dir: Path) -> SupervisorBackend:
    """The backend NAME (``auto`` detects), keeping its files under STATE_DIR where it has any."""
    if name == "auto":
        name = detect_backend()
    backend: SupervisorBackend = _backend_class(name)(state_dir)
    return backend


def supervisor_for(ctx: Context) -> SupervisorBackend:
    """The backend ``host init`` recorded for this host (or the configured/detected one)."""
    chosen = ctx.store.host_settings().get("supervisor") or ctx.config.host.supervisor
    return load_supervisor(chosen, ctx.config.state_dir)


class SupervisorError(SlotError):
    """The supervisor refused or is not reachable."""


def plan_host_supervisor(ctx: Context, _req: object) -> list[Step]:
    """``host init`` steps: record the chosen backend and make it ready (supervisord started)."""
    chosen = ctx.config.host.supervisor
    name = detect_backend() if chosen == "auto" else chosen
    backend = load_supervisor(name, ctx.config.state_dir)
    steps: list[Step] = []
    if ctx.store.host_settings().get("supervisor") != name:
        steps.append(Step("supervisor-choice", f"record process supervisor {name}",
                          lambda: ctx.store.set_host_settings({"supervisor": name})))
    return steps + backend.host_steps()



EXTENSION = Hooks("supervisor", host=plan_host_supervisor)  # host init records and starts it
