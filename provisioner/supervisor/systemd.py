"""The systemd backend: template units ``slotwarden-APP@.service``, one instance per slot.

The template holds what every instance shares (``User=%i``, restart policy, hardening); a
drop-in ``slotwarden-APP@USER.service.d/slotwarden.conf`` holds the instance's command line,
working directory and non-secret environment. ``enable`` makes the instance start at boot;
systemd restarts it after a crash (``Restart=always``).

No change of one slot reloads the whole manager: systemd reads a unit that is not loaded yet
from disk when it is first named, so a new instance (the common case: an app installed) starts
without ``daemon-reload``; ``enable`` and ``disable`` run with ``--no-reload`` (their symlinks
matter at boot). Only when systemd says the instance it holds is out of date
(``NeedDaemonReload=yes``: a changed command line of a running app, or a new template after an
upgrade) is the manager reloaded, once.

The drop-in starts the program through ``slotwarden-confine --user NAME --tmpfs-root DIR`` with
systemd's ``!`` prefix: systemd applies the template's sandboxing (``NoNewPrivileges=``,
``ProtectSystem=``, the namespace) but leaves the change of credentials to the wrapper, which
binds the slot's own /tmp and /var/tmp (its tmpfs when its plan sells a ``tmp_size``, else
``~/.slot-tmp``, the instances its logins get) and then drops to the slot user. The wrapper
decides at each start, from the tmpfs directory, so a change of plan that adds or drops a /tmp
size changes no unit file: a restart of the app is all it takes (no ``daemon-reload``).

>>> print(render_template("demo").splitlines()[0])
[Unit]
"""

from __future__ import annotations

import time
from pathlib import Path

from provisioner.runner import run
from provisioner.steps import Step
from provisioner.supervisor import Program, ProgramStatus, SupervisorError
from provisioner.supervisor.confine import INSTALLED, confine_argv, confine_wrapper

UNIT_DIR = Path("/etc/systemd/system")
# The package's oneshot that remounts the slots' /tmp tmpfs at boot (``slotctl host restore``).
BOOT_UNIT = "slotwarden-slot-tmp.service"


def render_template(app: str) -> str:
    """The template unit shared by every slot's instance of APP."""
    return "\n".join([
        "[Unit]",
        f"Description=slotwarden app {app} of slot %i",
        # The slots' /tmp tmpfs are remounted at boot before any app starts (debian/systemd).
        f"After=network.target {BOOT_UNIT}",
        "",
        "[Service]",
        "User=%i",
        "Group=%i",
        "Restart=always",
        "RestartSec=2",
        "KillMode=control-group",
        "NoNewPrivileges=yes",
        # The wrapper binds the slot's own /tmp over this one; it stays for a user without a home.
        "PrivateTmp=yes",
        "ProtectSystem=full",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])


def _quote(arg: str, command: bool = False) -> str:
    # systemd unit quoting: double quotes, backslash escapes, % doubled (specifiers); in a
    # command line $ doubled too (ExecStart= expands $NAME, Environment= does not).
    out = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return '"' + (out.replace("$", "$$") if command else out) + '"'


def render_dropin(program: Program, confine: str = str(INSTALLED)) -> str:
    """The per-instance drop-in: command line, directory, environment (never a secret).

    The command starts through CONFINE, the seccomp wrapper: for a slot user as root (``!``:
    the template's sandboxing holds, the credentials are the wrapper's to change) with ``--user``
    and the slots' tmpfs root, so it gives the program the slot's /tmp before the drop; a root
    program just under the filter. The template's ``NoNewPrivileges=yes`` holds either way.
    """
    env = {"HOME": program.cwd, **program.environment}
    if program.user == "root":
        argv, prefix = confine_argv(confine, None, program.argv), ""
    else:
        argv, prefix = confine_argv(confine, program.user, program.argv, program.tmpfs_root), "!"
    lines = [
        "[Service]",
        "ExecStart=",
        "ExecStart=" + prefix + " ".join(_quote(a, command=True) for a in argv),
        f"WorkingDirectory={program.cwd}",
        f"Restart={'always' if program.autorestart else 'no'}",
        f"KillSignal=SIG{program.stopsignal}",
    ]
    lines += [f"Environment={_quote(f'{k}={v}')}" for k, v in sorted(env.items())]
    if program.env_file is not None:
        lines.append(f"EnvironmentFile={program.env_file}")
    if program.slice is not None:
        # The slot's slice holds its logins too: one set of limits and one account for all of it.
        lines.append(f"Slice={program.slice}")
    return "\n".join([*lines, ""])


