"""Shared fixtures for the apps system tests: a private state dir, slots root and supervisord.

Every slot made here is named ``ta<random>``; app ports come from a slice of 20000-20999 given
by the caller. Teardown removes every slot (which uninstalls its apps), stops supervisord and
deletes the directories, even when the test failed.
"""

from __future__ import annotations

import http.cookiejar
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from provisioner import plan as plan_mod
from provisioner.config import load_config_text
from provisioner.context import Context
from provisioner.host import HostRequest, host_init, proc_hidepid
from provisioner.slots import create_slot, remove_slot
from provisioner.supervisor.supervisord import Supervisord

REPO = Path(__file__).resolve().parents[2]
SLOTCTL = REPO / ".venv" / "bin" / "slotctl"


@dataclass
class AppLab:
    """A private slotwarden installation for one test module."""

    root: Path
    port_min: int
    port_max: int
    extra_toml: str = ""
    slots: list[str] = field(default_factory=list)

    @property
    def config_path(self) -> Path:
        return self.root / "slotwarden.toml"

    def toml(self, **apps_overrides: str) -> str:
        keys = {"port_min": str(self.port_min), "port_max": str(self.port_max), **apps_overrides}
        lines = [f'state_dir = "{self.root / "state"}"', "[apps]", *(f"{k} = {v}" for k, v in keys.items())]
        return "\n".join(lines) + "\n" + self.extra_toml

    def context(self, **apps_overrides: str) -> Context:
        """A Context on this lab's state; overrides change [apps] keys for this context only."""
        return Context(load_config_text(self.toml(**apps_overrides), self.config_path))

    def new_slot(self, ctx: Context | None = None, apps: tuple[str, ...] = ()) -> str:
        name = "ta" + secrets.token_hex(4)
        self.slots.append(name)
        create_slot(ctx or self.context(), name, f"{name}@example.com", "DE", apps=apps)
        return name

    def slotctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "SLOTWARDEN_CONFIG": str(self.config_path)}
        return subprocess.run([str(SLOTCTL), *args], capture_output=True, text=True, env=env, timeout=600)

    @property
    def supervisord(self) -> Supervisord:
        return Supervisord(self.root / "state")


def make_lab(port_min: int, port_max: int, extra_toml: str = "") -> Iterator[AppLab]:
    """Set up the lab (host init on private dirs) and tear it down completely."""
    root = Path(tempfile.mkdtemp(prefix="ta-", dir="/tmp"))
    os.chmod(root, 0o711)
    lab = AppLab(root, port_min, port_max, extra_toml)
    lab.config_path.write_text(lab.toml())
    ctx = lab.context()
    hide, _gid = proc_hidepid()
    # Leave /proc as the machine has it: other helpers' tests share it.
    req = HostRequest(slots_root=root / "homes", quota_backend="none", loopback_image=None,
                      loopback_size=None, hidepid=hide in {"invisible", "2"}, persist=False)
    try:
        host_init(ctx, req)
        yield lab
    finally:
        plan_mod.fail_at_step = None
        errors = []
        for name in lab.slots:
            try:
                c = lab.context()
                if c.store.get_slot(name) is not None:
                    remove_slot(c, name)
            except Exception as exc:
                errors.append(f"{name}: {exc}")
        lab.supervisord.shutdown()
        shutil.rmtree(root, ignore_errors=True)
        assert not errors, errors


# --- HTTP probes -----------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def http(url: str, *, data: dict[str, str] | None = None, headers: dict[str, str] | None = None,
         jar: http.cookiejar.CookieJar | None = None) -> tuple[int, dict[str, str], str]:
    """(status, headers, body) of one request; redirects are not followed."""
    handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
    if jar is not None:
        handlers.append(urllib.request.HTTPCookieProcessor(jar))
    opener = urllib.request.build_opener(*handlers)
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with opener.open(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode(errors="replace")


def wait_for(predicate: object, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def all_cmdlines() -> list[bytes]:
    """The command lines of every process (root sees them all, hidepid or not)."""
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                out.append(Path(f"/proc/{entry.name}/cmdline").read_bytes())
            except OSError:
                continue
    return out


def as_user(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True, timeout=60)
