"""A Hub lab: a slot host with its own guard service, PAM service, Hub user, port and TLS files.

Everything is per run: the PAM service is ``slotwarden-hub-test-<rand>`` (written by
``slotctl hub pam-service``, the guard put into it by the same command), the Hub's user is the
host's prefix + ``hub`` (made by host init), the port is a free loopback port. ``close()``
stops both services and removes the PAM file; the slot host's teardown removes the rest.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.system.conftest import SLOTCTL, SlotHost, make_slot_host, teardown_slot_host, world_traversable_tmpdir
from tests.system.lab import stop_process

PAIR_DENY = 3
# The data policy's per-run places (inbox, support grants), for make_hub_lab(extra=POLICY).
POLICY = ('[inbox]\ndir = "{base}/inbox"\nlogin_script = "{base}/profile.d/slotwarden-inbox.sh"\n'
          '[support]\nmax_duration = "1d"\ngrants_dir = "{base}/grants"\n')
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class HubLab:
    """A running Hub over a slot host; ``client()`` gives an HTTPS client that trusts its cert."""

    host: SlotHost
    port: int
    pam_service: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    passwords: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def cert(self) -> Path:
        return self.host.base / "state" / "hub" / "hub.crt"

    @property
    def bridge_socket(self) -> Path:
        return self.host.base / "hub-bridge.sock"

    @property
    def hub_user(self) -> str:
        return f"{self.host.prefix}hub"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=ssl.create_default_context(cafile=str(self.cert)), timeout=60,
                            follow_redirects=False)

    def slotctl_json(self, *args: str) -> Any:
        r = self.host.slotctl(*args, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def create_slot(self) -> str:
        name = self.host.name()
        out = self.slotctl_json("slot", "create", name, "--email", f"{name}@example.com", "--country", "DE",
                                "--quota", "64M")
        self.passwords[name] = out["password"]
        return name

    def login(self, c: httpx.Client, username: str, password: str | None = None) -> httpx.Response:
        """GET the form, POST it with its CSRF token; returns the POST's response."""
        page = c.get("/login")
        token = CSRF.search(page.text)
        assert token, page.text
        return c.post("/login", data={"csrf": token.group(1), "username": username,
                                      "password": self.passwords[username] if password is None else password})

    @contextmanager
    def logged_in(self, username: str) -> Iterator[httpx.Client]:
        with self.client() as c:
            r = self.login(c, username)
            assert r.status_code == 303 and r.headers["location"] == "/overview", (r.status_code, r.text[:500])
            yield c

    def start(self) -> None:
        self._start_guard()
        out = self.slotctl_json("hub", "pam-service")
        assert out["service"] == self.pam_service
        self.start_hub()

    def wait_answering(self, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            if proc is not None and proc.poll() is not None:
                break
            try:
                with self.client() as c:
                    if c.get("/login").status_code == 200:
                        return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"{what} did not answer:\n" + (self.host.base / "hub.log").read_text())

    def start_hub(self) -> None:
        log = open(self.host.base / "hub.log", "ab")
        self.procs.append(subprocess.Popen([SLOTCTL, "hub", "serve"], env=self.host.env(), stdout=log, stderr=log,
                                           cwd="/"))
        self.wait_answering("hub serve", self.procs[-1])

    def _start_guard(self) -> None:
        from pam_hooks.client import GuardUnavailable, request

        log = open(self.host.base / "guard.log", "ab")
        self.procs.append(subprocess.Popen([sys.executable, "-m", "pam_hooks", "serve", "--config",
                                            str(self.host.config_path)], env=self.host.env(), stdout=log,
                                           stderr=log, cwd=str(Path(__file__).resolve().parents[2])))
        for _ in range(400):
            try:
                if request(self.host.base / "guard.sock", 'JSON\t{"op": "ping"}', timeout=1):
                    return
            except (GuardUnavailable, OSError):
                time.sleep(0.05)
        raise RuntimeError("guard did not start:\n" + (self.host.base / "guard.log").read_text())

    def children(self) -> dict[str, int]:
        """The children of ``hub serve``: the web process and nginx's master, by name."""
        out = subprocess.run(["pgrep", "-P", str(self.procs[-1].pid)], capture_output=True, text=True).stdout.split()
        kids = {}
        for pid in out:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            kids["nginx" if cmd.endswith("nginx") or cmd.startswith("nginx") else "web"] = int(pid)
        return kids

    def web_pid(self) -> int:
        """The Hub's web process (the child of ``hub serve`` that is not nginx)."""
        return self.children()["web"]

    def close(self) -> None:
        for p in reversed(self.procs):
            stop_process(p)
        subprocess.run([SLOTCTL, "guard", "uninstall", "--service", self.pam_service], env=self.host.env(),
                       capture_output=True, check=False)
        Path("/etc/pam.d", self.pam_service).unlink(missing_ok=True)
        subprocess.run(["nft", "delete", "table", "inet", f"sw_apps_{self.host.prefix}"], capture_output=True,
                       check=False)


def make_hub_lab(tag: str = "hub", history_every: str = "3s", size: str = "1G", extra: str = "") -> HubLab:
    """A started Hub lab; EXTRA is more config, where ``{base}`` stands for the lab's directory."""
    prefix = f"th{secrets.token_hex(2)}"
    base = world_traversable_tmpdir(tag)
    port = free_port()
    service = f"slotwarden-hub-test-{secrets.token_hex(4)}"
    hub = (f'[hub]\nuser = "{prefix}hub"\nlisten = "127.0.0.1:{port}"\nbridge_socket = "{base}/hub-bridge.sock"\n'
           f'pam_service = "{service}"\nfail_floor_ms = 300\nhistory_every = "{history_every}"\n'
           f'web_socket = "{base}/hub-web/hub.sock"\nfence_table = "sw_apps_{prefix}"\nresponses_every = "1s"\n'
           f'[guard]\npair_deny = {PAIR_DENY}\nip_deny = 1000\nuser_deny = 1000\nsocket = "{base}/guard.sock"\n')
    host = make_slot_host(base, prefix, size=size, extra_config=hub + extra.replace("{base}", str(base)))
    lab = HubLab(host, port, service)
    try:
        lab.start()
    except BaseException:
        lab.close()
        teardown_slot_host(host)
        raise
    return lab


def close_hub_lab(lab: HubLab) -> None:
    try:
        lab.close()
        for line in Path("/proc/self/mountinfo").read_text().splitlines():  # support grants' views
            mnt = line.split()[4]
            if mnt.startswith(f"{lab.host.base}/"):
                subprocess.run(["umount", "-l", mnt], check=False)
    finally:
        teardown_slot_host(lab.host)
        os.environ.pop("SLOTWARDEN_CONFIG", None)
