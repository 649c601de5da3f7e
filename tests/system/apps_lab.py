"""Shared fixtures for the apps system tests: a private state dir, slots root and supervisord.

Every slot made here is named ``ta<random>``; app ports come from a slice of 20000-20999 given
by the caller. Teardown removes every slot (which uninstalls its apps), stops supervisord and
deletes the directories, even when the test failed.
"""

from __future__ import annotations

import http.client
import http.cookiejar
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from provisioner import steps as plan_mod
from provisioner.config import load_config_text
from provisioner.context import Context
from provisioner.host import HostRequest, host_init, proc_hidepid
from provisioner.operations import create_slot, remove_slot
from provisioner.supervisor.supervisord import Supervisord
from tests.system.lab import stop_process

REPO = Path(__file__).resolve().parents[2]
SLOTCTL = REPO / ".venv" / "bin" / "slotctl"


@dataclass
class AppLab:
    """A private slotwarden installation for one test module."""

    root: Path
    port_min: int
    port_max: int
    extra_toml: str = ""
    mariadb: MariaDB | None = None
    slots: list[str] = field(default_factory=list)

    @property
    def config_path(self) -> Path:
        return self.root / "slotwarden.toml"

    def toml(self, **apps_overrides: str) -> str:
        keys = {"port_min": str(self.port_min), "port_max": str(self.port_max),
                "socket_dir": f'"{self.root / "appsock"}"', **apps_overrides}
        lines = [f'state_dir = "{self.root / "state"}"', "[apps]", *(f"{k} = {v}" for k, v in keys.items())]
        lines.append("")
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


@dataclass
class MariaDB:
    """A private MariaDB server for the tests: own datadir and socket, no TCP, user mysql."""

    root: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.root / "mysqld.sock"

    def start(self) -> None:
        data = self.root / "data"
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)  # slot users reach the socket, as with /run/mysqld
        shutil.chown(self.root, "mysql", "mysql")
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=mysql",
                        "--auth-root-authentication-method=socket", "--skip-test-db"],
                       check=True, capture_output=True, timeout=300)
        self.proc = subprocess.Popen(
            ["/usr/sbin/mariadbd", "--no-defaults", f"--datadir={data}", f"--socket={self.socket}",
             "--skip-networking", "--user=mysql", f"--pid-file={self.root / 'mysqld.pid'}",
             f"--log-error={self.root / 'error.log'}", "--innodb-buffer-pool-size=32M"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.socket.exists() or self.proc.poll() is not None, 120,  # type: ignore[union-attr]
                 "mariadbd to listen")
        if self.proc.poll() is not None:
            raise RuntimeError(f"mariadbd exited: {(self.root / 'error.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc, 60)

    def query(self, sql: str) -> str:
        return subprocess.run(["mariadb", "--no-defaults", f"--socket={self.socket}", "-u", "root", "--batch",
                               "--skip-column-names"], input=sql, capture_output=True, text=True, check=True,
                              timeout=60).stdout


def make_lab(port_min: int, port_max: int, extra_toml: str = "", mariadb: bool = False) -> Iterator[AppLab]:
    """Set up the lab (host init on private dirs) and tear it down completely."""
    root = Path(tempfile.mkdtemp(prefix="ta-", dir="/tmp"))
    os.chmod(root, 0o711)
    db = MariaDB(root / "mariadb") if mariadb else None
    if db is not None:
        extra_toml += f'[apps.wordpress]\nmysql_socket = "{db.socket}"\n'
    lab = AppLab(root, port_min, port_max, extra_toml, mariadb=db)
    lab.config_path.write_text(lab.toml())
    ctx = lab.context()
    hide, _gid = proc_hidepid()
    # Leave /proc as the machine has it: other helpers' tests share it.
    req = HostRequest(slots_root=root / "homes", quota_backend="none", loopback_image=None,
                      loopback_size=None, hidepid=hide in {"invisible", "2"}, persist=False)
    try:
        if db is not None:
            db.start()
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
        if db is not None:
            db.stop()
        shutil.rmtree(root, ignore_errors=True)
        assert not errors, errors


# --- HTTP probes -----------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket (an app's private listener), as the front door speaks it."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class _Received:
    def __init__(self, msg: http.client.HTTPMessage) -> None:
        self.msg = msg

    def info(self) -> http.client.HTTPMessage:
        return self.msg


def _http_unix(uds: str, url: str, body: bytes | None, headers: dict[str, str],
               jar: http.cookiejar.CookieJar | None) -> tuple[int, dict[str, str], str]:
    """One request to URL (its host sent as Host, as the front door does) over the socket UDS."""
    req = urllib.request.Request(url, data=body, headers=headers)
    if jar is not None:
        jar.add_cookie_header(req)
    parts = urllib.parse.urlsplit(url)
    sent = {**dict(req.header_items()), "Host": parts.netloc}
    if body is not None:
        sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
    conn = _UnixConnection(uds, 30)
    try:
        conn.request("POST" if body is not None else "GET",
                     parts.path + (f"?{parts.query}" if parts.query else ""), body, sent)
        r = conn.getresponse()
        text = r.read().decode(errors="replace")
        if jar is not None:
            jar.extract_cookies(_Received(r.msg), req)  # type: ignore[arg-type]
        return r.status, dict(r.headers), text
    finally:
        conn.close()


def http(url: str, *, data: dict[str, str] | None = None, headers: dict[str, str] | None = None,
         jar: http.cookiejar.CookieJar | None = None, uds: str | None = None) -> tuple[int, dict[str, str], str]:
    """(status, headers, body) of one request; redirects are not followed. UDS: over that socket."""
    if uds is not None:
        return _http_unix(uds, url, urllib.parse.urlencode(data).encode() if data is not None else None,
                          headers or {}, jar)
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
        try:
            if predicate():  # type: ignore[operator]
                return
        except (OSError, StopIteration):  # not listening yet, no cookie yet: try again
            pass
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
