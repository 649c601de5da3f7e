"""JupyterLab from PyPI: one shared read-only virtualenv, per-slot config and notebooks.

The shared install is ``<apps.shared_dir>/jupyterlab`` (default
``/opt/slotwarden/apps/jupyterlab``, root-owned, ``make apps-shared`` creates it). Per slot,
everything is under ``~/apps/jupyterlab``: ``config/jupyter_server_config.json`` (0600: the
argon2 hash of the password, never the password), ``notebooks/`` (the server's root),
``data/`` and ``runtime/``. Token login is off; password login only. No TCP port: the server
listens on the slot's private Unix socket (:mod:`provisioner.apps.appsockets`, mode 0660, group
the Hub's) with ``base_url`` ``/apps/<slot>/jupyterlab/``, so it is reached only through the
Hub's front door at ``https://HOST/apps/<slot>/jupyterlab/``, whose links it builds itself.
"""

from __future__ import annotations

import json
from pathlib import Path

from provisioner.apps import App, AppSettings, Installation, frontdoor_url
from provisioner.apps.appsockets import install_step, refuse_squatter, teardown
from provisioner.context import Context
from provisioner.errors import SlotError
from provisioner.runner import run
from provisioner.steps import Step
from provisioner.supervisor import Program, SupervisorBackend

# Hash on the shared install's own (root-owned) Python, the password read from stdin (never
# argv). Isolated (-I): neither the working directory nor PYTHON* variables nor a user site
# reach sys.path, so a planted jupyter_server/ or sitecustomize.py in the operator's cwd (a
# tenant's home, /tmp) is never imported by this root process; and the runner starts it in /.
_HASH = "import sys; from jupyter_server.auth import passwd; print(passwd(sys.stdin.read()))"


def hash_argv(venv: Path) -> list[str]:
    """The root command that hashes a password read from stdin (pure; isolated Python)."""
    return [str(venv / "bin" / "python"), "-I", "-c", _HASH]


def base_url(inst: Installation) -> str:
    """The path the front door serves the app under (unstripped: the app builds its links on it)."""
    return f"/apps/{inst.username}/{inst.app}/"


def server_config(inst: Installation, hashed_password: str) -> dict[str, object]:
    """jupyter_server settings for INST (pure; tested as data)."""
    return {
        "ServerApp": {
            "sock": str(inst.socket),
            # The socket's directory admits only its slot; the front door reaches the inode
            # through root's link, as the Hub's group.
            "sock_mode": "0660",
            "base_url": base_url(inst),
            "open_browser": False,
            "root_dir": str(inst.app_dir / "notebooks"),
            # Requests arrive with the front door's Host (a public name): only the front door
            # can connect at all, so the loopback-name check has nothing left to protect.
            "allow_remote_access": True,
            "quit_button": False,
        },
        "IdentityProvider": {"token": ""},
        "PasswordIdentityProvider": {"hashed_password": hashed_password, "password_required": True,
                                     "allow_password_change": False},
        "LabServerApp": {"open_browser": False},
    }


class JupyterLab(App):
    name = "jupyterlab"
    title = "JupyterLab"
    description = "Notebooks in the browser (PyPI jupyterlab in a shared venv), password login"
    needs = ("jupyterlab in <apps.shared_dir>/jupyterlab (make apps-shared)",)
    port_purposes = ()
    unix_socket = True

    def venv(self, settings: AppSettings) -> Path:
        return settings.shared_dir / "jupyterlab"

    def version(self, settings: AppSettings) -> str | None:
        venv = self.venv(settings)
        if not (venv / "bin" / "jupyter-lab").exists():
            return None
        found = sorted(venv.glob("lib/python3*/site-packages/jupyterlab-*.dist-info"))
        return found[-1].name.removeprefix("jupyterlab-").removesuffix(".dist-info") if found else "unknown"

    def check(self, ctx: Context, settings: AppSettings) -> None:
        if self.version(settings) is None:
            raise SlotError(f"jupyterlab is not installed in {self.venv(settings)} (run 'make apps-shared')")

    def _hash(self, inst: Installation, password: str) -> str:
        out = run(hash_argv(self.venv(inst.settings)), stdin=password)
        return out.stdout.strip()

    def configure(self, ctx: Context, inst: Installation, creds: dict[str, str]) -> None:
        for d in ("config", "data", "runtime", "notebooks", "ipython"):
            inst.mkdir(d)
        cfg = server_config(inst, self._hash(inst, creds["password"]))
        inst.write("config/jupyter_server_config.json", json.dumps(cfg, indent=2) + "\n")

    def install_steps(self, ctx: Context, inst: Installation, creds: dict[str, str]) -> list[Step]:
        return [install_step(ctx, inst)]

    def uninstall(self, ctx: Context, inst: Installation) -> None:
        teardown(ctx, inst)

    def rotate(self, ctx: Context, inst: Installation, old: dict[str, str], new: dict[str, str],
               supervisor: SupervisorBackend) -> None:
        """Stop, rewrite the password's hash, start; a stranger on the socket's name is refused first."""
        for prog in self.programs(ctx, inst):
            supervisor.stop(prog.name)
        refuse_squatter(inst.settings.socket_dir, inst.username, inst.app, inst.uid)
        self.configure(ctx, inst, new)
        for prog in self.programs(ctx, inst):
            supervisor.start(prog.name)

    def programs(self, ctx: Context, inst: Installation) -> list[Program]:
        d = inst.app_dir
        return [Program(app=self.name, user=inst.username, cwd=str(d),
                        argv=[str(self.venv(inst.settings) / "bin" / "jupyter-lab"), "--no-browser"],
                        environment={"USER": inst.username, "LOGNAME": inst.username,
                                     "JUPYTER_CONFIG_DIR": str(d / "config"), "JUPYTER_DATA_DIR": str(d / "data"),
                                     "JUPYTER_RUNTIME_DIR": str(d / "runtime"), "IPYTHONDIR": str(d / "ipython"),
                                     "JUPYTER_PLATFORM_DIRS": "1"},
                        startsecs=2)]

    def url(self, inst: Installation) -> str:
        return frontdoor_url(inst) + "lab"


APP = JupyterLab()
