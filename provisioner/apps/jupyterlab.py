"""JupyterLab from PyPI: one shared read-only virtualenv, per-slot config and notebooks.

The shared install is ``<apps.shared_dir>/jupyterlab`` (default
``/opt/slotwarden/apps/jupyterlab``, root-owned, ``make apps-shared`` creates it). Per slot,
everything is under ``~/apps/jupyterlab``: ``config/jupyter_server_config.json`` (0600: the
argon2 hash of the password, never the password), ``notebooks/`` (the server's root),
``data/`` and ``runtime/``. Token login is off; password login only; bound to 127.0.0.1.
"""

from __future__ import annotations

import json
from pathlib import Path

from provisioner.apps import App, AppSettings, Installation
from provisioner.context import Context
from provisioner.errors import SlotError
from provisioner.runner import run
from provisioner.supervisor import Program

# Hash on the shared install's own (root-owned) Python, the password read from stdin (never
# argv). Isolated (-I): neither the working directory nor PYTHON* variables nor a user site
# reach sys.path, so a planted jupyter_server/ or sitecustomize.py in the operator's cwd (a
# tenant's home, /tmp) is never imported by this root process; and the runner starts it in /.
_HASH = "import sys; from jupyter_server.auth import passwd; print(passwd(sys.stdin.read()))"


def hash_argv(venv: Path) -> list[str]:
    """The root command that hashes a password read from stdin (pure; isolated Python)."""
    return [str(venv / "bin" / "python"), "-I", "-c", _HASH]


def server_config(inst: Installation, hashed_password: str) -> dict[str, object]:
    """jupyter_server settings for INST (pure; tested as data)."""
    return {
        "ServerApp": {
            "ip": "127.0.0.1",
            "port": inst.port,
            "port_retries": 0,
            "open_browser": False,
            "root_dir": str(inst.app_dir / "notebooks"),
            "allow_remote_access": False,
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
        return f"http://127.0.0.1:{inst.port}/lab"


APP = JupyterLab()