class Systemd:
    """Template units under /etc/systemd/system (UNIT_DIR in tests)."""

    name = "systemd"

    def __init__(self, state_dir: Path, unit_dir: Path = UNIT_DIR) -> None:
        self.state_dir = state_dir
        self.unit_dir = unit_dir

    def is_running(self) -> bool:
        return Path("/run/systemd/system").is_dir()

    @staticmethod
    def detects() -> bool:
        """PID 1 is systemd (the test systemd itself uses)."""
        return Path("/run/systemd/system").is_dir()

    def ensure_running(self) -> None:
        if not self.is_running():
            raise SupervisorError("systemd is not PID 1 on this host: use the supervisord backend")

    def host_steps(self) -> list[Step]:
        self.ensure_running()  # refuses early on a host without systemd
        return []

    def shutdown(self) -> None:
        """systemd is the host's init: never stopped by us."""

    def _template_path(self, app: str) -> Path:
        return self.unit_dir / f"slotwarden-{app}@.service"

    def _dropin(self, name: str) -> Path:
        if "/" in name or not name.startswith("slotwarden-") or "@" not in name:
            raise SupervisorError(f"program name {name!r} is invalid")
        return self.unit_dir / f"{name}.service.d" / "slotwarden.conf"

    def ensure_program(self, program: Program) -> None:
        changed = False
        for path, text in ((self._template_path(program.app), render_template(program.app)),
                           (self._dropin(program.name), render_dropin(program, confine_wrapper()))):
            try:
                same = path.read_text() == text
            except FileNotFoundError:
                same = False
            if not same:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_text(text)
                tmp.replace(path)
                changed = True
        unit = f"{program.name}.service"
        if changed and self.needs_reload(unit):
            run(["systemctl", "daemon-reload"])
        run(["systemctl", "enable", "--no-reload", unit])
        run(["systemctl", "restart" if changed else "start", unit])

    def needs_reload(self, unit: str) -> bool:
        """Whether systemd holds UNIT in a state older than its files (asking loads it if it was not)."""
        out = run(["systemctl", "show", "-p", "NeedDaemonReload", "--value", unit], check=False).stdout
        return out.strip() != "no"

    def remove_program(self, name: str) -> None:
        dropin = self._dropin(name)
        run(["systemctl", "disable", "--no-reload", "--now", f"{name}.service"], check=False)
        dropin.unlink(missing_ok=True)
        try:
            dropin.parent.rmdir()
        except FileNotFoundError:
            pass
        app = name.removeprefix("slotwarden-").split("@", 1)[0]
        if not list(self.unit_dir.glob(f"slotwarden-{app}@*.service.d")):
            self._template_path(app).unlink(missing_ok=True)
        # A stopped unit whose files are gone is unloaded by systemd itself; no reload needed.
        run(["systemctl", "reset-failed", f"{name}.service"], check=False)

    def start(self, name: str) -> None:
        run(["systemctl", "start", f"{name}.service"])

    def stop(self, name: str) -> None:
        run(["systemctl", "stop", f"{name}.service"])

    def restart(self, name: str) -> None:
        run(["systemctl", "restart", f"{name}.service"])

    def status(self, name: str) -> ProgramStatus:
        out = run(["systemctl", "show", f"{name}.service", "--timestamp=unix", "-p", "LoadState",
                   "-p", "ActiveState", "-p", "MainPID", "-p", "ExecMainStartTimestamp"], check=False).stdout
        props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        return parse_status(name, props)

    def wait_running(self, name: str, timeout: float = 30.0) -> ProgramStatus:
        deadline = time.monotonic() + timeout
        while True:
            st = self.status(name)
            if st.running or time.monotonic() > deadline:
                return st
            time.sleep(0.2)

    def programs(self) -> list[str]:
        return sorted(p.name.removesuffix(".service.d") for p in self.unit_dir.glob("slotwarden-*@*.service.d"))


def parse_status(name: str, props: dict[str, str]) -> ProgramStatus:
    """A ProgramStatus from ``systemctl show`` properties (pure; tested as data)."""
    known = props.get("LoadState") == "loaded"
    state = props.get("ActiveState", "unknown")
    running = known and state == "active"
    pid = int(props.get("MainPID", "0") or 0) or None
    stamp = props.get("ExecMainStartTimestamp", "")
    since = float(stamp[1:]) if running and stamp.startswith("@") and stamp[1:].isdigit() else None
    return ProgramStatus(name, known, running, pid if running else None, since, state if known else "absent")



